"""`reptile_np.kernels.blas`: products cut into shape-fixed tiles, one BLAS call each."""
import numba
import numpy as np
import pytest

from reptile_np.kernels import blas

DTYPES = [np.float32, np.float64]
TOLERANCE = {np.float32: 1e-5, np.float64: 1e-12}
SHAPES = [  # (a's shape, b's shape): matrices, stacks, a shared matrix, odd and tiny sizes
    ((490, 576), (576, 64)), ((64, 490), (490, 577)), ((3, 7), (7, 5)), ((1, 1), (1, 1)),
    ((5, 33, 27), (5, 27, 1763)), ((33, 27), (4, 27, 1763)), ((4, 300, 70), (70, 129)),
    ((0, 3), (3, 4)), ((4, 0), (0, 3)), ((2, 3, 5), (2, 5, 0)),
]


def _operands(shapes, dtype, layout, rng):
    """a and b of the given shapes as C-contiguous arrays, transposed views of C-contiguous
    arrays, or strided views (every second column of a wider array)."""
    arrays = []
    for shape in shapes:
        if layout == "transposed":
            stored = rng.standard_normal(shape[:-2] + shape[::-1][:2]).astype(dtype)
            arrays.append(np.swapaxes(stored, -1, -2))
        elif layout == "strided":
            wide = rng.standard_normal(shape[:-1] + (2 * shape[-1],)).astype(dtype)
            arrays.append(wide[..., ::2])
        else:
            arrays.append(rng.standard_normal(shape).astype(dtype))
    return arrays


def _relative_error(actual, expected):
    scale = max(float(np.abs(expected).max(initial=0)), 1e-30)
    return float(np.abs(actual - expected).max(initial=0)) / scale


@pytest.mark.parametrize("layout", ["contiguous", "transposed", "strided"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("shapes", SHAPES, ids=str)
def test_matmul_equals_numpy_and_gives_the_same_bits_for_any_thread_count(shapes, dtype, layout):
    a, b = _operands(shapes, dtype, layout, np.random.default_rng(0))
    expected = np.matmul(a, b)
    previous = numba.get_num_threads()
    results = []
    try:
        for count in range(1, numba.config.NUMBA_NUM_THREADS + 1):
            numba.set_num_threads(count)
            results.append(blas.matmul(a, b))
    finally:
        numba.set_num_threads(previous)
    assert results[0].shape == expected.shape and results[0].dtype == expected.dtype
    assert _relative_error(results[0], expected) <= TOLERANCE[dtype]
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_tiles_without_direct_blas_equal_the_tiles_with_it(dtype):
    """The fallback for a NumPy whose BLAS we cannot call runs the same tiles through
    np.matmul: to rounding, the same product."""
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 490, 100)).astype(dtype), rng.standard_normal((100, 70)).astype(dtype)
    rows, cols = a.shape[-2], b.shape[-1]
    out = np.empty((2, rows, cols), dtype=dtype)
    tiles = blas.tile_count(rows, cols, a.shape[-1])
    assert tiles > 1
    blas._tiles_in_numpy(a, b, out, blas._edges(rows, tiles), blas._edges(cols, 1))
    assert _relative_error(out, blas.matmul(a, b)) <= TOLERANCE[dtype]


def test_tiles_depend_on_the_shapes_alone_and_start_at_aligned_rows():
    assert blas.tile_count(10, 5, 256) == 1              # too little work to share
    assert blas.tile_count(490, 64, 576) == min(blas.MAX_TILES, 490 * 64 * 576 // blas.TILE_FLOPS)
    edges = blas._edges(490, 4)
    assert edges[0] == 0 and edges[-1] == 490 and len(edges) == 5
    assert all(edge % blas.TILE_ALIGN == 0 for edge in edges[:-1])
    assert list(blas._edges(7, 3)) == [0, 7]               # smaller than one aligned tile


@pytest.mark.parametrize("a, b, message", [
    (np.ones((2, 3), np.float32), np.ones((4, 2), np.float32), "a's columns \\(3\\) must equal b's rows \\(4\\)"),
    (np.ones((2, 3), np.float32), np.ones((3, 2), np.float64), "b must have the dtype of a \\(float32\\)"),
    (np.ones((2, 3), np.int64), np.ones((3, 2), np.int64), "a must be float32 or float64"),
    (np.ones(3, np.float32), np.ones((3, 2), np.float32), "a must be a 2-D or 3-D array"),
    (np.ones((2, 2, 3), np.float32), np.ones((3, 3, 2), np.float32), "stacks of as many matrices, got 2 and 3"),
])
def test_matmul_refuses_what_does_not_multiply(a, b, message):
    with pytest.raises(ValueError, match=message):
        blas.matmul(a, b)


def test_openblas_is_reachable_here():
    """The project's wheels of NumPy ship OpenBLAS; if this fails, the products run serially
    (correct, but the parallel path above is not what was tested)."""
    assert blas.available()
