"""What every port of the conformance protocol shares whatever its framework, in NumPy.

The index streams are NumPy's by definition (docs/conformance.md: the suite's batches are
``numpy.random.default_rng(seed)``'s), and the rest is shape arithmetic. Both
`torch_adapter` and `jax_adapter` use these; neither imports reptile_np.
"""
import numpy as np


def same_padding(size, kernel, stride):
    """TF "same" along one axis: (before, after) for ceil(size / stride) outputs, the
    odd cell after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def conv_padding(layer, height, width):
    """(top, bottom, left, right) of a conv2d spec for an input of this size."""
    padding, k, s = layer["padding"], layer["kernel_size"], layer["stride"]
    if padding == "same":
        return same_padding(height, k, s) + same_padding(width, k, s)
    if isinstance(padding, int):
        return (padding,) * 4
    return tuple(padding)


def pool_padding(layer, height, width):
    """(top, bottom, left, right) of a maxpool2d spec: "same" pads with -inf, "valid" not."""
    if layer["padding"] == "valid":
        return (0, 0, 0, 0)
    return (same_padding(height, layer["size"], layer["stride"])
            + same_padding(width, layer["size"], layer["stride"]))


def param_shapes(layer):
    """{"weight": shape, "bias": shape} of a layer spec, PyTorch layouts ({} without)."""
    kind = layer["type"]
    if kind == "conv2d":
        k = layer["kernel_size"]
        return {"weight": (layer["out_channels"], layer["in_channels"], k, k),
                "bias": (layer["out_channels"],)}
    if kind == "batchnorm2d":
        return {"weight": (layer["num_features"],), "bias": (layer["num_features"],)}
    if kind == "linear":
        return {"weight": (layer["out_features"], layer["in_features"]),
                "bias": (layer["out_features"],)}
    return {}


def unflatten(network, theta):
    """{state_dict name: tensor} of a flat parameter vector (any array type that slices
    and reshapes), in the layers' order, weight before bias."""
    named, offset = {}, 0
    for index, layer in enumerate(network["layers"]):
        for name, shape in param_shapes(layer).items():
            size = int(np.prod(shape))
            named[f"{index}.{name}"] = theta[offset:offset + size].reshape(shape)
            offset += size
    return named


def layer_params(named, index, layer):
    """Layer ``index``'s {"weight": ..., "bias": ...} out of the network's named tensors."""
    return {name: named[f"{index}.{name}"] for name in param_shapes(layer)}


def draw_batches(num_samples, batch_size, num_batches, rng, replacement):
    """The documented index stream: without replacement, enough permutations of
    0..num_samples-1 concatenated and cut into consecutive batches (so a batch can
    straddle two passes); with replacement, rng.choice(num_samples, batch_size,
    replace=False) for every batch."""
    if replacement:
        return [rng.choice(num_samples, batch_size, replace=False) for _ in range(num_batches)]
    passes = -(-batch_size * num_batches // num_samples)
    if passes == 0:
        return []
    order = np.concatenate([rng.permutation(num_samples) for _ in range(passes)])
    return list(order[:batch_size * num_batches].reshape(num_batches, batch_size))


def split_queries(labels, num_classes):
    """(support indices, query indices): the query of each label is its first example, in
    label order; the support set is the rest in the original order."""
    labels = np.asarray(labels)
    queries = [int(np.flatnonzero(labels == label)[0]) for label in range(num_classes)]
    return [i for i in range(len(labels)) if i not in queries], queries


class Optimizer:
    """SGD, or TF-form Adam whose state (m, v, t) starts from the given one (zeros if None),
    on the arrays of any framework whose arithmetic is NumPy-like: ``as_array`` turns a
    NumPy array into one (``torch.as_tensor``, ``jax.numpy.asarray``)."""

    def __init__(self, settings, state, like, as_array):
        self.settings = settings
        if settings["name"] == "adam":
            if state is None:
                self.m, self.v, self.t = like * 0, like * 0, 0
            else:
                self.m, self.v, self.t = as_array(state["m"]), as_array(state["v"]), int(state["t"])

    def step(self, params, grad):
        """The parameters after one step (a new array); the state advances."""
        s = self.settings
        if s["name"] == "sgd":
            return params - s["lr"] * grad
        self.t += 1
        self.m = s["beta1"] * self.m + (1 - s["beta1"]) * grad
        self.v = s["beta2"] * self.v + (1 - s["beta2"]) * grad * grad
        step_size = s["lr"] * (1 - s["beta2"] ** self.t) ** 0.5 / (1 - s["beta1"] ** self.t)
        return params - step_size * self.m / (self.v ** 0.5 + s["eps"])

    def state(self):
        """{"m", "v", "t"} as NumPy values ({} for SGD)."""
        if self.settings["name"] == "sgd":
            return {}
        return {"m": np.asarray(self.m), "v": np.asarray(self.v), "t": np.int64(self.t)}

    def outputs(self):
        """The protocol's ``optimizer_state`` output (none for SGD)."""
        state = self.state()
        return {"optimizer_state": state} if state else {}


class NumpyParts:
    """The protocol's callables that need no framework."""

    def minibatch_schedule(self, num_samples, batch_size, num_batches, seed, replacement):
        rng = np.random.default_rng(seed)
        return {"batches": np.array(draw_batches(num_samples, batch_size, num_batches, rng,
                                                 replacement))}

    def tail_schedule(self, labels, batch_size, num_batches, seed, replacement, tail_shots):
        rng = np.random.default_rng(seed)
        tail = np.concatenate([np.flatnonzero(labels == label)[:tail_shots]
                               for label in np.unique(labels)])
        rest = np.setdiff1d(np.arange(len(labels)), tail)
        head = draw_batches(len(rest), batch_size, num_batches - 1, rng, replacement)
        return {"batches": np.array([rest[batch] for batch in head]), "tail": tail}

    def epsilon_schedule(self, meta_iters, initial, final):
        fractions = np.arange(meta_iters) / meta_iters
        return {"epsilon": fractions * final + (1 - fractions) * initial}
