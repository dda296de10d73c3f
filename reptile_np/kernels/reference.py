"""Readable NumPy kernels: convolution, batch normalisation, max-pooling, ReLU and
the Adam update, forward and backward.

These are the kernels to read. Each one loops over the *kernel taps* (the
kh x kw offsets inside a window) and does one small matrix product per tap, so
the arithmetic of a convolution is visible in a few lines. `fast.py` holds Numba
twins with exactly the same signatures; a test holds the two equal.

Conventions shared by every kernel here:

* Activations are NCHW; convolution weights are (out, in, kh, kw) as in PyTorch.
* ``pad`` is always an explicit 4-tuple ``(top, bottom, left, right)``. The layer
  resolves ``"same"`` / int padding into this tuple, so TensorFlow's asymmetric
  "same" padding (the extra row at the bottom/right) is just another tuple.
* The output size along one axis is ``(size + before + after - k) // stride + 1``
  (`output_size`).
* The arrays of one call share one dtype, float32 or float64: the dtype of the work
  and of the result.
* Every public function first calls its twin in `checks`, which raises ValueError
  for arguments that do not fit together, with the same message on both backends.
"""
import numpy as np

from . import checks
from .checks import output_size


def _tap(xp, i, j, stride, out_h, out_w):
    """The (N, C, out_h, out_w) slice of the padded input seen by kernel tap (i, j)."""
    return xp[:, :, i:i + stride * out_h:stride, j:j + stride * out_w:stride]


def _padded(x, pad, value=0.0):
    top, bottom, left, right = pad
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=value)


def conv2d_forward(x, w, stride, pad):
    """Cross-correlation without bias, as ``torch.nn.functional.conv2d``.

    Args:
        x: (N, C, H, W) input.
        w: (O, C, KH, KW) weights.
        stride: int, the same along both axes.
        pad: (top, bottom, left, right) zero padding.

    Returns:
        y: (N, O, OH, OW) with ``y[n, o, p, q] = sum_{c,i,j} w[o, c, i, j] *
        xpad[n, c, p*stride + i, q*stride + j]``.

    Raises:
        ValueError: if the arguments do not fit together (see `checks.conv2d_forward`).
    """
    checks.conv2d_forward(x, w, stride, pad)
    n, _, h, width = x.shape
    out_ch, _, kh, kw = w.shape
    out_h = output_size(h, kh, stride, pad[0], pad[1])
    out_w = output_size(width, kw, stride, pad[2], pad[3])
    xp = _padded(x, pad)
    y = np.zeros((n, out_ch, out_h, out_w), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            # (O, C) . (N, C, OH, OW) over C -> (O, N, OH, OW)
            y += np.tensordot(w[:, :, i, j], _tap(xp, i, j, stride, out_h, out_w),
                              axes=([1], [1])).transpose(1, 0, 2, 3)
    return y


def conv2d_backward_input(dy, w, x_shape, stride, pad):
    """Gradient of `conv2d_forward` with respect to its input.

    Args:
        dy: (N, O, OH, OW) upstream gradient.
        w: (O, C, KH, KW) weights.
        x_shape: (N, C, H, W) shape of the forward input.
        stride, pad: as in the forward pass.

    Returns:
        dx: (N, C, H, W); every tap scatters ``w[:, :, i, j]^T dy`` back onto the
        input pixels it read, and the padding border is cropped off.

    Raises:
        ValueError: see `checks.conv2d_backward_input`.
    """
    checks.conv2d_backward_input(dy, w, x_shape, stride, pad)
    n, c, h, width = x_shape
    _, _, kh, kw = w.shape
    out_h, out_w = dy.shape[2], dy.shape[3]
    dxp = np.zeros((n, c, h + pad[0] + pad[1], width + pad[2] + pad[3]), dtype=dy.dtype)
    for i in range(kh):
        for j in range(kw):
            # (N, O, OH, OW) . (O, C) over O -> (N, OH, OW, C)
            contribution = np.tensordot(dy, w[:, :, i, j], axes=([1], [0]))
            _tap(dxp, i, j, stride, out_h, out_w)[...] += contribution.transpose(0, 3, 1, 2)
    return dxp[:, :, pad[0]:pad[0] + h, pad[2]:pad[2] + width]


def conv2d_backward_weight(dy, x, w_shape, stride, pad):
    """Gradient of `conv2d_forward` with respect to its weights.

    Args:
        dy: (N, O, OH, OW) upstream gradient.
        x: (N, C, H, W) forward input.
        w_shape: (O, C, KH, KW).
        stride, pad: as in the forward pass.

    Returns:
        dw: (O, C, KH, KW) with ``dw[o, c, i, j] = sum_{n,p,q} dy[n, o, p, q] *
        xpad[n, c, p*stride + i, q*stride + j]``.

    Raises:
        ValueError: see `checks.conv2d_backward_weight`.
    """
    checks.conv2d_backward_weight(dy, x, w_shape, stride, pad)
    out_ch, c, kh, kw = w_shape
    out_h, out_w = dy.shape[2], dy.shape[3]
    xp = _padded(x, pad)
    dw = np.empty(w_shape, dtype=dy.dtype)
    for i in range(kh):
        for j in range(kw):
            dw[:, :, i, j] = np.tensordot(dy, _tap(xp, i, j, stride, out_h, out_w),
                                          axes=([0, 2, 3], [0, 2, 3]))
    return dw


def conv2d_forward_saving(x, w, stride, pad):
    """`conv2d_forward`, plus what `conv2d_backward` needs: here x itself.

    Returns:
        (y, saved); the Numba twin saves x's im2col patches and the weight matrix
        instead, so that its backward pass reuses the forward pass's rearrangements.

    Raises:
        ValueError: see `checks.conv2d_forward`.
    """
    checks.conv2d_forward_saving(x, w, stride, pad)
    return conv2d_forward(x, w, stride, pad), x


def conv2d_backward(dy, w, saved, x_shape, stride, pad, input_grad=True):
    """Both gradients of `conv2d_forward`, from the ``saved`` of `conv2d_forward_saving`.

    Returns:
        (dx, dw) as `conv2d_backward_input` and `conv2d_backward_weight`; dx is None
        when ``input_grad`` is False.

    Raises:
        ValueError: see `checks.conv2d_backward` and `checks.conv2d_saved`.
    """
    checks.conv2d_backward(dy, w, x_shape, stride, pad)
    checks.conv2d_saved((saved,), (tuple(x_shape),), dy, x_shape, w)
    dx = conv2d_backward_input(dy, w, x_shape, stride, pad) if input_grad else None
    return dx, conv2d_backward_weight(dy, saved, w.shape, stride, pad)


def maxpool2d_forward(x, size, stride, pad):
    """Max-pooling over size x size windows; padded cells are -inf and never win.

    Args:
        x: (N, C, H, W) input.
        size: window side.
        stride: window step.
        pad: (top, bottom, left, right) padding with -inf.

    Returns:
        y: (N, C, OH, OW) window maxima.
        argmax: (N, C, OH, OW) int8, the winning tap ``i * size + j`` of each window;
        ties go to the first maximum in row-major window order (as PyTorch's CPU kernel).

    Raises:
        ValueError: see `checks.maxpool2d_forward` (size is at most 11: argmax is int8).
    """
    checks.maxpool2d_forward(x, size, stride, pad)
    _, _, h, width = x.shape
    out_h = output_size(h, size, stride, pad[0], pad[1])
    out_w = output_size(width, size, stride, pad[2], pad[3])
    xp = _padded(x, pad, value=-np.inf)
    taps = np.stack([_tap(xp, i, j, stride, out_h, out_w)
                     for i in range(size) for j in range(size)])
    argmax = np.argmax(taps, axis=0).astype(np.int8)  # argmax keeps the first of ties
    y = np.take_along_axis(taps, argmax[None].astype(np.intp), axis=0)[0]
    return y, argmax


def maxpool2d_backward(dy, argmax, x_shape, size, stride, pad):
    """Gradient of `maxpool2d_forward`: each window's gradient goes to its winner.

    Args:
        dy: (N, C, OH, OW) upstream gradient.
        argmax: (N, C, OH, OW) winning taps from the forward pass.
        x_shape: (N, C, H, W) shape of the forward input.
        size, stride, pad: as in the forward pass.

    Returns:
        dx: (N, C, H, W).

    Raises:
        ValueError: see `checks.maxpool2d_backward` (argmax out of range included).
    """
    checks.maxpool2d_backward(dy, argmax, x_shape, size, stride, pad)
    n, c, h, width = x_shape
    out_h, out_w = dy.shape[2], dy.shape[3]
    dxp = np.zeros((n, c, h + pad[0] + pad[1], width + pad[2] + pad[3]), dtype=dy.dtype)
    for i in range(size):
        for j in range(size):
            won = argmax == i * size + j
            _tap(dxp, i, j, stride, out_h, out_w)[...] += np.where(won, dy, 0)
    return dxp[:, :, pad[0]:pad[0] + h, pad[2]:pad[2] + width]


def batchnorm2d_forward(x, gamma, beta, eps):
    """Batch normalisation with the batch's own statistics, per channel.

    For each channel c, over its M = N*H*W values::

        mean = (1/M) sum x,   var = (1/M) sum (x - mean)^2   (biased, as TensorFlow)
        x_hat = (x - mean) / sqrt(var + eps),   y = gamma * x_hat + beta

    Args:
        x: (N, C, H, W) input. gamma, beta: (C,) scale and shift. eps: added to the variance.

    Returns:
        y: (N, C, H, W); x_hat: (N, C, H, W), kept for the backward pass;
        inv_std: (C,), ``1 / sqrt(var + eps)``, kept too.

    Raises:
        ValueError: see `checks.batchnorm2d_forward`.
    """
    checks.batchnorm2d_forward(x, gamma, beta, eps)
    axes = (0, 2, 3)                                    # everything but the channel
    mean = x.mean(axis=axes, keepdims=True)             # (1, C, 1, 1)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    inv_std = 1 / np.sqrt(var + x.dtype.type(eps))
    x_hat = (x - mean) * inv_std
    y = _per_channel(gamma) * x_hat + _per_channel(beta)
    return y, x_hat, inv_std.reshape(-1)


def batchnorm2d_backward(dy, x_hat, inv_std, gamma):
    """Gradients of `batchnorm2d_forward`, per channel over its M = N*H*W values.

    Derivation, in three stages (s = inv_std, means over the M values)::

        y = gamma * x_hat + beta     =>  dbeta = sum dy,  dgamma = sum dy * x_hat,
                                         dx_hat = gamma * dy
        x_hat = (x - mean) * s, where mean and s depend on every x of the channel:
            d mean / dx = 1/M,  d s / dx = -s^3 (x - mean) / M = -s^2 x_hat / M
        =>  dx = s * (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat))

    (the last two terms are what flows back through the mean and through the variance).

    Args:
        dy: (N, C, H, W) upstream gradient. x_hat, inv_std: from the forward pass.
        gamma: (C,) scale.

    Returns:
        dx: (N, C, H, W); dgamma: (C,); dbeta: (C,).

    Raises:
        ValueError: see `checks.batchnorm2d_backward`.
    """
    checks.batchnorm2d_backward(dy, x_hat, inv_std, gamma)
    axes = (0, 2, 3)
    dbeta = dy.sum(axis=axes)
    dgamma = (dy * x_hat).sum(axis=axes)
    dx_hat = _per_channel(gamma) * dy
    dx = _per_channel(inv_std) * (dx_hat - dx_hat.mean(axis=axes, keepdims=True)
                                  - x_hat * (dx_hat * x_hat).mean(axis=axes, keepdims=True))
    return dx, dgamma, dbeta


def _per_channel(values):
    """A (C,) vector as (1, C, 1, 1), to broadcast over (N, C, H, W)."""
    return values[None, :, None, None]


def relu_forward(x):
    """max(x, 0) elementwise (NaN stays NaN, -inf becomes 0, as ``torch.relu``).

    Raises:
        ValueError: unless x is a float32 or float64 array.
    """
    checks.relu_forward(x)
    return np.maximum(x, x.dtype.type(0))


def relu_backward(dy, y):
    """dy where the forward output ``y`` is positive, else 0 (the subgradient 0 at 0).

    Raises:
        ValueError: unless y has the shape and dtype of dy (float32 or float64).
    """
    checks.relu_backward(dy, y)
    return np.where(y > 0, dy, dy.dtype.type(0))


def adam_update(params, grad, m, v, step_size, beta1, beta2, eps):
    """One Adam step in TensorFlow 1's form, in place on ``params``, ``m`` and ``v``.

    Args:
        params, grad, m, v: flat vectors of one dtype. step_size: the learning rate with
        the bias correction folded in. beta1, beta2, eps: Adam's constants. The scalars
        are that same dtype (`optim.Adam` converts them), so float32 stays float32.

    Updates::

        m <- beta1 * m + (1 - beta1) * g
        v <- beta2 * v + (1 - beta2) * g^2
        params <- params - step_size * m / (sqrt(v) + eps)

    Raises:
        ValueError: see `checks.adam_update` (params, m and v must be writable and
        C-contiguous, all four of one shape and dtype).
    """
    checks.adam_update(params, grad, m, v)
    one = params.dtype.type(1)
    m *= beta1
    m += (one - beta1) * grad
    v *= beta2
    v += (one - beta2) * grad * grad
    params -= step_size * m / (np.sqrt(v) + eps)
