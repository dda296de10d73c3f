"""Finite-difference gradient checks, as a feature users can run.

Every hand-written gradient in reptile-np is compared with centred differences
in float64::

    numerical[i] = (f(x + h e_i) - f(x - h e_i)) / (2 h),      h = 1e-5

and the agreement of an analytic tensor ``a`` with its numerical twin ``n`` is
measured by the CS231n relative error, with both maxima taken over the tensor::

    rel_error(a, n) = max_i |a_i - n_i| / max(1e-8, max_i (|a_i| + |n_i|))

Taking the maximum over the whole tensor in the denominator (rather than
entry by entry) makes the measure scale-free but keeps it from blowing up on
entries that are tiny only because of cancellation, where finite differences
have no correct digits to offer. The 1e-8 floor stops a division by zero when
both tensors vanish.

Thresholds: 1e-7 for single layers (float64, inputs away from kinks), 1e-6
for whole models. Measured errors are ~1e-11..1e-10 for layers and ~1e-10..1e-9
for the paper's networks; the margin is there so that a failure means a wrong
gradient (a 1% error in one gradient gives ~5e-3).

A whole network cannot be kept away from its kinks (ReLU at 0, max-pool
near-ties): with thousands of activations a step of h = 1e-5 crosses one
regularly, and the centred difference across it is simply wrong. `check_model`
therefore watches the ReLU masks and max-pool winners and re-steps with a
smaller h whenever they change within the step (see there).

One kind of tensor is checked differently: a convolution bias followed by
batch-statistics BatchNorm has an exact gradient of zero (BN subtracts the
channel mean, so a constant shift cancels). Both the analytic and numerical
values are rounding noise there, and a relative error of noise against noise
means nothing. Such tensors get an absolute check instead,
``max |a - n| <= ZERO_GRAD_ATOL * max(1, |loss|)`` (finite-difference noise
scales with the loss value), and their row says so.

Usage::

    rows, passed = run_gradcheck("omniglot", seed=0)
    print(format_table(rows))
"""
from typing import NamedTuple

import numpy as np

from . import models
from .data import sine
from .layers import BatchNorm2d, Conv2d, MaxPool2d, ReLU

H = 1e-5
LAYER_THRESHOLD = 1e-7
MODEL_THRESHOLD = 1e-6
# Finite-difference noise on a loss of size L is about eps * L / h ~ 2e-11 * L
# (times a small factor for the summation); 1e-9 * L leaves margin, while a real
# gradient of a bias is of order 1e-3..1.
ZERO_GRAD_ATOL = 1e-9
ZERO_GRAD_NOTE = "zero-gradient tensor (conv bias before BN), absolute check"

# `run_gradcheck`'s batch sizes (omniglot: 5-way 2-shot) and entries checked per
# tensor (all of a small tensor, a random sample of a large one). Mini-ImageNet
# gets fewer: one forward pass at 84x84 costs ~20 ms with the NumPy kernels, and
# the check should stay within a few seconds.
BATCH_SIZES = {"omniglot": 10, "miniimagenet": 2, "sine": 10}
DEFAULT_ENTRIES = {"omniglot": 20, "miniimagenet": 10, "sine": 40}


class GradcheckRow(NamedTuple):
    """One checked tensor.

    Attributes:
        name: tensor name (``"0.weight"``, or ``"x"`` for a layer's input).
        shape: tensor shape.
        checked: number of entries compared.
        error: max relative error, or max absolute error for zero-gradient tensors.
        threshold: the bound ``error`` had to stay within.
        passed: ``error <= threshold``.
        note: how the tensor was checked, if not by relative error.
    """
    name: str
    shape: tuple
    checked: int
    error: float
    threshold: float
    passed: bool
    note: str = ""


def rel_error(a, n):
    """CS231n relative error, maxima over the whole tensor (see module docstring).

    Args:
        a: analytic values (any shape).
        n: numerical values, same shape.

    Returns:
        ``max|a - n| / max(1e-8, max(|a| + |n|))`` as a Python float.
    """
    a, n = np.asarray(a, dtype=np.float64), np.asarray(n, dtype=np.float64)
    if a.shape != n.shape:
        raise ValueError(f"a and n must have the same shape, got {a.shape} and {n.shape}.")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - n)) / max(1e-8, np.max(np.abs(a) + np.abs(n))))


def _require_float64(x, argument):
    if not isinstance(x, np.ndarray) or x.dtype != np.float64:
        given = x.dtype if isinstance(x, np.ndarray) else type(x).__name__
        raise ValueError(f"{argument} must be a float64 array for a finite-difference check "
                         f"(h = 1e-5 leaves no correct digits in float32), got {given}.")


def numerical_gradient(f, x, indices=None, h=H):
    """Centred-difference derivative of a scalar function, entry by entry.

    ``x`` is perturbed in place, one entry at a time, and each entry is restored
    to its exact original value afterwards (not by subtracting h again, which
    could round differently).

    Args:
        f: callable ``f(x) -> float``; it must read ``x`` (or views of it) afresh each call.
        x: float64 array, the point of evaluation.
        indices: flat indices of the entries to differentiate; None for all.
        h: step size.

    Returns:
        An array shaped like ``x`` if ``indices`` is None, else a 1-D array with
        one derivative per index.
    """
    _require_float64(x, "x")
    flat = x.reshape(-1)
    if not np.shares_memory(flat, x):
        raise ValueError("x must be contiguous so that it can be perturbed in place.")
    chosen = np.arange(flat.size) if indices is None else np.asarray(indices, dtype=np.intp)
    grad = np.empty(chosen.size, dtype=np.float64)
    for k, i in enumerate(chosen):
        original = flat[i]
        flat[i] = original + h
        plus = float(f(x))
        flat[i] = original - h
        minus = float(f(x))
        flat[i] = original
        grad[k] = (plus - minus) / (2 * h)
    return grad.reshape(x.shape) if indices is None else grad


def _sample_indices(size, max_entries, rng):
    """All flat indices of a small tensor, a sorted random sample of a large one."""
    if max_entries is None or size <= max_entries:
        return np.arange(size)
    return np.sort(rng.choice(size, size=max_entries, replace=False))


def _relative_row(name, shape, analytic, numerical, threshold):
    error = rel_error(analytic, numerical)
    return GradcheckRow(name, tuple(shape), int(np.size(analytic)), error, threshold,
                        bool(error <= threshold))


def check_layer(layer, x, rng, params=None, h=H, max_entries=None, threshold=LAYER_THRESHOLD):
    """Check one layer's input and parameter gradients against finite differences.

    A vector-valued layer is reduced to a scalar through a random upstream
    gradient: ``loss = sum(dout * layer(x))``, whose gradient is exactly what
    ``layer.backward(params, cache, dout)`` returns.

    Args:
        layer: a layer from `reptile_np.layers`.
        x: float64 input batch, e.g. (N, C, H, W). Keep it away from kinks
            (ReLU at 0, max-pool ties): there the function has no derivative.
        rng: numpy Generator for ``dout``, random parameters and sampled entries.
        params: the layer's parameters (tuple of float64 arrays); default
            standard-normal draws, so no tensor is trivially 0 or 1.
        h: finite-difference step.
        max_entries: check at most this many random entries per tensor; None for all.
        threshold: largest relative error that passes.

    Returns:
        A list of `GradcheckRow`, ``"x"`` first, then each parameter by name.
    """
    _require_float64(x, "x")
    if params is None:
        params = tuple(rng.standard_normal(shape) for shape in layer.param_shapes.values())
    x = x.copy()
    params = tuple(np.array(p, dtype=np.float64) for p in params)
    y, cache = layer.forward(params, x)
    dout = rng.standard_normal(y.shape)
    dx, dparams = layer.backward(params, cache, dout)

    def loss(_):
        # Reads x and params, which numerical_gradient perturbs in place.
        return np.sum(dout * layer.forward(params, x)[0])

    rows = []
    for name, tensor, analytic in zip(("x",) + tuple(layer.param_shapes), (x,) + params,
                                      (dx,) + tuple(dparams)):
        chosen = _sample_indices(tensor.size, max_entries, rng)
        numerical = numerical_gradient(loss, tensor, chosen, h)
        rows.append(_relative_row(name, tensor.shape, analytic.reshape(-1)[chosen],
                                  numerical, threshold))
    return rows


def zero_gradient_tensors(model):
    """Names of the tensors whose exact gradient is 0: conv biases followed by BatchNorm."""
    return [f"{i}.bias" for i, (layer, following) in enumerate(zip(model.layers, model.layers[1:]))
            if isinstance(layer, Conv2d) and isinstance(following, BatchNorm2d)]


def _kink_pattern(layer, cache):
    """What decides the linear piece a layer is on: ReLU's mask, max-pool's winners."""
    if isinstance(layer, ReLU):
        return cache > 0       # the cache is ReLU's output
    if isinstance(layer, MaxPool2d):
        return cache[0]
    return None


class _PiecewiseLoss:
    """A model's loss at whatever ``theta`` holds now, re-run from one layer on.

    The layers read their parameters through ``model.layer_params(theta)``, views into
    ``theta``: an entry that `numerical_gradient` perturbs in place is what the next
    evaluation sees. Every layer's input at the unperturbed ``theta`` is stored, so an
    entry of layer ``k`` re-runs layers ``k, k + 1, ...`` only. ``left_piece`` turns True
    when an evaluation's ReLU masks or max-pool winners differ from the unperturbed ones.
    """

    def __init__(self, model, theta, x, y, reduction):
        self.layers, self.params = model.layers, model.layer_params(theta)
        self.loss_fn, self.y, self.reduction = models.LOSSES[model.loss_name], y, reduction
        self.inputs, self.base_kinks = [np.asarray(x, dtype=np.float64)], []
        for layer, params in zip(self.layers, self.params):
            out, cache = layer.forward(params, self.inputs[-1])
            self.inputs.append(out)
            self.base_kinks.append(_kink_pattern(layer, cache))
        self.left_piece = False

    def loss_from(self, start):
        """The loss, running the layers from ``start`` on; updates ``left_piece``."""
        out = self.inputs[start]
        for layer, params, base in zip(self.layers[start:], self.params[start:],
                                       self.base_kinks[start:]):
            out, cache = layer.forward(params, out)
            if base is not None and not np.array_equal(_kink_pattern(layer, cache), base):
                self.left_piece = True
        return float(self.loss_fn(out, self.y, self.reduction)[0])


def _tensors(model):
    """``(name, shape, owning layer, start, stop)`` of every tensor of theta, in layout order.

    A `Sequential` lays out its layers' tensors layer after layer, each layer's in the
    order of ``layer.param_shapes``, which is also the order of `Sequential.layer_params`.
    """
    owners = [k for k, layer in enumerate(model.layers) for _ in layer.param_shapes]
    layout = model.layout
    return list(zip(layout.names, layout.shapes, owners, layout.offsets[:-1], layout.offsets[1:]))


def _kink_free_derivative(piecewise, theta, index, owner, h):
    """Centred difference at ``theta[index]``, the step cut by 10 while it crosses a kink.

    Returns:
        ``(derivative, refinements)``; derivative None when even h / 100 crosses a kink
        (the entry sits on one and has no derivative).
    """
    for refinements, step in enumerate((h, h / 10, h / 100)):
        piecewise.left_piece = False
        value = numerical_gradient(lambda _: piecewise.loss_from(owner), theta, [index], step)[0]
        if not piecewise.left_piece:
            return value, refinements
    return None, refinements


def _tensor_row(name, shape, analytic, results, threshold, zero_atol=None):
    """The `GradcheckRow` of one tensor.

    Args:
        analytic: the analytic gradient at the checked entries.
        results: `_kink_free_derivative`'s ``(derivative, refinements)`` for each entry.
        threshold: largest relative error that passes.
        zero_atol: for a zero-gradient tensor, the largest absolute error that passes.
    """
    kept = np.array([value is not None for value, _ in results], dtype=bool)
    numerical = np.array([value for value, _ in results if value is not None])
    analytic = analytic[kept]
    notes = []
    if zero_atol is None:
        row = _relative_row(name, shape, analytic, numerical, threshold)
    else:
        error = float(np.max(np.abs(analytic - numerical), initial=0.0))
        row = GradcheckRow(name, shape, int(kept.sum()), error, zero_atol, bool(error <= zero_atol))
        notes.append(ZERO_GRAD_NOTE)
    refined = sum(1 for value, r in results if value is not None and r > 0)
    if refined:
        notes.append(f"{refined} re-stepped with smaller h (kink within h)")
    if not kept.all():
        notes.append(f"{int((~kept).sum())} on a kink, skipped")
    return row._replace(note="; ".join(notes))


def check_model(model, theta, x, y, rng, max_entries=40, h=H, threshold=MODEL_THRESHOLD,
                reduction="sum"):
    """Check every parameter gradient of a model against finite differences.

    Each tensor is checked in full if it has at most ``max_entries`` entries,
    else on a random sample of that many. The numerical derivative of an entry
    owned by layer ``k`` re-runs the forward pass from layer ``k`` on the stored
    input of layer ``k`` -- the same arithmetic as ``model.loss``, without
    recomputing the unchanged layers before it.

    A network with ReLU or max-pooling is only piecewise smooth, and with
    thousands of activations a step of h = 1e-5 does cross a kink now and then;
    the centred difference across a kink is wrong by O(1) for that activation.
    So every evaluation also compares the ReLU masks and max-pool winners with
    those at ``theta``: if ``theta_i + h`` or ``theta_i - h`` lands on another linear
    piece, the entry is re-stepped with h / 10 (twice at most), and if even h / 100
    crosses a kink the entry sits on one, has no derivative, and is left out. Rows
    say when either happened.

    Args:
        model: a `reptile_np.models.Sequential`.
        theta: float64 flat parameter vector (not modified).
        x, y: a batch, as for ``model.loss_and_grad``.
        rng: numpy Generator choosing the sampled entries.
        max_entries: entries per tensor; None checks every entry.
        h: finite-difference step.
        threshold: largest relative error that passes.
        reduction: "sum" or "mean", passed to the loss.

    Returns:
        A list of `GradcheckRow`, one per parameter tensor in layout order.
        Zero-gradient tensors (`zero_gradient_tensors`) are checked by absolute
        error ``<= ZERO_GRAD_ATOL * max(1, |loss|)`` and carry a note saying so.
    """
    _require_float64(theta, "theta")
    theta = theta.copy()        # perturbed in place below, restored entry by entry
    loss, grad = model.loss_and_grad(theta, x, y, reduction)  # also validates x and y
    piecewise = _PiecewiseLoss(model, theta, x, y, reduction)
    zero = set(zero_gradient_tensors(model))
    zero_atol = ZERO_GRAD_ATOL * max(1.0, abs(float(loss)))
    rows = []
    for name, shape, owner, start, stop in _tensors(model):
        chosen = start + _sample_indices(stop - start, max_entries, rng)
        results = [_kink_free_derivative(piecewise, theta, index, owner, h) for index in chosen]
        rows.append(_tensor_row(name, shape, grad[chosen], results, threshold,
                                zero_atol if name in zero else None))
    return rows


def example_theta(model, rng, dtype=np.float64):
    """The model's initial parameters, with every constant tensor made non-trivial.

    Biases start at 0 and BatchNorm at 1/0; a check at exactly those values
    would not notice, say, a swapped BN weight and bias. Every tensor whose
    entries are all equal gets N(0, 0.1^2) noise added.
    """
    theta = model.init(rng, dtype)
    for view in model.layout.views(theta):
        if np.all(view == view.flat[0]):
            view += (0.1 * rng.standard_normal(view.shape)).astype(dtype)
    return theta


def example_batch(model, rng, num_examples, dtype=np.float64):
    """A small random batch for one of the paper's networks.

    Classifiers: images uniform in [0, 1) with labels ``0, 1, ..., K-1, 0, 1, ...``
    (e.g. 10 examples of 5 classes = 5-way 2-shot). Regression (the sine MLP): one
    task of `reptile_np.data.sine` (``a sin(x + b)``, a ~ U[0.1, 5), b ~ U[0, 2 pi),
    paper notes section 6), observed at ``num_examples`` inputs drawn uniformly from
    the range of its grid, [-5, 5).

    Returns:
        ``(x, y)``: x of ``dtype``; y int64 labels, or targets of ``dtype``.
    """
    shape = (num_examples,) + model.input_shape
    if model.loss_name == "mse":
        x = rng.uniform(*sine.X_RANGE, size=shape)
        return x.astype(dtype), sine.sine_values(x, *sine.sample_sine_task(rng)).astype(dtype)
    labels = np.arange(num_examples, dtype=np.int64) % model.output_shape[0]
    return rng.random(shape).astype(dtype), labels


def run_gradcheck(model_name, seed=0, max_entries=None):
    """Gradient check of one of the paper's networks, float64, reduction "sum".

    Args:
        model_name: "omniglot", "miniimagenet" or "sine" (keys of ``models.MODELS``).
        seed: seeds the parameters, the batch and the sampled entries.
        max_entries: entries per tensor; default `DEFAULT_ENTRIES[model_name]`.

    Returns:
        ``(rows, passed)``: the `GradcheckRow` list and whether every row passed.
    """
    if model_name not in models.MODELS:
        raise ValueError(f"model_name must be one of {sorted(models.MODELS)}, got {model_name!r}.")
    rng = np.random.default_rng(seed)
    model = models.MODELS[model_name]()
    theta = example_theta(model, rng)
    x, y = example_batch(model, rng, BATCH_SIZES[model_name])
    entries = DEFAULT_ENTRIES[model_name] if max_entries is None else max_entries
    rows = check_model(model, theta, x, y, rng, max_entries=entries)
    return rows, all(row.passed for row in rows)


def format_table(rows):
    """A plain-text table of gradient-check rows with a one-line verdict at the end."""
    header = ("tensor", "shape", "checked", "error", "limit", "result", "")
    lines = [(row.name, "x".join(map(str, row.shape)) or "scalar", str(row.checked),
              f"{row.error:.2e}", f"{row.threshold:.0e}", "ok" if row.passed else "FAIL",
              row.note) for row in rows]
    widths = [max(len(line[i]) for line in [header] + lines) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i in (0, 1, 6) else f"{{:>{w}}}" for i, w in enumerate(widths))
    out = [fmt.format(*header).rstrip(), "  ".join("-" * w for w in widths[:-1])]
    out += [fmt.format(*line).rstrip() for line in lines]
    failed = [row.name for row in rows if not row.passed]
    out.append(f"FAILED: {len(failed)} of {len(rows)} tensors ({', '.join(failed)})" if failed
               else f"passed: all {len(rows)} tensors (error = max relative error "
                    f"max|a-n| / max(1e-8, max(|a|+|n|)), unless noted)")
    return "\n".join(out)
