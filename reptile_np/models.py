"""The paper's networks as `Sequential` models over one flat parameter vector.

    model = omniglot_cnn(num_classes=5)
    theta = model.init(np.random.default_rng(0))          # flat float32 vector
    loss, grad = model.loss_and_grad(theta, x, y)         # grad has theta's layout

Parameter names are those of the equivalent ``torch.nn.Sequential`` (``"0.weight"``,
``"1.bias"``, ...), so ``model.state_dict(theta)`` loads into the PyTorch twin built
by `reptile_np.interop.torch_module` with ``strict=True``.
"""
from typing import NamedTuple

import numpy as np

from . import checks, losses
from .layers import BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU, Tanh
from .params import ParameterLayout

LOSSES = {"cross_entropy": losses.softmax_cross_entropy, "mse": losses.mean_squared_error}
# Each loss's R-operator: R{dout} along a direction of the output (for Hessian-vector products).
LOSS_R_OPS = {"cross_entropy": losses.softmax_cross_entropy_r, "mse": losses.mean_squared_error_r}


class MLPStructure(NamedTuple):
    """A model seen as a multilayer perceptron, what `kernels.mlp_sgd_inner_loop` needs."""
    widths: tuple       # layer widths, input first: (1, 64, 64, 1) for the sine MLP
    activation: str     # "tanh" or "relu", between consecutive Linear layers


def _as_mlp(layers, loss):
    """`MLPStructure` of Linear -> act -> Linear -> ... -> Linear (one activation class,
    Tanh or ReLU, at least one hidden layer) with loss "mse"; None for anything else."""
    activations = {Tanh: "tanh", ReLU: "relu"}
    linears, between = layers[::2], layers[1::2]
    if (loss != "mse" or len(layers) < 3 or len(layers) % 2 == 0
            or any(type(layer) is not Linear for layer in linears)
            or len({type(layer) for layer in between}) != 1
            or type(between[0]) not in activations):
        return None
    widths = (linears[0].in_features,) + tuple(layer.out_features for layer in linears)
    return MLPStructure(widths, activations[type(between[0])])


class Sequential:
    """A chain of layers whose parameters live in one flat vector ``theta``.

    Args:
        layers: the layers, applied in order.
        input_shape: shape of one input example, e.g. (1, 28, 28) or (1,).
        loss: "cross_entropy" (integer labels) or "mse" (targets shaped like the output).
    """

    def __init__(self, layers, input_shape, loss="cross_entropy"):
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}.")
        self.layers = list(layers)
        self.input_shape = tuple(input_shape)
        self.loss_name = loss
        shape = self.input_shape
        for layer in self.layers:
            shape = layer.output_shape(shape)
        self.output_shape = shape
        self.layout = ParameterLayout([(f"{index}.{name}", param_shape)
                                       for index, layer in enumerate(self.layers)
                                       for name, param_shape in layer.param_shapes.items()])
        # Each layer's tensors as (start, stop, shape) in the flat vector, in layout order.
        spans = iter(zip(self.layout.offsets[:-1], self.layout.offsets[1:], self.layout.shapes))
        self._spans = [[next(spans) for _ in layer.param_shapes] for layer in self.layers]
        self._mlp = _as_mlp(self.layers, loss)

    @property
    def num_params(self):
        """Length of the flat parameter vector."""
        return self.layout.size

    def mlp_structure(self):
        """The `MLPStructure` when the model is a multilayer perceptron with squared error
        (e.g. `sine_mlp`), which `reptile_np.fused.mlp_sgd_inner_loop` can run; None
        otherwise."""
        return self._mlp

    def __repr__(self):
        body = "".join(f"\n  ({i}): {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential(input_shape={self.input_shape}, loss={self.loss_name!r}):{body}\n"

    def init(self, rng, dtype=np.float32):
        """A fresh flat parameter vector drawn with ``rng``.

        Args:
            rng: the `numpy.random.Generator` to draw the weights with.
            dtype: float32 (to train) or float64 (to check gradients).

        Raises:
            ValueError: naming ``rng`` or ``dtype`` when it is not one of those.
        """
        checks.generator("rng", rng)
        dtype = checks.float_dtype("dtype", dtype)
        tensors = [t for layer in self.layers for t in layer.init(rng, dtype)]
        return np.concatenate([np.ravel(t) for t in tensors]).astype(dtype)

    def state_dict(self, theta):
        """``{name: array}`` with PyTorch names and layouts (copies)."""
        return self.layout.state_dict(theta)

    def load_state_dict(self, state_dict, dtype=None):
        """Flat vector from ``{name: array}``; checks names, shapes and dtypes.

        Without ``dtype`` every tensor must have the same dtype, float32 or float64, which
        the result keeps; give ``dtype`` to convert tensors of mixed or other dtypes. See
        `params.ParameterLayout.flatten`.
        """
        return self.layout.flatten(state_dict, dtype)

    def layer_params(self, theta):
        """The per-layer parameter views of ``theta``, in the layers' order.

        Args:
            theta: a flat parameter vector of this model's layout.

        Returns:
            A list with one entry per layer: a tuple of that layer's tensors (in the
            order of ``layer.param_shapes``; empty for a layer without parameters),
            each a view into ``theta``, so writing to a view writes to ``theta``.

        Raises:
            ValueError: ``theta`` is not a float32/float64 vector of `num_params` entries.
        """
        self.layout.check(theta)
        return [tuple([theta[start:stop].reshape(shape) for start, stop, shape in spans])
                for spans in self._spans]

    def check_batch(self, theta, x, y):
        """``(x, y)`` as the model computes with them (in theta's dtype; labels as given),
        after checking theta, the shape of x and the targets.

        Raises:
            ValueError: naming ``theta``, ``x`` or ``y``.
        """
        x = self._check_x(theta, x)
        return x, self._check_y(theta, x, y)

    def _check_x(self, theta, x):
        self.layout.check(theta)
        x = np.asarray(x)
        if x.ndim != len(self.input_shape) + 1 or x.shape[1:] != self.input_shape or x.shape[0] == 0:
            raise ValueError(f"x must have shape (N, {', '.join(map(str, self.input_shape))}) "
                             f"with N >= 1, got {x.shape}.")
        return x.astype(theta.dtype, copy=False)

    def _check_y(self, theta, x, y):
        y = np.asarray(y)
        if self.loss_name == "cross_entropy":
            classes = self.output_shape[0]
            if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
                raise ValueError(f"y must be {x.shape[0]} integer labels, got shape {y.shape} "
                                 f"of dtype {y.dtype}.")
            if y.min() < 0 or y.max() >= classes:
                raise ValueError(f"y must hold labels in [0, {classes}), got values from "
                                 f"{y.min()} to {y.max()}.")
            return y
        if y.shape != (x.shape[0],) + self.output_shape:
            raise ValueError(f"y must have shape {(x.shape[0],) + self.output_shape}, got {y.shape}.")
        return y.astype(theta.dtype, copy=False)

    def forward(self, theta, x):
        """Network output (logits or regression values) for a batch ``x`` of shape (N, *input_shape)."""
        out = self._check_x(theta, x)
        for layer, params in zip(self.layers, self.layer_params(theta)):
            out, _ = layer.forward(params, out)
        return out

    def predict(self, theta, x):
        """Predicted class of each example (argmax of the logits)."""
        return np.argmax(self.forward(theta, x), axis=1)

    def loss(self, theta, x, y, reduction="sum"):
        """The loss alone (forward pass only)."""
        out = self.forward(theta, x)
        return LOSSES[self.loss_name](out, self._check_y(theta, out, y), reduction)[0]

    def loss_and_grad(self, theta, x, y, reduction="sum"):
        """Loss and its gradient with respect to ``theta``, a flat vector of theta's layout.

        The forward pass keeps each layer's cache; the backward pass walks the layers
        in reverse and writes each layer's parameter gradients into its slice of ``grad``
        (the first layer skips its input gradient).
        """
        out = self._check_x(theta, x)
        y = self._check_y(theta, out, y)
        layer_params = self.layer_params(theta)
        caches = []
        for layer, params in zip(self.layers, layer_params):
            out, cache = layer.forward(params, out)
            caches.append(cache)
        loss, dout = LOSSES[self.loss_name](out, y, reduction)
        grad = np.empty_like(theta)
        for index in reversed(range(len(self.layers))):
            # Nothing needs the gradient with respect to the input batch itself.
            dout, dparams = self.layers[index].backward(layer_params[index], caches[index], dout,
                                                        input_grad=index > 0)
            self._write_layer(grad, index, dparams)
        return loss, grad

    def _write_layer(self, flat, index, tensors):
        """Copy layer ``index``'s tensors into their slices of the flat vector ``flat``."""
        for (start, stop, shape), value in zip(self._spans[index], tensors):
            flat[start:stop].reshape(shape)[...] = value   # one copy, from any layout

    def hessian_vector_product(self, theta, x, y, vector, reduction="sum"):
        """H v: the Hessian of the loss on (x, y) at ``theta`` times ``vector``, exactly.

        Pearlmutter's R-operator (R{q} = d/dt q(theta + t v) at t = 0): each layer's
        `forward_r` carries R{activations} forward beside the forward pass, the loss's
        R-operator turns R{output} into R{dout}, and each layer's `backward_r` carries
        R{gradients} back beside the backward pass; R{dL/dtheta} = H v. One pass costs
        about three gradients, with no step size to choose.

        What "exact" means: up to rounding, the Hessian wherever the loss is twice
        differentiable at ``theta`` -- everywhere for Tanh networks (the sine MLP) and
        batch-statistics BatchNorm; for ReLU and max-pool (the Omniglot and
        Mini-ImageNet CNNs) the Hessian with ``theta``'s switch pattern (`switch_pattern`)
        held fixed, which is the true Hessian except where a ReLU input or a pool tie sits
        exactly on a switch, and is what PyTorch's double backward computes.

        Args:
            theta: flat parameters. x, y: a batch, as `loss_and_grad`.
            vector: a flat direction of theta's layout (cast to theta's dtype).
            reduction: "sum" or "mean", as `loss_and_grad`.

        Returns:
            H v, a flat vector of theta's layout and dtype.
        """
        out = self._check_x(theta, x)
        y = self._check_y(theta, out, y)
        self.layout.check(vector, "vector")
        layer_params = self.layer_params(theta)
        layer_directions = self.layer_params(vector.astype(theta.dtype, copy=False))
        r_out, caches = None, []   # R{x} = 0: the batch does not move with theta
        for layer, params, r_params in zip(self.layers, layer_params, layer_directions):
            out, r_out, cache = layer.forward_r(params, r_params, out, r_out)
            caches.append(cache)
        if r_out is None:          # a model without parameters
            r_out = np.zeros_like(out)
        _, dout = LOSSES[self.loss_name](out, y, reduction)
        r_dout = LOSS_R_OPS[self.loss_name](out, y, r_out, reduction)
        hvp = np.empty_like(theta)
        for index in reversed(range(len(self.layers))):
            dout, r_dout, _, r_dparams = self.layers[index].backward_r(
                layer_params[index], layer_directions[index], caches[index], dout, r_dout,
                input_grad=index > 0)
            self._write_layer(hvp, index, r_dparams)
        return hvp

    def switch_pattern(self, theta, x):
        """Where the network's derivatives switch, at ``theta`` on the batch ``x``.

        Returns:
            ``{layer index: pattern}`` for the ReLU (mask x > 0) and MaxPool2d (winning
            tap of every window) layers, each as the layer's `switch_pattern`. Two
            parameter vectors with equal patterns lie on one smooth piece of the loss
            when the segment between them stays on it.
        """
        out = self._check_x(theta, x)
        patterns = {}
        for index, (layer, params) in enumerate(zip(self.layers, self.layer_params(theta))):
            out, cache = layer.forward(params, out)
            pattern = layer.switch_pattern(cache)
            if pattern is not None:
                patterns[index] = pattern
        return patterns


def omniglot_cnn(num_classes=5, eps=1e-3):
    """The paper's Omniglot network: 4 x [conv 3x3, 64, stride 2, TF "same" -> BN -> ReLU]
    -> flatten (64 x 2 x 2 = 256) -> linear. Input (N, 1, 28, 28); 113,221 parameters for 5 classes.

    Raises:
        ValueError: naming ``num_classes`` (an integer >= 1) or ``eps`` (positive).
    """
    _check_classifier_arguments(num_classes, eps)
    layers, channels = [], 1
    for _ in range(4):
        layers += [Conv2d(channels, 64, 3, stride=2, padding="same"), BatchNorm2d(64, eps), ReLU()]
        channels = 64
    layers += [Flatten(), Linear(256, num_classes)]
    return Sequential(layers, input_shape=(1, 28, 28))


def miniimagenet_cnn(num_classes=5, eps=1e-3):
    """The paper's Mini-ImageNet network: 4 x [conv 3x3, 32, "same" -> BN -> max-pool 2x2
    TF "same" -> ReLU] (84 -> 42 -> 21 -> 11 -> 6) -> flatten (32 x 6 x 6 = 1152) -> linear.
    Input (N, 3, 84, 84); 34,661 parameters for 5 classes.

    Raises:
        ValueError: naming ``num_classes`` (an integer >= 1) or ``eps`` (positive).
    """
    _check_classifier_arguments(num_classes, eps)
    layers, channels = [], 3
    for _ in range(4):
        layers += [Conv2d(channels, 32, 3, stride=1, padding="same"), BatchNorm2d(32, eps),
                   MaxPool2d(2, 2, padding="same"), ReLU()]
        channels = 32
    layers += [Flatten(), Linear(1152, num_classes)]
    return Sequential(layers, input_shape=(3, 84, 84))


def sine_mlp(hidden=(64, 64), activation="tanh", init="torch"):
    """The sine-wave regression MLP 1 -> 64 -> 64 -> 1 (4,353 parameters), mean squared error.

    The defaults are the OpenAI blog demo's: tanh, PyTorch's default initialisation
    (U(+-1/sqrt(fan_in)) for weights and biases); ``activation="relu"`` is the paper's
    Figure 1 variant.

    Raises:
        ValueError: naming ``hidden`` (a sequence of integers >= 1) or ``activation``.
    """
    activations = {"tanh": Tanh, "relu": ReLU}
    if activation not in activations:
        raise ValueError(f"activation must be 'tanh' or 'relu', got {activation!r}.")
    if not isinstance(hidden, (tuple, list)):
        raise ValueError(f"hidden: expected a tuple of layer widths, "
                         f"got {checks.describe(hidden)}.")
    for index, size in enumerate(hidden):
        checks.integer(f"hidden[{index}]", size)
    layers, width = [], 1
    for size in hidden:
        layers += [Linear(width, size, init=init), activations[activation]()]
        width = size
    layers.append(Linear(width, 1, init=init))
    return Sequential(layers, input_shape=(1,), loss="mse")


def _check_classifier_arguments(num_classes, eps):
    checks.integer("num_classes", num_classes)
    checks.number("eps", eps, positive=True)


MODELS = {"omniglot": omniglot_cnn, "miniimagenet": miniimagenet_cnn, "sine": sine_mlp}
