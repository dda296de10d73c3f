"""Numba twins of the kernels in `reference.py`: same signatures, same results.

A convolution is lowered to matrix products. A Numba kernel gathers the input
windows into a patch matrix ("im2col"), BLAS multiplies it with the weights, and a
Numba kernel adds input gradients back onto the pixels they came from ("col2im").
The patch matrix has one of two layouts, whichever makes the gather's contiguous
runs longer:

* *columns*, (N, C*KH*KW, OH*OW), one matrix per example: runs along an output
  row (OW values), for few channels on big images (first layers, Mini-ImageNet's
  stride-1 layers); the products are per example and land in NCHW directly;
* *rows*, (N*OH*OW, KH*KW*C): runs along the channels (C values), for many
  channels on small images (Omniglot's later layers); one product for the batch.
  x is first transposed to channels-last, so each run is a contiguous copy (and
  col2im adds into channels-last, transposed back at the end).

`conv2d_forward_saving` also returns the patch matrix and the weight matrix, and
`conv2d_backward` reuses them, so a training step gathers each input and
rearranges each weight once (the NumPy twins save x itself). Batch normalisation, ReLU, max-pooling and
the Adam update are one-pass loops. Public functions are Python glue: they
check their arguments (`checks`, shared with the NumPy twins: the cores do no bounds
checks, so arguments that do not fit would read or write outside an array),
allocate, call the jitted cores below and BLAS (``@``), and reshape.

Threads. Every core that loops over examples, channels or elements runs its loop
with Numba's ``prange``, and every matrix product is cut into tiles (`blas.matmul`),
each tile one single-threaded call of NumPy's OpenBLAS from Numba's threads. Where the
work is cut depends only on the arrays' shapes, and no piece sums over another piece's
terms (reductions, such as BatchNorm's channel sums or the weight gradient's sum over
examples, stay inside one piece, in a fixed order), so the results are the same bits
for any thread count (`kernels.set_threads`; ``tests/test_threads.py`` checks whole
meta-iterations on 1, 2 and 3 threads). Once `kernels.set_threads` has been called (the
command line always calls it), OpenBLAS runs one thread per call: its own threads would
split a product's sums in a way that depends on its kernel and thread count, and would
fight Numba's for the cores.

Environment, read once at import: ``REPTILE_NP_FASTMATH=1`` compiles the cores
with ``fastmath=True`` (faster, no longer equal to the reference to the last bit;
such builds are not cached, since Numba's cache index ignores compiler flags and
would serve one kind for the other); ``REPTILE_NP_NUMBA_CACHE=0`` turns Numba's
on-disk cache off. The cache lives next to this file (or in ``NUMBA_CACHE_DIR``);
clear it with ``find reptile_np -name '*.nb[ic]' -delete``.
"""
import os

import numpy as np
from numba import njit, prange

from . import blas, checks
from .checks import output_size

FASTMATH = os.environ.get("REPTILE_NP_FASTMATH", "0").strip() == "1"
CACHE = os.environ.get("REPTILE_NP_NUMBA_CACHE", "1").strip() != "0" and not FASTMATH
_JIT_OPTIONS = {"cache": CACHE, "fastmath": FASTMATH, "error_model": "numpy"}
_PARALLEL = dict(_JIT_OPTIONS, parallel=True, nogil=True)


@njit(**_PARALLEL)
def _swap_leading_axes(a):
    """(A, B, P) -> contiguous (B, A, P)."""
    size_a, size_b, _ = a.shape
    out = np.empty((size_b, size_a, a.shape[2]), dtype=a.dtype)
    for ib in prange(size_b):
        for ia in range(size_a):
            out[ib, ia, :] = a[ia, ib, :]
    return out


@njit(**_PARALLEL)
def _transpose_last_two(a):
    """(N, A, B) -> contiguous (N, B, A). The inner loop runs over the shorter axis
    (measured: twice as fast as either fixed order on the shapes here)."""
    batch, size_a, size_b = a.shape
    out = np.empty((batch, size_b, size_a), dtype=a.dtype)
    for n in prange(batch):
        if size_a <= size_b:
            for ib in range(size_b):
                for ia in range(size_a):
                    out[n, ib, ia] = a[n, ia, ib]
        else:
            for ia in range(size_a):
                for ib in range(size_b):
                    out[n, ib, ia] = a[n, ia, ib]
    return out


@njit(**_PARALLEL)
def _im2col_columns(x, kh, kw, stride, pad_top, pad_left, out_h, out_w):
    """Columns (N, C*KH*KW, OH*OW): ``cols[n, (c, i, j), (p, q)] = xpad[n, c, p*s + i, q*s + j]``.

    Padding is never materialised: cells outside x are written as zeros.
    """
    batch, channels, height, width = x.shape
    cols = np.empty((batch, channels, kh, kw, out_h, out_w), dtype=x.dtype)
    for n in prange(batch):
        for c in range(channels):
            for i in range(kh):
                for j in range(kw):
                    for p in range(out_h):
                        ih = p * stride + i - pad_top
                        for q in range(out_w):
                            iw = q * stride + j - pad_left
                            inside = 0 <= ih < height and 0 <= iw < width
                            cols[n, c, i, j, p, q] = x[n, c, ih, iw] if inside else 0
    return cols.reshape(batch, channels * kh * kw, out_h * out_w)


@njit(**_PARALLEL)
def _col2im_columns(columns, height, width, kh, kw, stride, pad_top, pad_left, out_h, out_w):
    """Adjoint of `_im2col_columns`: every entry is added onto the pixel it was read from."""
    batch, channels = columns.shape[0], columns.shape[1] // (kh * kw)
    cols = columns.reshape(batch, channels, kh, kw, out_h, out_w)
    dx = np.zeros((batch, channels, height, width), dtype=cols.dtype)
    for n in prange(batch):
        for c in range(channels):
            for i in range(kh):
                for j in range(kw):
                    for p in range(out_h):
                        ih = p * stride + i - pad_top
                        if 0 <= ih < height:
                            for q in range(out_w):
                                iw = q * stride + j - pad_left
                                if 0 <= iw < width:
                                    dx[n, c, ih, iw] += cols[n, c, i, j, p, q]
    return dx


@njit(**_PARALLEL)
def _im2col_rows(x, kh, kw, stride, pad_top, pad_left, out_h, out_w):
    """Rows (N*OH*OW, KH*KW*C) from channels-last x (N, H, W, C):
    ``rows[(n, p, q), (i, j, c)] = xpad[n, p*s + i, q*s + j, c]``, each tap a copy of C
    contiguous values."""
    batch, height, width, channels = x.shape
    rows = np.empty((batch, out_h, out_w, kh, kw, channels), dtype=x.dtype)
    for n in prange(batch):
        for p in range(out_h):
            for q in range(out_w):
                for i in range(kh):
                    ih = p * stride + i - pad_top
                    for j in range(kw):
                        iw = q * stride + j - pad_left
                        inside = 0 <= ih < height and 0 <= iw < width
                        for c in range(channels):
                            rows[n, p, q, i, j, c] = x[n, ih, iw, c] if inside else 0
    return rows.reshape(batch * out_h * out_w, kh * kw * channels)


@njit(**_PARALLEL)
def _col2im_rows(patch_rows, batch, height, width, kh, kw, stride, pad_top, pad_left,
                 out_h, out_w):
    """Adjoint of `_im2col_rows`: every entry is added onto the pixel it was read from,
    into a channels-last (N, H, W, C) result."""
    channels = patch_rows.shape[1] // (kh * kw)
    rows = patch_rows.reshape(batch, out_h, out_w, kh, kw, channels)
    dx = np.zeros((batch, height, width, channels), dtype=rows.dtype)
    for n in prange(batch):
        for p in range(out_h):
            for q in range(out_w):
                for i in range(kh):
                    ih = p * stride + i - pad_top
                    for j in range(kw):
                        iw = q * stride + j - pad_left
                        if 0 <= ih < height and 0 <= iw < width:
                            for c in range(channels):
                                dx[n, ih, iw, c] += rows[n, p, q, i, j, c]
    return dx


def _uses_rows(channels, out_w):
    """Rows layout when a channel run is longer than an output row (see the module docstring)."""
    return channels > out_w


@njit(**_PARALLEL)
def _sum_over_examples(per_example):
    """(N, A, B) -> (A, B), each entry summed over n in order: the order of NumPy's
    ``sum(axis=0)``, whatever the thread count (threads take rows of the result)."""
    batch, size_a, size_b = per_example.shape
    total = np.empty((size_a, size_b), dtype=per_example.dtype)
    for i in prange(size_a):
        for j in range(size_b):
            total[i, j] = per_example[0, i, j]
        for n in range(1, batch):
            for j in range(size_b):
                total[i, j] += per_example[n, i, j]
    return total


def _channels_last(x):
    """(N, C, H, W) -> contiguous (N, H, W, C): the rows layout gathers runs of channels."""
    batch, channels, height, width = x.shape
    return _transpose_last_two(x.reshape(batch, channels, -1)).reshape(batch, height, width, channels)


def _patches(x, rows, geometry):
    """x's patch matrix in the rows or the columns layout (``geometry``: see `_geometry`)."""
    if rows:
        return _im2col_rows(_channels_last(x), *geometry)
    return _im2col_columns(x, *geometry)


def _weight_matrix(w, rows):
    """The weights as the products use them: (K, O) with K in (i, j, c) order for the
    rows layout (a copy), (O, K) with K in (c, i, j) order for the columns layout (a view)."""
    out_ch = w.shape[0]
    if rows:
        return np.ascontiguousarray(w.transpose(2, 3, 1, 0)).reshape(-1, out_ch)
    return w.reshape(out_ch, -1)


def _dy_matrix(dy, rows):
    """dy as the products use it: (O, N*OH*OW) for the rows layout, (N, O, OH*OW) for columns."""
    batch, out_ch = dy.shape[:2]
    if rows:
        return _swap_leading_axes(dy.reshape(batch, out_ch, -1)).reshape(out_ch, -1)
    return dy.reshape(batch, out_ch, -1)


def _input_gradient(dy_matrix, weights, x_shape, geometry, rows):
    """Patch gradients (dy times the weights), added back onto the pixels by col2im."""
    batch, channels, height, width = x_shape
    if rows:
        patch_grads = blas.matmul(dy_matrix.T, weights.T)           # (N*OH*OW, O) x (O, K)
        dx = _col2im_rows(patch_grads, batch, height, width, *geometry)
        return _transpose_last_two(dx.reshape(batch, height * width, channels)).reshape(x_shape)
    return _col2im_columns(blas.matmul(weights.T, dy_matrix), height, width, *geometry)


def _weight_gradient(dy_matrix, patches, w_shape, rows):
    """dy times the patches, summed over every output position, in (O, C, KH, KW) layout."""
    out_ch, channels, kh, kw = w_shape
    if rows:
        dw = blas.matmul(dy_matrix, patches).reshape(out_ch, kh, kw, channels)
        return dw.transpose(0, 3, 1, 2)
    # patches x dy^T, (K, O) per example, is 20% faster than dy x patches^T on
    # Mini-ImageNet's 32-channel layers (BLAS prefers the tall output here).
    per_example = blas.matmul(patches, dy_matrix.transpose(0, 2, 1))
    return _sum_over_examples(per_example).T.reshape(w_shape)


def _geometry(w_shape, stride, pad, out_h, out_w):
    """The arguments the im2col/col2im cores take after the array sizes."""
    return (w_shape[2], w_shape[3], stride, pad[0], pad[2], out_h, out_w)


def _saved_shapes(x_shape, w_shape, out_h, out_w, rows):
    """Shapes of the patch matrix and the weight matrix `conv2d_forward_saving` saves."""
    batch, channels = x_shape[:2]
    out_ch, _, kh, kw = w_shape
    taps = channels * kh * kw
    if rows:
        return (batch * out_h * out_w, taps), (taps, out_ch)
    return (batch, taps, out_h * out_w), (out_ch, taps)


def conv2d_forward_saving(x, w, stride, pad):
    """Twin of `reference.conv2d_forward_saving`: the saved value is x's patch matrix and
    the weight matrix, which `conv2d_backward` reuses.

    Rows layout: (N*OH*OW, K) x (K, O), then a transpose to NCHW. Columns layout:
    one (O, K) x (K, OH*OW) product per example, which lands in NCHW directly.
    """
    checks.conv2d_forward_saving(x, w, stride, pad)
    x = np.ascontiguousarray(x)
    batch, channels, height, width = x.shape
    out_ch, _, kh, kw = w.shape
    out_h = output_size(height, kh, stride, pad[0], pad[1])
    out_w = output_size(width, kw, stride, pad[2], pad[3])
    rows = _uses_rows(channels, out_w)
    patches = _patches(x, rows, _geometry(w.shape, stride, pad, out_h, out_w))
    weights = _weight_matrix(w, rows)
    if rows:
        y = blas.matmul(patches, weights)
        y = _transpose_last_two(y.reshape(batch, out_h * out_w, out_ch))
    else:
        y = blas.matmul(weights, patches)
    return y.reshape(batch, out_ch, out_h, out_w), (patches, weights)


def conv2d_backward(dy, w, saved, x_shape, stride, pad, input_grad=True):
    """Twin of `reference.conv2d_backward`: both gradients from the saved patches and
    weight matrix, with dy rearranged once for the two products."""
    checks.conv2d_backward(dy, w, x_shape, stride, pad)
    rows = _uses_rows(x_shape[1], dy.shape[3])
    checks.conv2d_saved(saved, _saved_shapes(x_shape, w.shape, dy.shape[2], dy.shape[3], rows),
                        dy, x_shape, w)
    patches, weights = saved
    dy = np.ascontiguousarray(dy)
    dy_matrix = _dy_matrix(dy, rows)
    dw = _weight_gradient(dy_matrix, patches, w.shape, rows)
    if not input_grad:
        return None, dw
    geometry = _geometry(w.shape, stride, pad, dy.shape[2], dy.shape[3])
    return _input_gradient(dy_matrix, weights, x_shape, geometry, rows), dw


def conv2d_forward(x, w, stride, pad):
    """Twin of `reference.conv2d_forward`: im2col, then matrix products with the weights."""
    checks.conv2d_forward(x, w, stride, pad)
    return conv2d_forward_saving(x, w, stride, pad)[0]


def conv2d_backward_input(dy, w, x_shape, stride, pad):
    """Twin of `reference.conv2d_backward_input`: dy x weights, then col2im."""
    checks.conv2d_backward_input(dy, w, x_shape, stride, pad)
    dy = np.ascontiguousarray(dy)
    rows = _uses_rows(x_shape[1], dy.shape[3])
    geometry = _geometry(w.shape, stride, pad, dy.shape[2], dy.shape[3])
    return _input_gradient(_dy_matrix(dy, rows), _weight_matrix(w, rows), x_shape, geometry, rows)


def conv2d_backward_weight(dy, x, w_shape, stride, pad):
    """Twin of `reference.conv2d_backward_weight`: im2col of x, then dy x patches."""
    checks.conv2d_backward_weight(dy, x, w_shape, stride, pad)
    dy = np.ascontiguousarray(dy)
    x = np.ascontiguousarray(x)
    rows = _uses_rows(x.shape[1], dy.shape[3])
    patches = _patches(x, rows, _geometry(w_shape, stride, pad, dy.shape[2], dy.shape[3]))
    return np.ascontiguousarray(_weight_gradient(_dy_matrix(dy, rows), patches, w_shape, rows))


@njit(**_JIT_OPTIONS, inline="always")
def _pool_windows(xp, y, argmax, size, stride):
    """Fill y and argmax with the maxima and winning taps of the windows of padded xp.

    Taps are scanned in row-major order from tap 0 and only a strictly larger value
    (or a first NaN, as `np.argmax`) replaces the winner, so ties keep the first tap.
    """
    batch, channels, out_h, out_w = y.shape
    for plane in prange(batch * channels):
        n, c = plane // channels, plane % channels
        for p in range(out_h):
            for q in range(out_w):
                best, best_tap = xp[n, c, p * stride, q * stride], 0
                for i in range(size):
                    for j in range(size):
                        value = xp[n, c, p * stride + i, q * stride + j]
                        if value > best or (value != value and best == best):
                            best, best_tap = value, i * size + j
                y[n, c, p, q] = best
                argmax[n, c, p, q] = best_tap


@njit(**_PARALLEL)
def _maxpool_forward(xp, size, stride, out_h, out_w):
    """Window maxima and winning taps (int8) of the padded input xp.

    The paper's 2x2 windows with stride 2 get their own copy of the loops with the
    sizes as constants: LLVM then vectorises the output row with blends, 10x faster
    than the general loops, whose data-dependent branches are mispredicted half the
    time on random data.
    """
    batch, channels = xp.shape[0], xp.shape[1]
    y = np.empty((batch, channels, out_h, out_w), dtype=xp.dtype)
    argmax = np.empty((batch, channels, out_h, out_w), dtype=np.int8)
    if size == 2 and stride == 2:
        _pool_windows(xp, y, argmax, 2, 2)
    else:
        _pool_windows(xp, y, argmax, size, stride)
    return y, argmax


@njit(**_JIT_OPTIONS, inline="always")
def _scatter_to_winners(dy, argmax, dxp, size, stride):
    """Add each window's gradient onto its winning cell of the padded dxp."""
    batch, channels, out_h, out_w = dy.shape
    for plane in prange(batch * channels):
        n, c = plane // channels, plane % channels
        for p in range(out_h):
            for q in range(out_w):
                row, column = divmod(argmax[n, c, p, q], size)
                dxp[n, c, p * stride + row, q * stride + column] += dy[n, c, p, q]


@njit(**_PARALLEL)
def _maxpool_backward(dy, argmax, padded_h, padded_w, size, stride):
    """Gradient with respect to the padded input; 2x2 windows with stride 2 get
    constant sizes (a shift instead of a division per window), as in the forward,
    and direct writes when they tile the input."""
    batch, channels, out_h, out_w = dy.shape
    if size == 2 and stride == 2 and padded_h == 2 * out_h and padded_w == 2 * out_w:
        # The windows tile the padded input: write every cell once, no zeroing pass.
        dxp = np.empty((batch, channels, padded_h, padded_w), dtype=dy.dtype)
        zero = dy.dtype.type(0)
        for plane in prange(batch * channels):
            n, c = plane // channels, plane % channels
            for p in range(out_h):
                for i in range(2):
                    for q in range(out_w):
                        tap, gradient = argmax[n, c, p, q], dy[n, c, p, q]
                        dxp[n, c, 2 * p + i, 2 * q] = gradient if tap == 2 * i else zero
                        dxp[n, c, 2 * p + i, 2 * q + 1] = gradient if tap == 2 * i + 1 else zero
        return dxp
    dxp = np.zeros((batch, channels, padded_h, padded_w), dtype=dy.dtype)
    if size == 2 and stride == 2:
        _scatter_to_winners(dy, argmax, dxp, 2, 2)
    else:
        _scatter_to_winners(dy, argmax, dxp, size, stride)
    return dxp


def maxpool2d_forward(x, size, stride, pad):
    """Twin of `reference.maxpool2d_forward`: padding is materialised as -inf (the
    windows need no bounds checks), then `_maxpool_forward`."""
    checks.maxpool2d_forward(x, size, stride, pad)
    x = np.ascontiguousarray(x)
    out_h = output_size(x.shape[2], size, stride, pad[0], pad[1])
    out_w = output_size(x.shape[3], size, stride, pad[2], pad[3])
    if any(pad):
        top, bottom, left, right = pad
        xp = np.full(x.shape[:2] + (x.shape[2] + top + bottom, x.shape[3] + left + right),
                     -np.inf, dtype=x.dtype)
        xp[:, :, top:top + x.shape[2], left:left + x.shape[3]] = x
        x = xp
    return _maxpool_forward(x, size, stride, out_h, out_w)


def maxpool2d_backward(dy, argmax, x_shape, size, stride, pad):
    """Twin of `reference.maxpool2d_backward`: scatter onto the padded input, crop.
    The check of argmax's range is what keeps `_scatter_to_winners` inside dxp."""
    checks.maxpool2d_backward(dy, argmax, x_shape, size, stride, pad)
    top, bottom, left, right = pad
    height, width = x_shape[2], x_shape[3]
    dxp = _maxpool_backward(np.ascontiguousarray(dy), np.ascontiguousarray(argmax),
                            height + top + bottom, width + left + right, size, stride)
    if not any(pad):
        return dxp
    return np.ascontiguousarray(dxp[:, :, top:top + height, left:left + width])


_REDUCTION_OPTIONS = dict(_JIT_OPTIONS, fastmath=_JIT_OPTIONS["fastmath"] or {"reassoc"})


@njit(**_REDUCTION_OPTIONS)
def _channel_dot(a, b, channel):
    """sum_{n,k} a[n, channel, k] * b[n, channel, k] of (N, C, K) arrays; b=None sums a.

    The one place where the cores let LLVM reassociate additions ("reassoc"): it
    splits the sum into vector lanes, four times faster than one running sum that
    waits for every add. The order is fixed by the compiled code, so results still do
    not depend on thread counts; they may differ in the last bits from NumPy's sums.
    """
    total = a.dtype.type(0)
    for n in range(a.shape[0]):
        for k in range(a.shape[2]):
            if b is None:
                total += a[n, channel, k]
            else:
                total += a[n, channel, k] * b[n, channel, k]
    return total


@njit(**_REDUCTION_OPTIONS)
def _channel_squared_deviations(x, channel, mean):
    """sum_{n,k} (x[n, channel, k] - mean)^2, in vector lanes as `_channel_dot`; the
    deviations are not stored (one pass fewer over memory than centring x first)."""
    total = x.dtype.type(0)
    for n in range(x.shape[0]):
        for k in range(x.shape[2]):
            deviation = x[n, channel, k] - mean
            total += deviation * deviation
    return total


@njit(**_PARALLEL)
def _batchnorm_forward(x, gamma, beta, eps, count):
    """(N, C, K) x -> y, x_hat (N, C, K) and inv_std (C,); ``count`` = N*K and ``eps``
    are scalars of x's dtype, so float32 work stays float32 (a float64 quotient
    stored into float32 rounds as a float32 quotient would)."""
    batch, channels, size = x.shape
    y, x_hat = np.empty_like(x), np.empty_like(x)
    inv_std = np.empty(channels, dtype=x.dtype)
    for c in prange(channels):
        mean = _channel_dot(x, None, c) / count
        inv_std[c] = 1.0 / np.sqrt(_channel_squared_deviations(x, c, mean) / count + eps)
        for n in range(batch):
            for k in range(size):
                x_hat[n, c, k] = (x[n, c, k] - mean) * inv_std[c]
                y[n, c, k] = x_hat[n, c, k] * gamma[c] + beta[c]
    return y, x_hat, inv_std


@njit(**_PARALLEL)
def _batchnorm_backward(dy, x_hat, inv_std, gamma, count):
    """(N, C, K) dy -> dx (N, C, K), dgamma, dbeta (C,); see `batchnorm2d_backward`."""
    batch, channels, size = dy.shape
    dx = np.empty_like(dy)
    dgamma = np.empty(channels, dtype=dy.dtype)
    dbeta = np.empty(channels, dtype=dy.dtype)
    for c in prange(channels):
        dgamma[c] = _channel_dot(dy, x_hat, c)
        dbeta[c] = _channel_dot(dy, None, c)
        mean_dy, mean_dy_x_hat = dbeta[c] / count, dgamma[c] / count
        scale = gamma[c] * inv_std[c]
        for n in range(batch):
            for k in range(size):
                dx[n, c, k] = (dy[n, c, k] - mean_dy - x_hat[n, c, k] * mean_dy_x_hat) * scale
    return dx, dgamma, dbeta


@njit(**_PARALLEL)
def _relu_forward(x):
    y, zero = np.empty_like(x), x.dtype.type(0)
    for i in prange(x.size):
        y[i] = x[i] if not x[i] < 0 else zero   # keeps NaN, as np.maximum
    return y


@njit(**_PARALLEL)
def _relu_backward(dy, y):
    dx, zero = np.empty_like(dy), dy.dtype.type(0)
    for i in prange(dy.size):
        dx[i] = dy[i] if y[i] > 0 else zero
    return dx


def relu_forward(x):
    """Twin of `reference.relu_forward`, one pass over flat x."""
    checks.relu_forward(x)
    x = np.ascontiguousarray(x)
    return _relu_forward(x.reshape(-1)).reshape(x.shape)


def relu_backward(dy, y):
    """Twin of `reference.relu_backward`, one pass over flat dy."""
    checks.relu_backward(dy, y)
    dy = np.ascontiguousarray(dy)
    return _relu_backward(dy.reshape(-1), np.ascontiguousarray(y).reshape(-1)).reshape(dy.shape)


def batchnorm2d_forward(x, gamma, beta, eps):
    """Twin of `reference.batchnorm2d_forward`: one channel at a time, one pass for the
    mean, one for the variance, one writing x_hat and y."""
    checks.batchnorm2d_forward(x, gamma, beta, eps)
    x = np.ascontiguousarray(x)
    batch, channels, height, width = x.shape
    dtype = x.dtype.type
    y, x_hat, inv_std = _batchnorm_forward(x.reshape(batch, channels, -1), gamma, beta, dtype(eps),
                                           dtype(batch * height * width))
    return y.reshape(x.shape), x_hat.reshape(x.shape), inv_std


def batchnorm2d_backward(dy, x_hat, inv_std, gamma):
    """Twin of `reference.batchnorm2d_backward`: per channel, one pass for both sums and
    one for dx."""
    checks.batchnorm2d_backward(dy, x_hat, inv_std, gamma)
    dy = np.ascontiguousarray(dy)
    batch, channels, height, width = dy.shape
    dx, dgamma, dbeta = _batchnorm_backward(
        dy.reshape(batch, channels, -1), np.ascontiguousarray(x_hat).reshape(batch, channels, -1),
        inv_std, gamma, dy.dtype.type(batch * height * width))
    return dx.reshape(dy.shape), dgamma, dbeta


@njit(**_PARALLEL)
def _adam_update(params, grad, m, v, step_size, beta1, beta2, one_minus_beta1, one_minus_beta2,
                 eps):
    """The update of `adam_update`, element by element, each operation rounded to the
    vectors' dtype in the reference's order (no fused multiply-adds without fastmath)."""
    for i in prange(params.size):
        m[i] = m[i] * beta1 + one_minus_beta1 * grad[i]
        v[i] = v[i] * beta2 + one_minus_beta2 * grad[i] * grad[i]
        params[i] -= step_size * m[i] / (np.sqrt(v[i]) + eps)


def adam_update(params, grad, m, v, step_size, beta1, beta2, eps):
    """Twin of `reference.adam_update`: one pass over the vectors instead of nine, with
    the same bits. ``1 - beta`` is formed here, in the scalars' dtype, because Numba
    would widen ``1 - float32`` to float64. The check of the four vectors' shapes is
    what keeps the loop inside m, v and grad."""
    checks.adam_update(params, grad, m, v)
    one = params.dtype.type(1)
    _adam_update(params, grad, m, v, step_size, beta1, beta2, one - beta1, one - beta2, eps)
