"""Golden files: one network's weights, one batch, and the loss and gradients we compute.

A golden file lets any framework check itself against reptile-np without
installing it: load the weights and the batch, compute the loss and its
gradient, and compare.

Format: a single ``.npz`` archive (``numpy.load(path, allow_pickle=False)``
reads it; so does any zip + ``.npy`` reader), holding

=================  ==============================================================
key                value
=================  ==============================================================
``param/<name>``   every weight, by PyTorch ``state_dict`` name (``0.weight``,
                   ``1.bias``, ...) in PyTorch layouts: conv (out, in, kh, kw),
                   linear (out, in), BatchNorm ``weight`` (gamma) / ``bias`` (beta)
``x``              the input batch, NCHW (N, C, H, W) images or (N, 1) sine inputs
``y``              int64 class labels (N,), or float targets (N, 1) for sine
``loss``           scalar: the loss with reduction "sum" over the batch
``grad/<name>``    d loss / d param, same names and layouts as ``param/<name>``
``meta``           a JSON string (0-d unicode array): model, num_classes, loss,
                   reduction, dtype, seed, parameter order, conventions, version
=================  ==============================================================

Conventions a re-implementation must match (also spelled out in ``meta``):
flatten in (C, H, W) order; TensorFlow "same" padding, the odd pad row/column at
the bottom/right (so the 28 -> 14 stride-2 convolution pads 0 on top and 1 at
the bottom, not PyTorch's ``padding=1``); BatchNorm with the current batch's
statistics, biased variance, eps 1e-3, no running averages; max-pool "same"
padding with -inf; cross-entropy ``logsumexp(z) - z[y]`` summed over the batch;
for sine, squared error summed over the batch.

The weights are the model's seeded initialisation with N(0, 0.1^2) added to
every constant tensor (biases, BatchNorm), so a swapped or ignored tensor shows.
"""
import json

import numpy as np

from . import __version__, kernels, models
from .files import atomic_path
from .gradcheck import example_batch, example_theta

FORMAT = "reptile-np golden v1"
# Batch sizes of golden files: 5-way 2-shot for the classifiers, 10 sine points.
GOLDEN_EXAMPLES = {"omniglot": 10, "miniimagenet": 10, "sine": 10}
LOSS_KINDS = {"cross_entropy": "softmax cross-entropy on integer labels",
              "mse": "squared error"}


def _meta(model_name, model, seed, dtype):
    classifier = model.loss_name == "cross_entropy"
    return {
        "format": FORMAT,
        "model": model_name,
        "num_classes": int(model.output_shape[0]) if classifier else None,
        "input_shape": list(model.input_shape),
        "loss": LOSS_KINDS[model.loss_name],
        "reduction": "sum",
        "dtype": np.dtype(dtype).name,
        "seed": seed,
        "params": list(model.layout.names),
        "layers": [repr(layer) for layer in model.layers],
        "layouts": "PyTorch: activations NCHW, conv weight (out, in, kh, kw), linear weight "
                   "(out, in) with y = x W^T + b, flatten in (C, H, W) order",
        "padding": "TF same: extra row/col at bottom/right",
        "batchnorm": "batch statistics, biased variance, eps 1e-3, no running averages",
        "maxpool": "TF same: pad with -inf at bottom/right; ties go to the first maximum",
        "reptile_np_version": __version__,
        "backend": kernels.get_backend(),
    }


def export_golden(model_name, path, seed=0, dtype=np.float64):
    """Write a golden file for one of the paper's networks.

    Args:
        model_name: "omniglot", "miniimagenet" or "sine" (keys of ``models.MODELS``).
        path: file to write (conventionally ``*.npz``); replaced atomically, so a
            reader never sees a half-written file.
        seed: seeds the weights and the batch.
        dtype: float64 (default, for cross-checks) or float32.

    Returns:
        The ``meta`` dict written into the file.
    """
    if model_name not in models.MODELS:
        raise ValueError(f"model_name must be one of {sorted(models.MODELS)}, got {model_name!r}.")
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {np.dtype(dtype)}.")
    rng = np.random.default_rng(seed)
    model = models.MODELS[model_name]()
    theta = example_theta(model, rng, dtype)
    x, y = example_batch(model, rng, GOLDEN_EXAMPLES[model_name], dtype)
    loss, grad = model.loss_and_grad(theta, x, y, reduction="sum")

    meta = _meta(model_name, model, seed, dtype)
    arrays = {f"param/{name}": value for name, value in model.state_dict(theta).items()}
    arrays.update(x=x, y=y, loss=np.asarray(loss, dtype=dtype))
    arrays.update({f"grad/{name}": value for name, value in model.layout.state_dict(grad).items()})
    arrays["meta"] = np.array(json.dumps(meta))  # unicode array: no pickle needed

    with atomic_path(path) as tmp, open(tmp, "wb") as file:  # a file object: no ".npz" appended
        np.savez(file, **arrays)
    return meta


def load_golden(path):
    """Read a golden file written by `export_golden`.

    Returns:
        A dict with ``meta`` (dict), ``params`` and ``grads`` (``{name: array}``
        in the file's parameter order), ``x``, ``y`` and ``loss`` (a numpy scalar).
    """
    with np.load(path, allow_pickle=False) as archive:
        if "meta" not in archive.files:
            raise ValueError(f"path {path!r} is not a reptile-np golden file (no 'meta' entry).")
        meta = json.loads(archive["meta"][()])
        if meta.get("format") != FORMAT:
            raise ValueError(f"path {path!r} has format {meta.get('format')!r}, "
                             f"expected {FORMAT!r}.")
        return {
            "meta": meta,
            "params": {name: archive[f"param/{name}"] for name in meta["params"]},
            "grads": {name: archive[f"grad/{name}"] for name in meta["params"]},
            "x": archive["x"],
            "y": archive["y"],
            "loss": archive["loss"][()],
        }
