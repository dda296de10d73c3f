"""Matrix products cut into fixed tiles, each one single-threaded BLAS call, run in parallel.

Why tiles. How OpenBLAS splits a product between its own threads depends on its kernel
(chosen for the CPU or forced by ``OPENBLAS_CORETYPE``) and on the thread count, and
so, for some kernels, do the last bits of the result. Here the split is ours: the
output is cut into tiles by a rule that looks only at the shapes (`tile_count`), each
tile is one call of NumPy's own OpenBLAS with its thread count pinned to one, and
Numba's ``prange`` hands the tiles to our threads. A tile's result does not depend on
which thread computes it or on how many there are, so neither does the product: the
bits are the same for any thread count, by construction. No tile sums over another
tile's terms (tiles cut the output, never the inner dimension), so nothing needs a
reduction across threads.

The BLAS function is NumPy's ``cblas_sgemm`` / ``cblas_dgemm``, found in the OpenBLAS
library NumPy loaded (`reptile_np.threads.openblas_function`) and called from compiled
code through ctypes: no SciPy, no extra package. When NumPy's BLAS is not an OpenBLAS
we can reach, `matmul` runs the same tiles one after the other with ``np.matmul``:
the same partition, on one thread.

Shapes and dtypes are checked first, in Python (`checks.matmul`), before any compiled
code runs: a BLAS call given a leading dimension that does not fit its array reads or
writes outside it.
"""
import ctypes

import numpy as np
from numba import njit, prange

from .. import threads
from . import checks

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112

TILE_FLOPS = 1 << 20
"""Least work (multiply-adds) per tile: a 1 M-multiply-add tile takes ~5-10 µs, several
times the ~1.5 µs a parallel region costs to start and join."""

MAX_TILES = 8
"""Most tiles per product: enough to keep 2-4 threads busy with uneven tile ends."""

TILE_ALIGN = 16
"""Tiles start at multiples of this many rows or columns (a BLAS micro-kernel's width)."""


def _cblas(name, real):
    """NumPy's OpenBLAS ``cblas_<name>`` with its ctypes signature, or None."""
    function = threads.openblas_function(f"cblas_{name}")
    if function is None:
        return None
    blas_int = threads.openblas_integer()
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, blas_int, blas_int, blas_int,
                         real, ctypes.c_void_p, blas_int, ctypes.c_void_p, blas_int,
                         real, ctypes.c_void_p, blas_int]
    function.restype = None
    return function


_GEMM = {np.dtype(np.float32): _cblas("sgemm", ctypes.c_float),
         np.dtype(np.float64): _cblas("dgemm", ctypes.c_double)}


def available():
    """True when the products run on our threads (NumPy's BLAS is a reachable OpenBLAS)."""
    return all(function is not None for function in _GEMM.values())


def tile_count(rows, cols, inner):
    """How many tiles an (rows x inner) @ (inner x cols) product is cut into: a function
    of the shapes alone, so that the partition never depends on the thread count."""
    by_work = rows * cols * inner // TILE_FLOPS
    by_size = -(-max(rows, cols) // TILE_ALIGN)
    return int(max(1, min(MAX_TILES, by_work, by_size)))


def _edges(size, tiles):
    """Tile edges along an axis of ``size``: at most ``tiles`` pieces, each starting at a
    multiple of `TILE_ALIGN` (the last one takes the rest)."""
    per_tile = -(-size // tiles)
    step = -(-per_tile // TILE_ALIGN) * TILE_ALIGN
    return np.asarray(list(range(0, size, step)) + [size], dtype=np.int64)


def _operand(a):
    """(C-contiguous buffer, transposed?, leading dimension) of a matrix or a stack of
    matrices, for BLAS: a itself when C-contiguous, else the buffer of its transpose
    when that is C-contiguous (a transposed view costs no copy), else a copy."""
    if not a.flags.c_contiguous:
        swapped = np.swapaxes(a, -1, -2)
        if swapped.flags.c_contiguous:
            return swapped, True, a.shape[-2]
        a = np.ascontiguousarray(a)
    return a, False, a.shape[-1]


def matmul(a, b):
    """``a @ b`` as `np.matmul` for a matrix or a stack of them ((M, K) or (N, M, K)) times
    a matrix or a stack ((K, P) or (N, K, P)), float32 or float64, in tiles (see the module
    docstring): each product ``a_n @ b_n`` is cut along its longer output axis into
    `tile_count` tiles.

    Raises:
        ValueError: the arrays are not float matrices or stacks that multiply.
    """
    checks.matmul(a, b)
    batch = a.shape[0] if a.ndim == 3 else (b.shape[0] if b.ndim == 3 else 0)
    rows, inner, cols = a.shape[-2], a.shape[-1], b.shape[-1]
    allocate = np.empty if inner else np.zeros    # BLAS writes every element, given terms
    out = allocate((max(batch, 1), rows, cols), dtype=a.dtype)
    if out.size and inner:
        tiles = tile_count(rows, cols, inner)
        row_edges = _edges(rows, tiles if rows >= cols else 1)
        col_edges = _edges(cols, 1 if rows >= cols else tiles)
        gemm = _GEMM[a.dtype]
        if gemm is None:
            _tiles_in_numpy(a, b, out, row_edges, col_edges)
        else:
            a_buffer, a_trans, lda = _operand(a)
            b_buffer, b_trans, ldb = _operand(b)
            _gemm_tiles(gemm, a_buffer, rows * inner if a.ndim == 3 else 0, a_trans, lda,
                        b_buffer, inner * cols if b.ndim == 3 else 0, b_trans, ldb, out, inner,
                        row_edges, col_edges)
    return out if batch else out[0]


def _tiles_in_numpy(a, b, out, row_edges, col_edges):
    """The tiles of `matmul`, one after the other, when there is no BLAS to call directly."""
    a3 = a if a.ndim == 3 else a[None]
    b3 = b if b.ndim == 3 else b[None]
    for n in range(out.shape[0]):
        a_n, b_n = a3[min(n, len(a3) - 1)], b3[min(n, len(b3) - 1)]
        for r0, r1 in zip(row_edges[:-1], row_edges[1:]):
            for c0, c1 in zip(col_edges[:-1], col_edges[1:]):
                np.matmul(a_n[r0:r1], b_n[:, c0:c1], out=out[n, r0:r1, c0:c1])


@njit(parallel=True, nogil=True, cache=True)
def _gemm_tiles(gemm, a, a_stride, a_trans, lda, b, b_stride, b_trans, ldb, out, inner,
                row_edges, col_edges):
    """out[n] = op(a_n) @ op(b_n) for every n, one BLAS call per (n, row tile, column tile),
    all of them in parallel.

    ``a`` is a C-contiguous buffer holding op(a_n) (its transpose when ``a_trans``) at
    ``n * a_stride`` elements (a_stride 0: one matrix shared by every n), likewise b; out
    is C-contiguous (N, rows, cols). Row ``r`` of op(a_n) starts ``r * lda`` elements in,
    or ``r`` when op(a_n) is stored transposed; column ``c`` of op(b_n) starts ``c`` or
    ``c * ldb`` elements in.
    """
    batch, _, ldc = out.shape
    size = out.itemsize
    row_tiles, col_tiles = row_edges.size - 1, col_edges.size - 1
    per_example = row_tiles * col_tiles
    one, zero = out.dtype.type(1), out.dtype.type(0)
    for tile in prange(batch * per_example):
        n, within = tile // per_example, tile % per_example
        r, c = within // col_tiles, within % col_tiles
        row, rows = row_edges[r], row_edges[r + 1] - row_edges[r]
        col, cols = col_edges[c], col_edges[c + 1] - col_edges[c]
        a_offset = n * a_stride + (row if a_trans else row * lda)
        b_offset = n * b_stride + (col * ldb if b_trans else col)
        gemm(_ROW_MAJOR, _TRANS if a_trans else _NO_TRANS, _TRANS if b_trans else _NO_TRANS,
             rows, cols, inner, one, a.ctypes.data + a_offset * size, lda,
             b.ctypes.data + b_offset * size, ldb, zero,
             out.ctypes.data + (n * out.shape[1] * ldc + row * ldc + col) * size, ldc)
