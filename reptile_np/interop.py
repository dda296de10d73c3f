"""Cross-checking with PyTorch: the same network, the same weights, the same numbers.

`torch_module` builds a ``torch.nn.Sequential`` twin of one of our `Sequential`
models, module for module, so that our ``state_dict`` loads into it with
``strict=True`` (identical names, identical PyTorch layouts)::

    module = torch_twin(model, theta)                     # twin with our weights loaded
    loss, grads = torch_loss_and_grad(module, x, y)       # PyTorch autograd
    rows = compare_with_torch(model, theta, x, y)         # ours vs theirs, tensor by tensor
    print(report(rows))

How our conventions map onto PyTorch modules:

* ``Conv2d`` with an int padding -> ``nn.Conv2d(padding=p)``. With a
  (top, bottom, left, right) tuple or TensorFlow ``"same"`` padding -> a
  ``nn.Conv2d(padding=0)`` subclass that first applies ``F.pad`` (``"same"`` is
  resolved from the input size by `reptile_np.layers.same_padding`: the odd cell
  goes to the bottom/right, which ``nn.Conv2d(padding=1)`` cannot express).
* ``BatchNorm2d`` -> ``nn.BatchNorm2d(eps=ours, track_running_stats=False)``:
  batch statistics in train and eval mode alike, and no buffers in the
  ``state_dict``.
* ``MaxPool2d`` "valid" -> ``nn.MaxPool2d(size, stride)``; "same" with a 2x2
  window and stride 2 -> ``nn.MaxPool2d(2, 2, ceil_mode=True)`` (TF pads at most
  one cell, at the bottom/right, and ceil mode's partial last window is exactly
  that); other "same" pools -> an explicit ``-inf`` ``F.pad`` before the pool.
* ``ReLU``, ``Tanh``, ``Flatten``, ``Linear`` -> their ``nn`` namesakes.

Errors are measured with `reptile_np.gradcheck.rel_error`, except for tensors
whose exact gradient is zero (conv biases before BatchNorm), where both sides
are rounding noise: there the absolute difference is reported, and it must stay
below the threshold times the model's largest gradient entry (a real gradient
of such a bias would be of the order of that entry).

torch is imported inside the functions only; the rest of reptile-np never needs it.
"""
from typing import NamedTuple

import numpy as np

from .gradcheck import rel_error, zero_gradient_tensors
from .layers import BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU, Tanh, same_padding

TORCH_MISSING = "Cross-checking with PyTorch needs torch: pip install 'reptile-np[torch]'"
# float64 agreement expected of two correct implementations that sum in different orders.
PARITY_THRESHOLD = 1e-10

_classes = {}


def _torch():
    try:
        import torch
    except ImportError as error:
        raise ImportError(TORCH_MISSING) from error
    return torch


def _padded_classes():
    """The two small ``nn`` subclasses, defined on first use so torch stays optional."""
    if _classes:
        return _classes["conv"], _classes["pool"]
    torch = _torch()
    functional = torch.nn.functional

    def resolve(padding, x, kernel, stride):
        # (top, bottom, left, right), with "same" resolved from this input's size.
        if padding == "same":
            return (same_padding(x.shape[2], kernel, stride)
                    + same_padding(x.shape[3], kernel, stride))
        return tuple(padding)

    class PaddedConv2d(torch.nn.Conv2d):
        """``nn.Conv2d(padding=0)`` after an explicit, possibly asymmetric, zero pad."""

        def __init__(self, in_channels, out_channels, kernel_size, stride, padding):
            super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0)
            self.explicit_padding = padding  # "same" or (top, bottom, left, right)

        def forward(self, x):
            top, bottom, left, right = resolve(self.explicit_padding, x, self.kernel_size[0],
                                               self.stride[0])
            return super().forward(functional.pad(x, (left, right, top, bottom)))

        def extra_repr(self):
            return super().extra_repr() + f", explicit_padding={self.explicit_padding!r}"

    class PaddedMaxPool2d(torch.nn.MaxPool2d):
        """``nn.MaxPool2d`` after padding with -inf, so padded cells never win."""

        def __init__(self, kernel_size, stride, padding):
            super().__init__(kernel_size, stride)
            self.explicit_padding = padding

        def forward(self, x):
            top, bottom, left, right = resolve(self.explicit_padding, x, self.kernel_size,
                                               self.stride)
            return super().forward(functional.pad(x, (left, right, top, bottom),
                                                  value=float("-inf")))

        def extra_repr(self):
            return super().extra_repr() + f", explicit_padding={self.explicit_padding!r}"

    _classes.update(conv=PaddedConv2d, pool=PaddedMaxPool2d)
    return PaddedConv2d, PaddedMaxPool2d


def _torch_dtype(dtype):
    torch = _torch()
    dtypes = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}
    if np.dtype(dtype) not in dtypes:
        raise ValueError(f"dtype must be float32 or float64, got {np.dtype(dtype)}.")
    return dtypes[np.dtype(dtype)]


def _twin_layer(layer):
    """The ``nn`` module computing what ``layer`` computes."""
    nn = _torch().nn
    padded_conv, padded_pool = _padded_classes()
    if isinstance(layer, Conv2d):
        args = (layer.in_channels, layer.out_channels, layer.kernel_size)
        if isinstance(layer.padding, (int, np.integer)):
            return nn.Conv2d(*args, stride=layer.stride, padding=int(layer.padding))
        return padded_conv(*args, stride=layer.stride, padding=layer.padding)
    if isinstance(layer, BatchNorm2d):
        return nn.BatchNorm2d(layer.num_features, eps=layer.eps, track_running_stats=False)
    if isinstance(layer, MaxPool2d):
        if layer.padding == "valid":
            return nn.MaxPool2d(layer.size, layer.stride)
        if layer.size == 2 and layer.stride == 2:
            return nn.MaxPool2d(2, 2, ceil_mode=True)
        return padded_pool(layer.size, layer.stride, "same")
    if isinstance(layer, Linear):
        return nn.Linear(layer.in_features, layer.out_features)
    simple = {ReLU: nn.ReLU, Tanh: nn.Tanh, Flatten: nn.Flatten}
    if type(layer) in simple:
        return simple[type(layer)]()
    raise ValueError(f"layer {layer!r} has no PyTorch twin.")


def torch_module(model, dtype=np.float64):
    """A ``torch.nn.Sequential`` equivalent to ``model``, with the same module indices.

    Its weights are PyTorch's random defaults; load ours with
    ``module.load_state_dict(to_torch_state_dict(model, theta), strict=True)``
    (or use `torch_twin`). The module is in training mode (BatchNorm uses batch
    statistics in either mode anyway).

    Args:
        model: a `reptile_np.models.Sequential`.
        dtype: float32 or float64 (numpy dtype), the dtype of the module's parameters.
    """
    torch = _torch()
    module = torch.nn.Sequential(*[_twin_layer(layer) for layer in model.layers])
    return module.to(_torch_dtype(dtype)).train()


def to_torch_state_dict(model, theta):
    """``model.state_dict(theta)`` as CPU tensors (copies), ready for ``load_state_dict``."""
    torch = _torch()
    return {name: torch.from_numpy(array) for name, array in model.state_dict(theta).items()}


def torch_twin(model, theta):
    """`torch_module` in ``theta``'s dtype with ``theta`` loaded (``strict=True``)."""
    module = torch_module(model, theta.dtype)
    module.load_state_dict(to_torch_state_dict(model, theta), strict=True)
    return module


def torch_forward(module, x):
    """The module's output for a numpy batch, as a numpy array (no gradient kept)."""
    torch = _torch()
    dtype = next(module.parameters()).dtype
    with torch.no_grad():
        return module(torch.as_tensor(np.asarray(x), dtype=dtype)).numpy()


def torch_loss_and_grad(module, x, y, loss="cross_entropy", reduction="sum"):
    """Loss and parameter gradients by PyTorch autograd.

    Args:
        module: a twin from `torch_module` / `torch_twin`.
        x: numpy batch, cast to the module's dtype.
        y: int labels for "cross_entropy", float targets for "mse".
        loss: "cross_entropy" (``F.cross_entropy``) or "mse" (``F.mse_loss``).
        reduction: "sum" or "mean".

    Returns:
        ``(loss, grads)``: the loss as a numpy float, and ``{name: gradient}``
        (numpy arrays) keyed like the ``state_dict``.
    """
    torch = _torch()
    functional = torch.nn.functional
    dtype = next(module.parameters()).dtype
    out = module(torch.as_tensor(np.asarray(x), dtype=dtype))
    if loss == "cross_entropy":
        value = functional.cross_entropy(out, torch.as_tensor(np.asarray(y), dtype=torch.int64),
                                         reduction=reduction)
    elif loss == "mse":
        value = functional.mse_loss(out, torch.as_tensor(np.asarray(y), dtype=dtype),
                                    reduction=reduction)
    else:
        raise ValueError(f"loss must be 'cross_entropy' or 'mse', got {loss!r}.")
    module.zero_grad(set_to_none=True)
    value.backward()
    grads = {name: p.grad.detach().numpy().copy() for name, p in module.named_parameters()}
    return value.detach().numpy()[()], grads


def torch_reptile_step(model, theta, tasks, task_batches, epsilon, lr, inner_optimizer="adam",
                       beta2=0.999, eps=1e-8, reduction="sum"):
    """One Reptile meta-iteration computed with PyTorch autograd, to check ours against.

    The same algorithm as `reptile_np.meta.reptile_step`, written independently on
    torch tensors: for each task, start from theta, take one step per batch (SGD, or
    TensorFlow-form Adam with beta1 = 0 whose state starts at zero and carries from task
    to task), then interpolate ``theta + epsilon * (mean(phis) - theta)``.

    Args:
        model, theta: our model and flat parameters (float64 for a tight comparison).
        tasks: list of ``(x, y)``.
        task_batches: for each task, its list of index arrays (the batches our run drew).
        epsilon: outer step size. lr: inner learning rate.
        inner_optimizer: "adam" or "sgd".

    Returns:
        The new flat theta as a numpy array.
    """
    torch = _torch()
    if inner_optimizer not in ("adam", "sgd"):
        raise ValueError(f"inner_optimizer must be 'adam' or 'sgd', got {inner_optimizer!r}.")
    module = torch_twin(model, theta)
    params = list(module.parameters())
    start = [p.detach().clone() for p in params]
    second_moment = [torch.zeros_like(p) for p in params]
    step_count, phis = 0, []
    for (x, y), batches in zip(tasks, task_batches):
        with torch.no_grad():
            for p, p0 in zip(params, start):
                p.copy_(p0)
        for batch in batches:
            torch_loss_and_grad(module, x[batch], y[batch], model.loss_name, reduction)
            step_count += 1
            with torch.no_grad():
                for p, v in zip(params, second_moment):
                    if inner_optimizer == "sgd":
                        p -= lr * p.grad
                    else:
                        v.mul_(beta2).add_((1 - beta2) * p.grad * p.grad)
                        p -= lr * (1 - beta2 ** step_count) ** 0.5 * p.grad / (v.sqrt() + eps)
        phis.append(torch.nn.utils.parameters_to_vector(params).detach().clone())
    initial = torch.nn.utils.parameters_to_vector(start)
    return (initial + epsilon * (torch.stack(phis).mean(dim=0) - initial)).numpy()


class ParityRow(NamedTuple):
    """One compared quantity: ``error`` is relative (`rel_error`) unless ``check`` says absolute."""
    name: str
    error: float
    check: str
    threshold: float
    passed: bool


def compare_gradients(ours, theirs, zero_gradient=(), threshold=PARITY_THRESHOLD, atol=None):
    """Compare two ``{name: array}`` dicts tensor by tensor.

    Args:
        ours, theirs: dicts with the same keys and shapes.
        zero_gradient: names whose exact value is 0 (conv biases before BN); they
            are compared by max absolute difference against ``atol``.
        threshold: largest relative error that passes.
        atol: largest absolute difference that passes for ``zero_gradient``
            names; default ``threshold * max(1, max |ours|)`` over all of ``ours``.

    Returns:
        A list of `ParityRow` in the order of ``ours``.
    """
    missing = [name for name in ours if name not in theirs]
    extra = [name for name in theirs if name not in ours]
    if missing or extra:
        raise ValueError(f"theirs must have the same names as ours: missing {missing}, "
                         f"unexpected {extra}.")
    if atol is None:
        largest = max(float(np.max(np.abs(value), initial=0.0)) for value in ours.values())
        atol = threshold * max(1.0, largest)
    rows = []
    for name, mine in ours.items():
        other = np.asarray(theirs[name])
        if np.shape(mine) != other.shape:
            raise ValueError(f"theirs[{name!r}] must have shape {np.shape(mine)}, "
                             f"got {other.shape}.")
        if name in zero_gradient:
            error = float(np.max(np.abs(np.asarray(mine, np.float64) - other), initial=0.0))
            rows.append(ParityRow(name, error, "absolute (zero-gradient tensor)", atol,
                                  bool(error <= atol)))
        else:
            error = rel_error(mine, other)
            rows.append(ParityRow(name, error, "relative", threshold, bool(error <= threshold)))
    return rows


def compare_with_torch(model, theta, x, y, reduction="sum", threshold=PARITY_THRESHOLD):
    """Our output, loss and gradients against PyTorch's on the same weights and batch.

    Args:
        model: a `reptile_np.models.Sequential`.
        theta: flat parameters (use float64 for a meaningful comparison).
        x, y: a batch.
        reduction: "sum" or "mean".
        threshold: largest relative error that passes.

    Returns:
        A list of `ParityRow`: "output", "loss", then every parameter gradient.
    """
    module = torch_twin(model, theta)
    out = model.forward(theta, x)
    loss, grad = model.loss_and_grad(theta, x, y, reduction)
    their_loss, their_grads = torch_loss_and_grad(module, x, y, model.loss_name, reduction)
    rows = compare_gradients({"output": out, "loss": np.asarray(loss)},
                             {"output": torch_forward(module, x), "loss": np.asarray(their_loss)},
                             threshold=threshold)
    return rows + compare_gradients(model.layout.state_dict(grad), their_grads,
                                    zero_gradient=zero_gradient_tensors(model),
                                    threshold=threshold)


def report(rows):
    """A plain-text table of `ParityRow` ("mine vs torch") with a verdict line."""
    width = max([len(row.name) for row in rows] + [6])
    lines = [f"{'tensor':<{width}}  {'error':>9}  {'limit':>7}  result  check",
             f"{'-' * width}  {'-' * 9}  {'-' * 7}  ------  -----"]
    lines += [f"{row.name:<{width}}  {row.error:9.2e}  {row.threshold:7.0e}  "
              f"{'ok' if row.passed else 'FAIL':>6}  {row.check}" for row in rows]
    failed = [row.name for row in rows if not row.passed]
    lines.append(f"FAILED: {', '.join(failed)}" if failed
                 else f"passed: all {len(rows)} quantities agree with PyTorch")
    return "\n".join(lines)
