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
  without the batch axis);
* Pearlmutter's R-operator beside them, for exact Hessian-vector products: with
  ``R{q}`` the directional derivative of a quantity q along a parameter direction v,
  ``layer.forward_r(params, r_params, x, r_x) -> (y, r_y, cache)`` and
  ``layer.backward_r(params, r_params, cache, dy, r_dy, input_grad=True) ->
  (dx, r_dx, dparams, r_dparams)``; ``r_params`` is v's slice for the layer, and
  ``r_x = None`` stands for R{x} = 0 (the data batch does not move with v);
* ``layer.switch_pattern(cache)`` -- ReLU's mask, max-pool's winners: what the exact
  derivatives hold fixed (None for layers without switches).

Layers own no weights; a model maps its flat parameter vector onto these tuples.
The dtype of ``x`` and ``params`` is the dtype of the work. docs/derivations.md derives
each backward pass and R-operator below step by step and names the tests that check it.
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

    def switch_pattern(self, cache):
        """What the layer's derivative switches on, from a forward cache; None: no switches."""
        return None

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


class PiecewiseLinear(Layer):
    """A parameter-free layer that is linear in x for a fixed switch pattern (ReLU,
    max-pool, Flatten): its backward pass is dx = J^T dy with J the Jacobian of that
    pattern, so its second derivative is zero almost everywhere."""

    def backward_r(self, params, r_params, cache, dy, r_dy, input_grad=True):
        """dx = J^T dy with J fixed by the forward pass's pattern, so R{dx} = J^T R{dy}:
        the same backward pass applied to r_dy (shapes of dy)."""
        return self.backward(params, cache, dy)[0], self.backward(params, cache, r_dy)[0], (), ()


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

    def forward_r(self, params, r_params, x, r_x):
        """y = x W^T + b is bilinear in (x, W): R{y} = R{x} W^T + x R{W}^T + R{b} (N, out);
        the cache keeps x and R{x} for `backward_r`."""
        w, _ = params
        r_w, r_b = r_params
        y, x = self.forward(params, x)
        r_y = x @ r_w.T + r_b
        if r_x is not None:
            r_y += r_x @ w.T
        return y, r_y, (x, r_x)

    def backward_r(self, params, r_params, cache, dy, r_dy, input_grad=True):
        """Product rule on each bilinear formula of `backward`:
        R{dx} = R{dy} W + dy R{W} (N, in); R{dW} = R{dy}^T x + dy^T R{x} (out, in);
        R{db} = sum_n R{dy} (out,)."""
        w, _ = params
        r_w, _ = r_params
        x, r_x = cache
        dx, dparams = self.backward(params, x, dy, input_grad)
        r_dw = r_dy.T @ x
        if r_x is not None:
            r_dw += dy.T @ r_x
        r_dx = r_dy @ w + dy @ r_w if input_grad else None
        return dx, r_dx, dparams, (r_dw, r_dy.sum(axis=0))

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
    odd padding cell at the bottom/right (paper notes §2: 28 -> 14 pads (0, 1)).
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

    def forward_r(self, params, r_params, x, r_x):
        """y = conv(x, W) + b is bilinear in (x, W), as Linear:
        R{y} = conv(R{x}, W) + conv(x, R{W}) + R{b} (N, O, OH, OW), by the same kernels.
        The cache adds what `kernels.conv2d_backward` needs of R{x} (None when R{x} = 0)."""
        w, _ = params
        r_w, r_b = r_params
        y, cache = self.forward(params, x)
        _, pad, _ = cache
        r_y = kernels.conv2d_forward(x, r_w, self.stride, pad)
        r_y += r_b[None, :, None, None]
        r_saved = None
        if r_x is not None:
            r_part, r_saved = kernels.conv2d_forward_saving(r_x, w, self.stride, pad)
            r_y += r_part
        return y, r_y, (cache, r_saved)

    def backward_r(self, params, r_params, cache, dy, r_dy, input_grad=True):
        """dx = conv_input_grad(dy, W) and dW = conv_weight_grad(dy, x) are bilinear:
        R{dx} = conv_input_grad(R{dy}, W) + conv_input_grad(dy, R{W}) (N, C, H, W);
        R{dW} = conv_weight_grad(R{dy}, x) + conv_weight_grad(dy, R{x}) (O, C, KH, KW);
        R{db} = sum_{n,h,w} R{dy} (O,)."""
        w, _ = params
        r_w, _ = r_params
        cache, r_saved = cache
        x_shape, pad, saved = cache
        dx, dparams = self.backward(params, cache, dy, input_grad)
        # The forward pass's saved x serves R{dy} as it served dy.
        r_dx, r_dw = kernels.conv2d_backward(r_dy, w, saved, x_shape, self.stride, pad, input_grad)
        if input_grad:
            r_dx += kernels.conv2d_backward_input(dy, r_w, x_shape, self.stride, pad)
        if r_saved is not None:
            r_dw += kernels.conv2d_backward(dy, w, r_saved, x_shape, self.stride, pad,
                                            input_grad=False)[1]
        return dx, r_dx, dparams, (r_dw, np.einsum("nohw->o", r_dy))

    def __repr__(self):
        return (f"Conv2d({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding!r})")


def _channel_count(x):
    """M = N*H*W, the number of values a BatchNorm2d channel normalises over."""
    return x.shape[0] * x.shape[2] * x.shape[3]


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

    def forward_r(self, params, r_params, x, r_x):
        """R{y} = R{gamma} x_hat + gamma R{x_hat} + R{beta}, with s = inv_std and means
        over a channel's M values: R{s} = -s^2 mean(x_hat R{x}) (from R{var} =
        2 mean((x - mean) R{x})), so R{x_hat} = s (R{x} - mean(R{x}) - x_hat mean(x_hat R{x})):
        the backward pass's formula with gamma = 1 (x -> x_hat has a symmetric Jacobian).
        The cache adds R{x_hat} (N, C, H, W) and R{s} (C,), None when R{x} = 0."""
        gamma, _ = params
        r_gamma, r_beta = r_params
        y, cache = self.forward(params, x)
        x_hat, inv_std = cache
        r_y = x_hat * r_gamma[None, :, None, None]
        r_y += r_beta[None, :, None, None]
        r_x_hat = r_inv_std = None
        if r_x is not None:
            r_x_hat, x_hat_dot_r_x, _ = kernels.batchnorm2d_backward(r_x, x_hat, inv_std,
                                                                     np.ones_like(gamma))
            r_inv_std = -inv_std * inv_std * x_hat_dot_r_x / _channel_count(x)
            r_y += gamma[None, :, None, None] * r_x_hat
        return y, r_y, (cache, r_x_hat, r_inv_std)

    def backward_r(self, params, r_params, cache, dy, r_dy, input_grad=True):
        """dx = gamma s u with u = dy - mean(dy) - x_hat mean(dy x_hat) (means per channel):
        R{dx} = (R{gamma} s + gamma R{s}) u + gamma s R{u}, where R{u} = [R{dy} - mean(R{dy})
        - x_hat mean(R{dy} x_hat)] - R{x_hat} mean(dy x_hat) - x_hat mean(dy R{x_hat});
        R{dgamma} = sum R{dy} x_hat + sum dy R{x_hat}; R{dbeta} = sum R{dy} (C,).
        The bracketed part is the backward pass itself applied to R{dy}."""
        gamma, _ = params
        r_gamma, _ = r_params
        cache, r_x_hat, r_inv_std = cache
        x_hat, inv_std = cache
        dx, (dgamma, dbeta) = self.backward(params, cache, dy)
        r_dx, r_dgamma, r_dbeta = kernels.batchnorm2d_backward(r_dy, x_hat, inv_std, gamma)
        count = _channel_count(dy)
        u = (dy - (dbeta / count)[None, :, None, None]
             - x_hat * (dgamma / count)[None, :, None, None])
        scale_r = r_gamma * inv_std
        if r_x_hat is not None:
            dy_dot_r_x_hat = np.einsum("nchw,nchw->c", dy, r_x_hat)
            r_dgamma += dy_dot_r_x_hat
            scale_r = scale_r + gamma * r_inv_std
            r_dx -= (gamma * inv_std)[None, :, None, None] * (
                r_x_hat * (dgamma / count)[None, :, None, None]
                + x_hat * (dy_dot_r_x_hat / count)[None, :, None, None])
        r_dx += scale_r[None, :, None, None] * u
        return dx, r_dx, (dgamma, dbeta), (r_dgamma, r_dbeta)

    def __repr__(self):
        return f"BatchNorm2d({self.num_features}, eps={self.eps})"


class ReLU(PiecewiseLinear):
    """max(x, 0) elementwise."""

    def forward(self, params, x):
        """y = max(x, 0); the cache is y (y > 0 exactly where x > 0)."""
        y = kernels.relu_forward(x)
        return y, y

    def backward(self, params, cache, dy, input_grad=True):
        """dx = dy where x > 0, else 0 (the subgradient 0 at x = 0, as PyTorch)."""
        return kernels.relu_backward(dy, cache), ()

    def forward_r(self, params, r_params, x, r_x):
        """With the mask x > 0 held fixed, y = mask * x, so R{y} = mask * R{x}: the backward
        pass applied to R{x} (None when R{x} = 0)."""
        y, cache = self.forward(params, x)
        return y, (None if r_x is None else self.backward(params, cache, r_x)[0]), cache

    def switch_pattern(self, cache):
        """The mask x > 0 (bool, shape of x)."""
        return cache > 0


class Tanh(Layer):
    """tanh(x) elementwise."""

    def forward(self, params, x):
        """y = tanh(x); the cache is y."""
        y = np.tanh(x)
        return y, y

    def backward(self, params, cache, dy, input_grad=True):
        """dx = dy * (1 - y^2)."""
        return dy * (1 - cache * cache), ()

    def forward_r(self, params, r_params, x, r_x):
        """R{y} = (1 - y^2) R{x}, shape of x; the cache is (y, R{y}), R{y} None when R{x} = 0."""
        y, _ = self.forward(params, x)
        r_y = None if r_x is None else self.backward(params, y, r_x)[0]
        return y, r_y, (y, r_y)

    def backward_r(self, params, r_params, cache, dy, r_dy, input_grad=True):
        """dx = dy (1 - y^2), so R{dx} = R{dy} (1 - y^2) - 2 y R{y} dy (shape of x)."""
        y, r_y = cache
        dx = self.backward(params, y, dy)[0]
        r_dx = self.backward(params, y, r_dy)[0]
        if r_y is not None:
            r_dx -= 2 * y * r_y * dy
        return dx, r_dx, (), ()


class MaxPool2d(PiecewiseLinear):
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

    def forward_r(self, params, r_params, x, r_x):
        """With each window's winner held fixed, y is x at the winners, so R{y} (N, C, OH, OW)
        is R{x} at the same winners (None when R{x} = 0); padded cells never win."""
        y, cache = self.forward(params, x)
        if r_x is None:
            return y, None, cache
        argmax, _, (top, bottom, left, right) = cache
        padded = np.pad(r_x, ((0, 0), (0, 0), (top, bottom), (left, right)))
        # (N, C, OH, OW, size, size): window (p, q) starts at (p * stride, q * stride).
        windows = np.lib.stride_tricks.sliding_window_view(padded, (self.size, self.size),
                                                           axis=(2, 3))
        windows = windows[:, :, ::self.stride, ::self.stride].reshape(y.shape + (-1,))
        r_y = np.take_along_axis(windows, argmax[..., None].astype(np.intp), axis=-1)[..., 0]
        return y, r_y, cache

    def switch_pattern(self, cache):
        """The winning tap of every window (int8, shape of the output)."""
        return cache[0]

    def __repr__(self):
        return f"MaxPool2d({self.size}, stride={self.stride}, padding={self.padding!r})"


class Flatten(PiecewiseLinear):
    """(N, C, H, W) -> (N, C*H*W) in C, H, W order, as ``torch.nn.Flatten``."""

    def output_shape(self, in_shape):
        return (int(np.prod(in_shape)),)

    def forward(self, params, x):
        """Reshape to (N, features); the cache is the input shape."""
        return x.reshape(x.shape[0], -1), x.shape

    def backward(self, params, cache, dy, input_grad=True):
        """dx = dy reshaped back to the input shape."""
        return dy.reshape(cache), ()

    def forward_r(self, params, r_params, x, r_x):
        """R{y} is R{x} reshaped the same way (None when R{x} = 0)."""
        y, cache = self.forward(params, x)
        return y, (None if r_x is None else r_x.reshape(y.shape)), cache
