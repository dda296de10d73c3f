"""Argument checks of the kernels: one function per public kernel, called first by both twins.

The Numba cores index their arrays without bounds checks, so arguments that do not
fit together (Adam's moments shorter than the parameters, a max-pool winner outside
its window, targets for fewer steps than inputs) read or write outside an array: a
wrong result, a neighbouring array of the caller silently overwritten, or a
segmentation fault. So every public function of `reference.py` and `fast.py` (and of
`mlp_reference.py` and `mlp_fast.py`) first calls the function of the same name here,
and both backends refuse the same misuse with the same `ValueError`. Its message
starts with the kernel's name and names the argument, e.g.
``adam_update: m must have the shape of params (113221,), got (10,).``

What the kernels rely on, and so what is checked:

* arrays are NumPy arrays with the documented number of dimensions; activations
  and convolution weights are not empty;
* one floating dtype per call, float32 or float64: the first array's (x, dy, params
  or phi) is the dtype of the work and of the result, the others must have it
  (nothing is converted, so nothing changes precision behind the caller's back);
* shapes fit together: w's input channels are x's channels, dy has the output shape
  the geometry implies, per-channel vectors have x's channel count, Adam's vectors
  and the MLP's phi have the length of the parameters;
* geometry: stride an integer >= 1, pad 4 integers >= 0, the window no larger than
  the padded input, max-pool windows of at most 11 x 11 (their winners are int8);
* arrays updated in place (Adam's params, m and v, the MLP's phi) are writable and
  C-contiguous: the update must land in the caller's array, so no contiguous copy
  can be taken;
* max-pool winners are int8 values in [0, size * size): the only check that reads
  an array's values, one vectorised max, because an out-of-range winner is an
  out-of-bounds write in the Numba twin.

The layers call the kernels every training step, so the checks compare attributes
(shape, dtype, flags) and never copy or scan an array (but for the max above).
"""
import numpy as np

from ..losses import REDUCTIONS

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
ACTIVATIONS = ("tanh", "relu")
MAX_POOL_SIZE = 11
"""Largest max-pool window side: the winners of its 121 taps still fit in int8."""


def output_size(size, kernel, stride, pad_before, pad_after):
    """Spatial output size of a convolution or pooling window along one axis."""
    return (size + pad_before + pad_after - kernel) // stride + 1


def parameter_count(widths):
    """Length of an MLP's flat parameter vector: ``sum_l widths[l+1] * (widths[l] + 1)``."""
    return sum(fan_out * (fan_in + 1) for fan_in, fan_out in zip(widths[:-1], widths[1:]))


# --------------------------------------------------------------------------------------
# Building blocks. ``kernel`` is the public function's name, ``name`` the argument's.

def _fail(kernel, message):
    raise ValueError(f"{kernel}: {message}.")


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _array(kernel, name, a, ndim, dtype_of=None):
    """a must be an ndarray with ``ndim`` dimensions (None: any) of a float dtype, or of
    the dtype of ``dtype_of = (argument name, array)`` when given."""
    if not isinstance(a, np.ndarray):
        _fail(kernel, f"{name} must be a NumPy array, got {type(a).__name__}")
    if ndim is not None and a.ndim != ndim:
        _fail(kernel, f"{name} must be a {ndim}-D array, got shape {a.shape}")
    if dtype_of is None:
        if a.dtype not in FLOATS:
            _fail(kernel, f"{name} must be float32 or float64, got {a.dtype}")
    elif a.dtype != dtype_of[1].dtype:
        _fail(kernel, f"{name} must have the dtype of {dtype_of[0]} ({dtype_of[1].dtype}), "
                      f"got {a.dtype}")


def _array4(kernel, name, a, dtype_of=None):
    """a must be a non-empty 4-D float array (of ``dtype_of``'s dtype if given): an
    activation (N, C, H, W) or convolution weights (O, C, KH, KW)."""
    _array(kernel, name, a, 4, dtype_of)
    if a.size == 0:
        _fail(kernel, f"{name} must not be empty, got shape {a.shape}")


def _shape(kernel, name, a, shape, why):
    """a.shape must be ``shape``; ``why`` says where it comes from."""
    if a.shape != shape:
        _fail(kernel, f"{name} must have shape {shape}, {why}, got {a.shape}")


def _same_shape(kernel, name, a, other_name, other):
    if a.shape != other.shape:
        _fail(kernel, f"{name} must have the shape of {other_name} {other.shape}, got {a.shape}")


def _updated_in_place(kernel, name, a):
    if not a.flags.c_contiguous:
        _fail(kernel, f"{name} must be C-contiguous (it is updated in place)")
    if not a.flags.writeable:
        _fail(kernel, f"{name} must be writable (it is updated in place)")


def _dims(kernel, name, shape, meaning):
    """``shape`` (x_shape, w_shape) must be 4 integers >= 1."""
    if not (isinstance(shape, (tuple, list)) and len(shape) == 4
            and all(_is_int(size) and size >= 1 for size in shape)):
        _fail(kernel, f"{name} must be 4 integers >= 1 {meaning}, got {shape!r}")


def _channels(kernel, w_name, w_shape, x_name, channels):
    if w_shape[1] != channels:
        _fail(kernel, f"{w_name} must have {x_name}'s {channels} input channels in dimension 1, "
                      f"got shape {tuple(w_shape)}")


def _window(kernel, window, kh, kw, x_shape, stride, pad):
    """stride and pad must be valid and the kh x kw window (argument ``window``) must fit the
    padded (N, C, H, W) input. Returns the output's (OH, OW)."""
    if not _is_int(stride) or stride < 1:
        _fail(kernel, f"stride must be an integer >= 1, got {stride!r}")
    if not (isinstance(pad, (tuple, list)) and len(pad) == 4
            and all(_is_int(side) and side >= 0 for side in pad)):
        _fail(kernel, f"pad must be 4 integers >= 0 (top, bottom, left, right), got {pad!r}")
    height, width = x_shape[2] + pad[0] + pad[1], x_shape[3] + pad[2] + pad[3]
    if kh > height or kw > width:
        _fail(kernel, f"{window} gives a {kh} x {kw} window, larger than the padded input "
                      f"{height} x {width}")
    return (output_size(x_shape[2], kh, stride, pad[0], pad[1]),
            output_size(x_shape[3], kw, stride, pad[2], pad[3]))


def _output_gradient(kernel, dy, shape, sources):
    """dy must have the output shape that the arguments named in ``sources`` imply."""
    _shape(kernel, "dy", dy, tuple(shape), f"the output shape for {sources}")


def _pool_size(kernel, size):
    if not _is_int(size) or not 1 <= size <= MAX_POOL_SIZE:
        _fail(kernel, f"size must be an integer in [1, {MAX_POOL_SIZE}] (winners are int8), "
                      f"got {size!r}")


# --------------------------------------------------------------------------------------
# One check per public kernel, with its name and arguments.

def conv2d_forward(x, w, stride, pad, kernel="conv2d_forward"):
    """Arguments of `conv2d_forward` (and, with its name as ``kernel``, of
    `conv2d_forward_saving`): x (N, C, H, W), w (O, C, KH, KW) of x's dtype."""
    _array4(kernel, "x", x)
    _array4(kernel, "w", w, ("x", x))
    _channels(kernel, "w", w.shape, "x", x.shape[1])
    _window(kernel, "w", w.shape[2], w.shape[3], x.shape, stride, pad)


def conv2d_forward_saving(x, w, stride, pad):
    """Arguments of `conv2d_forward_saving`: as `conv2d_forward`."""
    conv2d_forward(x, w, stride, pad, kernel="conv2d_forward_saving")


def conv2d_backward_input(dy, w, x_shape, stride, pad, kernel="conv2d_backward_input"):
    """Arguments of `conv2d_backward_input` (and, with its name as ``kernel``, of
    `conv2d_backward`): dy (N, O, OH, OW) the output gradient of a convolution of an
    x_shape input by w (O, C, KH, KW) of dy's dtype."""
    _array4(kernel, "dy", dy)
    _array4(kernel, "w", w, ("dy", dy))
    _dims(kernel, "x_shape", x_shape, "(N, C, H, W)")
    _channels(kernel, "w", w.shape, "x_shape", x_shape[1])
    out_h, out_w = _window(kernel, "w", w.shape[2], w.shape[3], x_shape, stride, pad)
    _output_gradient(kernel, dy, (x_shape[0], w.shape[0], out_h, out_w),
                     "x_shape, w, stride and pad")


def conv2d_backward_weight(dy, x, w_shape, stride, pad):
    """Arguments of `conv2d_backward_weight`: dy (N, O, OH, OW) the output gradient of a
    convolution of x (N, C, H, W) of dy's dtype by weights of w_shape (O, C, KH, KW)."""
    kernel = "conv2d_backward_weight"
    _array4(kernel, "dy", dy)
    _array4(kernel, "x", x, ("dy", dy))
    _dims(kernel, "w_shape", w_shape, "(O, C, KH, KW)")
    _channels(kernel, "w_shape", w_shape, "x", x.shape[1])
    out_h, out_w = _window(kernel, "w_shape", w_shape[2], w_shape[3], x.shape, stride, pad)
    _output_gradient(kernel, dy, (x.shape[0], w_shape[0], out_h, out_w),
                     "x, w_shape, stride and pad")


def conv2d_backward(dy, w, x_shape, stride, pad):
    """Arguments of `conv2d_backward` but ``saved`` (see `conv2d_saved`): as
    `conv2d_backward_input`."""
    conv2d_backward_input(dy, w, x_shape, stride, pad, kernel="conv2d_backward")


def conv2d_saved(saved, shapes, dy, x_shape, w):
    """``saved`` (a tuple of arrays: what the twin's `conv2d_forward_saving` keeps) must
    hold arrays of ``shapes`` and of dy's dtype. The message is the same on both
    backends, though each saves different arrays."""
    if not (isinstance(saved, tuple) and len(saved) == len(shapes)
            and all(isinstance(a, np.ndarray) and a.shape == shape and a.dtype == dy.dtype
                    for a, shape in zip(saved, shapes))):
        _fail("conv2d_backward", f"saved must be what conv2d_forward_saving returned for a "
                                 f"{dy.dtype} x of shape {tuple(x_shape)} and w of shape {w.shape}")


def maxpool2d_forward(x, size, stride, pad):
    """Arguments of `maxpool2d_forward`: x (N, C, H, W), a size x size window."""
    kernel = "maxpool2d_forward"
    _array4(kernel, "x", x)
    _pool_size(kernel, size)
    _window(kernel, "size", size, size, x.shape, stride, pad)


def maxpool2d_backward(dy, argmax, x_shape, size, stride, pad):
    """Arguments of `maxpool2d_backward`: dy (N, C, OH, OW) the output gradient of a
    pooling of an x_shape input, argmax int8 winners of dy's shape in [0, size * size)."""
    kernel = "maxpool2d_backward"
    _array4(kernel, "dy", dy)
    _dims(kernel, "x_shape", x_shape, "(N, C, H, W)")
    _pool_size(kernel, size)
    out_h, out_w = _window(kernel, "size", size, size, x_shape, stride, pad)
    _output_gradient(kernel, dy, (x_shape[0], x_shape[1], out_h, out_w),
                     "x_shape, size, stride and pad")
    if not isinstance(argmax, np.ndarray) or argmax.dtype != np.int8:
        _fail(kernel, f"argmax must be an int8 array (maxpool2d_forward's winners), got "
                      f"{getattr(argmax, 'dtype', type(argmax).__name__)}")
    _same_shape(kernel, "argmax", argmax, "dy", dy)
    # Seen as uint8, negative winners are >= 128: one max checks both ends of the range.
    if argmax.view(np.uint8).max() >= size * size:
        _fail(kernel, f"argmax must hold taps in [0, {size * size}) of a {size} x {size} "
                      f"window, got values from {argmax.min()} to {argmax.max()}")


def batchnorm2d_forward(x, gamma, beta, eps):
    """Arguments of `batchnorm2d_forward`: x (N, C, H, W), gamma and beta (C,) of x's dtype."""
    kernel = "batchnorm2d_forward"
    _array4(kernel, "x", x)
    for name, vector in (("gamma", gamma), ("beta", beta)):
        _array(kernel, name, vector, 1, ("x", x))
        _shape(kernel, name, vector, x.shape[1:2], "x's channel count")


def batchnorm2d_backward(dy, x_hat, inv_std, gamma):
    """Arguments of `batchnorm2d_backward`: dy (N, C, H, W), x_hat of its shape, inv_std
    and gamma (C,), all of dy's dtype."""
    kernel = "batchnorm2d_backward"
    _array4(kernel, "dy", dy)
    _array4(kernel, "x_hat", x_hat, ("dy", dy))
    _same_shape(kernel, "x_hat", x_hat, "dy", dy)
    for name, vector in (("inv_std", inv_std), ("gamma", gamma)):
        _array(kernel, name, vector, 1, ("dy", dy))
        _shape(kernel, name, vector, dy.shape[1:2], "dy's channel count")


def relu_forward(x):
    """Arguments of `relu_forward`: x a float array of any shape."""
    _array("relu_forward", "x", x, None)


def relu_backward(dy, y):
    """Arguments of `relu_backward`: dy a float array, y (the forward output) of its
    shape and dtype."""
    kernel = "relu_backward"
    _array(kernel, "dy", dy, None)
    _array(kernel, "y", y, None, ("dy", dy))
    _same_shape(kernel, "y", y, "dy", dy)


def matmul(a, b):
    """Arguments of `blas.matmul`: a (M, K) or (N, M, K) and b (K, P) or (N, K, P) of one
    float dtype, stacks of the same length (the tiles' BLAS calls index both by these)."""
    kernel = "matmul"
    for name, x in (("a", a), ("b", b)):
        _array(kernel, name, x, None, None if name == "a" else ("a", a))
        if x.ndim not in (2, 3):
            _fail(kernel, f"{name} must be a 2-D or 3-D array, got shape {x.shape}")
    if a.shape[-1] != b.shape[-2]:
        _fail(kernel, f"a's columns ({a.shape[-1]}) must equal b's rows ({b.shape[-2]})")
    if a.ndim == b.ndim == 3 and a.shape[0] != b.shape[0]:
        _fail(kernel, f"a and b must be stacks of as many matrices, got {a.shape[0]} and "
                      f"{b.shape[0]}")


def adam_update(params, grad, m, v):
    """Array arguments of `adam_update`: params, grad, m, v flat vectors of one shape and
    float dtype; params, m and v (updated in place) writable and C-contiguous."""
    kernel = "adam_update"
    _array(kernel, "params", params, 1)
    _updated_in_place(kernel, "params", params)
    for name, vector in (("grad", grad), ("m", m), ("v", v)):
        _array(kernel, name, vector, 1, ("params", params))
        _same_shape(kernel, name, vector, "params", params)
    _updated_in_place(kernel, "m", m)
    _updated_in_place(kernel, "v", v)


def mlp_sgd_inner_loop(phi, widths, activation, x_batches, y_batches, reduction):
    """Arguments of `mlp_sgd_inner_loop` (but the scalars lr and weight_decay): widths at
    least two integers >= 1; phi (P,) writable and C-contiguous, P = `parameter_count`;
    x_batches (S, B, widths[0]) with B >= 1 and y_batches (S, B, widths[-1]), of phi's
    dtype (the Numba loop reads y_batches[s] for every step s of x_batches)."""
    kernel = "mlp_sgd_inner_loop"
    if reduction not in REDUCTIONS:
        _fail(kernel, f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if activation not in ACTIVATIONS:
        _fail(kernel, f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if not (isinstance(widths, (tuple, list)) and len(widths) >= 2
            and all(_is_int(width) and width >= 1 for width in widths)):
        _fail(kernel, f"widths must be at least 2 integers >= 1, got {widths!r}")
    _array(kernel, "phi", phi, 1)
    _shape(kernel, "phi", phi, (parameter_count(widths),),
           f"the parameter count of widths {tuple(widths)}")
    _updated_in_place(kernel, "phi", phi)
    _array(kernel, "x_batches", x_batches, 3, ("phi", phi))
    if x_batches.shape[2] != widths[0] or x_batches.shape[1] == 0:
        _fail(kernel, f"x_batches must have shape (S, B, {widths[0]}) with B >= 1, "
                      f"got {x_batches.shape}")
    _array(kernel, "y_batches", y_batches, 3, ("phi", phi))
    _shape(kernel, "y_batches", y_batches, x_batches.shape[:2] + (widths[-1],),
           "x_batches' (S, B) and widths[-1]")
