"""Layers: each forward pass with its backward pass beside it.

One contract for every layer:

* ``layer.param_shapes`` -- ``{"weight": shape, "bias": shape}`` (empty if none), in
  PyTorch layout and PyTorch ``state_dict`` order;
* ``layer.forward(params, x) -> (y, cache)`` -- ``params`` is a tuple of arrays in
  that order; ``cache`` holds exactly what the backward pass needs;
* ``layer.backward(params, cache, dy, input_grad=True) -> (dx, dparams)`` --
  ``dparams`` is a tuple matching ``params``; with ``input_grad=False`` a layer with
  parameters may skip dx and return None (a model's first layer: nothing upstream
  needs it, and for a convolution it is a third of the layer's work);
* ``layer.init(rng, dtype) -> params`` and ``layer.output_shape(in_shape)`` (shapes
  without the batch axis).

Layers own no weights; a model maps its flat parameter vector onto these tuples.
The dtype of ``x`` and ``params`` is the dtype of the work.
"""
import numpy as np

from . import kernels


class Layer:
    """Base class: a parameter-free layer that keeps the shape of its input."""

    param_shapes = {}

    def init(self, rng, dtype):
        """Initial parameters, a tuple in `param_shapes` order."""
        return ()

    def output_shape(self, in_shape):
        """Shape of one output example given the shape of one input example."""
        return tuple(in_shape)

    def __repr__(self):
        return f"{type(self).__name__}()"


def glorot_uniform(rng, shape, fan_in, fan_out, dtype):
    """U(-a, a) with a = sqrt(6 / (fan_in + fan_out)): TF1's default kernel init."""
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape).astype(dtype)


def torch_uniform(rng, shape, fan_in, dtype):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default for Linear/Conv2d weights and biases."""
    bound = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def _init_weight_and_bias(rng, dtype, weight_shape, fan_in, fan_out, scheme):
    """Glorot-uniform kernel and zero bias ("glorot", the paper code's TF1 default),
    or PyTorch's uniform weight and bias ("torch", the sine demo's)."""
    if scheme == "glorot":
        return (glorot_uniform(rng, weight_shape, fan_in, fan_out, dtype),
                np.zeros(weight_shape[0], dtype=dtype))
    if scheme == "torch":
        return (torch_uniform(rng, weight_shape, fan_in, dtype),
                torch_uniform(rng, (weight_shape[0],), fan_in, dtype))
    raise ValueError(f"init must be 'glorot' or 'torch', got {scheme!r}.")


class Linear(Layer):
    """Fully connected layer, ``y = x W^T + b``, W of shape (out, in) as in PyTorch."""

    def __init__(self, in_features, out_features, init="glorot"):
        self.in_features, self.out_features, self.init_scheme = in_features, out_features, init
        self.param_shapes = {"weight": (out_features, in_features), "bias": (out_features,)}

    def init(self, rng, dtype):
        return _init_weight_and_bias(rng, dtype, self.param_shapes["weight"],
                                     self.in_features, self.out_features, self.init_scheme)

    def output_shape(self, in_shape):
        if tuple(in_shape) != (self.in_features,):
            raise ValueError(f"Linear expects inputs of shape (N, {self.in_features}), "
                             f"got (N, {', '.join(map(str, in_shape))}).")
        return (self.out_features,)

    def forward(self, params, x):
        """x: (N, in) -> y: (N, out)."""
        w, b = params
        return x @ w.T + b, x

    def backward(self, params, cache, dy, input_grad=True):
        """dy: (N, out) -> dx = dy W (N, in); dW = dy^T x (out, in); db = sum_n dy (out,)."""
        w, _ = params
        x = cache
        return (dy @ w if input_grad else None), (dy.T @ x, dy.sum(axis=0))

    def __repr__(self):
        return f"Linear({self.in_features}, {self.out_features})"


def same_padding(size, kernel, stride):
    """TensorFlow "SAME" padding along one axis: (before, after), the extra cell after.

    The output has ceil(size / stride) cells; the total padding needed for that is
    max((out - 1) * stride + kernel - size, 0), split with the odd cell at the end.
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _resolve_padding(padding, h, w, kernel, stride):
    """int, (top, bottom, left, right) or "same" -> (top, bottom, left, right)."""
    if isinstance(padding, str):
        return same_padding(h, kernel, stride) + same_padding(w, kernel, stride)
    if isinstance(padding, (int, np.integer)):
        return (int(padding),) * 4
    return tuple(int(p) for p in padding)


def _check_padding(padding):
    if isinstance(padding, str):
        if padding != "same":
            raise ValueError(f"padding must be an int, a (top, bottom, left, right) tuple "
                             f"or 'same', got {padding!r}.")
    elif isinstance(padding, (int, np.integer)):
        if padding < 0:
            raise ValueError(f"padding must be non-negative, got {padding}.")
    elif len(padding) != 4 or any(int(p) < 0 for p in padding):
        raise ValueError(f"padding tuple must be (top, bottom, left, right) with "
                         f"non-negative entries, got {padding!r}.")


class Conv2d(Layer):
    """2-D convolution (cross-correlation) with bias, weights (out, in, kh, kw).

    ``padding`` is an int (symmetric, as PyTorch), a (top, bottom, left, right) tuple,
    or ``"same"`` with TensorFlow's semantics: output size ceil(in / stride) and the
    odd padding cell at the bottom/right (REFERENCE b: 28 -> 14 pads (0, 1)).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, init="glorot"):
        _check_padding(padding)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.init_scheme = (
            kernel_size, stride, padding, init)
        self.param_shapes = {"weight": (out_channels, in_channels, kernel_size, kernel_size),
                             "bias": (out_channels,)}

    def init(self, rng, dtype):
        taps = self.kernel_size * self.kernel_size
        return _init_weight_and_bias(rng, dtype, self.param_shapes["weight"],
                                     self.in_channels * taps, self.out_channels * taps,
                                     self.init_scheme)

    def pad(self, h, w):
        """The (top, bottom, left, right) padding used for an h x w input."""
        return _resolve_padding(self.padding, h, w, self.kernel_size, self.stride)

    def output_shape(self, in_shape):
        if len(in_shape) != 3 or in_shape[0] != self.in_channels:
            raise ValueError(f"Conv2d expects inputs of shape (N, {self.in_channels}, H, W), "
                             f"got (N, {', '.join(map(str, in_shape))}).")
        _, h, w = in_shape
        top, bottom, left, right = self.pad(h, w)
        k, s = self.kernel_size, self.stride
        return (self.out_channels, kernels.reference.output_size(h, k, s, top, bottom),
                kernels.reference.output_size(w, k, s, left, right))

    def forward(self, params, x):
        """x: (N, C, H, W) -> y: (N, O, OH, OW), y = conv(x, W) + b[None, :, None, None].

        The cache keeps what the backward pass needs (x, or the Numba backend's
        im2col patches of x and weight matrix; see `kernels.conv2d_forward_saving`)."""
        w, b = params
        pad = self.pad(x.shape[2], x.shape[3])
        y, saved = kernels.conv2d_forward_saving(x, w, self.stride, pad)
        y += b[None, :, None, None]
        return y, (x.shape, pad, saved)

    def backward(self, params, cache, dy, input_grad=True):
        """dy: (N, O, OH, OW) -> dx (N, C, H, W), dW (O, C, KH, KW), db = sum_{n,h,w} dy (O,)."""
        w, _ = params
        x_shape, pad, saved = cache
        dx, dw = kernels.conv2d_backward(dy, w, saved, x_shape, self.stride, pad, input_grad)
        return dx, (dw, np.einsum("nohw->o", dy))

    def __repr__(self):
        return (f"Conv2d({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding!r})")


class BatchNorm2d(Layer):
    """Batch normalisation with the statistics of the current batch, always.

    As the paper's code: no running averages, biased variance over (N, H, W) per
    channel, eps 1e-3 by default (TF's), learnable scale ``weight`` and shift ``bias``.
    """

    def __init__(self, num_features, eps=1e-3):
        self.num_features, self.eps = num_features, eps
        self.param_shapes = {"weight": (num_features,), "bias": (num_features,)}

    def init(self, rng, dtype):
        return np.ones(self.num_features, dtype=dtype), np.zeros(self.num_features, dtype=dtype)

    def output_shape(self, in_shape):
        if len(in_shape) != 3 or in_shape[0] != self.num_features:
            raise ValueError(f"BatchNorm2d expects inputs of shape (N, {self.num_features}, H, W), "
                             f"got (N, {', '.join(map(str, in_shape))}).")
        return tuple(in_shape)

    def forward(self, params, x):
        """x: (N, C, H, W) -> y = gamma * (x - mean) / sqrt(var + eps) + beta, same shape;
        the cache is x_hat = (x - mean) / sqrt(var + eps) and 1 / sqrt(var + eps)."""
        gamma, beta = params
        y, x_hat, inv_std = kernels.batchnorm2d_forward(x, gamma, beta, self.eps)
        return y, (x_hat, inv_std)

    def backward(self, params, cache, dy, input_grad=True):
        """dy: (N, C, H, W) -> dx, (dgamma, dbeta), with M = N*H*W values per channel:
        dgamma = sum dy*x_hat, dbeta = sum dy,
        dx = gamma * inv_std * (dy - dbeta/M - x_hat * dgamma/M)."""
        gamma, _ = params
        x_hat, inv_std = cache
        dx, dgamma, dbeta = kernels.batchnorm2d_backward(dy, x_hat, inv_std, gamma)
        return dx, (dgamma, dbeta)

    def __repr__(self):
        return f"BatchNorm2d({self.num_features}, eps={self.eps})"


class ReLU(Layer):
    """max(x, 0) elementwise."""

    def forward(self, params, x):
        """y = max(x, 0); the cache is y (y > 0 exactly where x > 0)."""
        y = kernels.relu_forward(x)
        return y, y

    def backward(self, params, cache, dy, input_grad=True):
        """dx = dy where x > 0, else 0 (the subgradient 0 at x = 0, as PyTorch)."""
        return kernels.relu_backward(dy, cache), ()


class Tanh(Layer):
    """tanh(x) elementwise."""

    def forward(self, params, x):
        """y = tanh(x); the cache is y."""
        y = np.tanh(x)
        return y, y

    def backward(self, params, cache, dy, input_grad=True):
        """dx = dy * (1 - y^2)."""
        return dy * (1 - cache * cache), ()


class MaxPool2d(Layer):
    """Max-pooling, size x size windows with the given stride.

    ``padding="valid"`` drops incomplete windows (PyTorch's default); ``"same"`` is
    TensorFlow's: ceil(in / stride) outputs, padded cells at the bottom/right hold
    -inf and never win (equal to PyTorch ``ceil_mode=True`` for 2x2 stride 2).
    """

    def __init__(self, size=2, stride=2, padding="valid"):
        if padding not in ("valid", "same"):
            raise ValueError(f"MaxPool2d padding must be 'valid' or 'same', got {padding!r}.")
        self.size, self.stride, self.padding = size, stride, padding

    def pad(self, h, w):
        """The (top, bottom, left, right) padding used for an h x w input."""
        if self.padding == "valid":
            return (0, 0, 0, 0)
        return same_padding(h, self.size, self.stride) + same_padding(w, self.size, self.stride)

    def output_shape(self, in_shape):
        if len(in_shape) != 3:
            raise ValueError(f"MaxPool2d expects inputs of shape (N, C, H, W), "
                             f"got (N, {', '.join(map(str, in_shape))}).")
        c, h, w = in_shape
        top, bottom, left, right = self.pad(h, w)
        return (c, kernels.reference.output_size(h, self.size, self.stride, top, bottom),
                kernels.reference.output_size(w, self.size, self.stride, left, right))

    def forward(self, params, x):
        """x: (N, C, H, W) -> y: (N, C, OH, OW), the maximum of each window."""
        pad = self.pad(x.shape[2], x.shape[3])
        y, argmax = kernels.maxpool2d_forward(x, self.size, self.stride, pad)
        return y, (argmax, x.shape, pad)

    def backward(self, params, cache, dy, input_grad=True):
        """dx: each window's dy goes to the input cell that won it (the first maximum on ties)."""
        argmax, x_shape, pad = cache
        return kernels.maxpool2d_backward(dy, argmax, x_shape, self.size, self.stride, pad), ()

    def __repr__(self):
        return f"MaxPool2d({self.size}, stride={self.stride}, padding={self.padding!r})"


class Flatten(Layer):
    """(N, C, H, W) -> (N, C*H*W) in C, H, W order, as ``torch.nn.Flatten``."""

    def output_shape(self, in_shape):
        return (int(np.prod(in_shape)),)

    def forward(self, params, x):
        """Reshape to (N, features); the cache is the input shape."""
        return x.reshape(x.shape[0], -1), x.shape

    def backward(self, params, cache, dy, input_grad=True):
        """dx = dy reshaped back to the input shape."""
        return dy.reshape(cache), ()
