"""Kernel backend switch: readable NumPy (`reference`) or Numba (`fast`).

Both modules define the same functions with the same signatures; layers call
them through this module, so one switch changes every kernel at once:

* the environment variable ``REPTILE_NP_BACKEND=numpy|numba`` (read at import), or
* ``reptile_np.kernels.set_backend("numpy" | "numba")`` at run time.

The default is ``numba`` when Numba imports, else ``numpy`` with one warning. Any other
value of ``REPTILE_NP_BACKEND`` does not stop the import (a traceback at ``import`` would
be all a user sees): `check_environment` and every kernel call raise a ValueError naming
it, until `set_backend` chooses a backend.
"""
import importlib
import os
import warnings

from . import reference

BACKENDS = ("numpy", "numba")
KERNELS = ("conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight",
           "conv2d_forward_saving", "conv2d_backward",
           "maxpool2d_forward", "maxpool2d_backward",
           "batchnorm2d_forward", "batchnorm2d_backward", "relu_forward", "relu_backward",
           "adam_update")

_current = {"name": None, "module": None, "mlp_module": None}


def _numba_module():
    """Import the Numba kernels, or return None (with one warning) if Numba is missing."""
    try:
        return importlib.import_module(__name__ + ".fast")
    except ImportError as error:
        warnings.warn(f"Numba is not available ({error}); using the NumPy kernels. "
                      "Install it with: pip install numba", RuntimeWarning, stacklevel=3)
        return None


def set_backend(name):
    """Choose the kernels every layer uses: "numpy" (reference) or "numba" (fast).

    Returns:
        The name of the backend now in use ("numpy" if "numba" was asked for
        but Numba cannot be imported).
    """
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}.")
    module = _numba_module() if name == "numba" else reference
    if module is None:
        name, module = "numpy", reference
    _current["name"], _current["module"] = name, module
    _current["mlp_module"] = _mlp_module(name)
    return name


def get_backend():
    """Name of the backend in use: "numpy" or "numba"."""
    return _current["name"]


def conv2d_forward(x, w, stride, pad):
    """Convolution without bias; see `reference.conv2d_forward`."""
    return _current["module"].conv2d_forward(x, w, stride, pad)


def conv2d_backward_input(dy, w, x_shape, stride, pad):
    """Input gradient of a convolution; see `reference.conv2d_backward_input`."""
    return _current["module"].conv2d_backward_input(dy, w, x_shape, stride, pad)


def conv2d_backward_weight(dy, x, w_shape, stride, pad):
    """Weight gradient of a convolution; see `reference.conv2d_backward_weight`."""
    return _current["module"].conv2d_backward_weight(dy, x, w_shape, stride, pad)


def conv2d_forward_saving(x, w, stride, pad):
    """`conv2d_forward`, plus ``saved``: what `conv2d_backward` will need (x for NumPy,
    its im2col patches and the weight matrix for Numba), tagged with the backend that
    saved it."""
    module = _current["module"]
    y, saved = module.conv2d_forward_saving(x, w, stride, pad)
    return y, (module, saved)


def conv2d_backward(dy, w, saved, x_shape, stride, pad, input_grad=True):
    """(dx or None, dw) from the ``saved`` of `conv2d_forward_saving`, by the backend
    that saved it (even if the backend was switched in between)."""
    module, kept = saved
    return module.conv2d_backward(dy, w, kept, x_shape, stride, pad, input_grad)


def maxpool2d_forward(x, size, stride, pad):
    """Max-pooling with winner indices; see `reference.maxpool2d_forward`."""
    return _current["module"].maxpool2d_forward(x, size, stride, pad)


def maxpool2d_backward(dy, argmax, x_shape, size, stride, pad):
    """Gradient of max-pooling; see `reference.maxpool2d_backward`."""
    return _current["module"].maxpool2d_backward(dy, argmax, x_shape, size, stride, pad)


def batchnorm2d_forward(x, gamma, beta, eps):
    """Batch normalisation with batch statistics; see `reference.batchnorm2d_forward`."""
    return _current["module"].batchnorm2d_forward(x, gamma, beta, eps)


def batchnorm2d_backward(dy, x_hat, inv_std, gamma):
    """Gradients of batch normalisation; see `reference.batchnorm2d_backward`."""
    return _current["module"].batchnorm2d_backward(dy, x_hat, inv_std, gamma)


def relu_forward(x):
    """max(x, 0); see `reference.relu_forward`."""
    return _current["module"].relu_forward(x)


def relu_backward(dy, y):
    """Gradient of ReLU from its output; see `reference.relu_backward`."""
    return _current["module"].relu_backward(dy, y)


def adam_update(params, grad, m, v, step_size, beta1, beta2, eps):
    """One in-place Adam step (TF1's form); see `reference.adam_update`."""
    return _current["module"].adam_update(params, grad, m, v, step_size, beta1, beta2, eps)


# A small MLP's whole SGD inner loop (`meta.inner_loop`'s fast path), switched with the
# kernels above: `mlp_reference` (NumPy) or its twin `mlp_fast` (Numba).

def _mlp_module(name):
    """The module holding `mlp_sgd_inner_loop` for backend ``name``."""
    module = "mlp_fast" if name == "numba" else "mlp_reference"
    return importlib.import_module(f"{__name__}.{module}")


def mlp_sgd_inner_loop(phi, widths, activation, x_batches, y_batches, lr, reduction, weight_decay):
    """Every SGD step of an MLP's inner loop on phi, in place; see
    `mlp_reference.mlp_sgd_inner_loop`."""
    _current["mlp_module"].mlp_sgd_inner_loop(phi, widths, activation, x_batches, y_batches, lr,
                                              reduction, weight_decay)


class _UnknownBackend:
    """Stands in for the kernel modules while ``REPTILE_NP_BACKEND`` names no backend:
    every kernel call raises the ValueError that `check_environment` raises."""

    def __init__(self, message):
        self.message = message

    def __getattr__(self, name):
        raise ValueError(self.message)


def check_environment():
    """Raise ValueError if ``REPTILE_NP_BACKEND`` named no backend and `set_backend` has
    not chosen one since; the command line calls it before doing anything."""
    if isinstance(_current["module"], _UnknownBackend):
        raise ValueError(_current["module"].message)


_requested = os.environ.get("REPTILE_NP_BACKEND", "numba").strip().lower() or "numba"
if _requested in BACKENDS:
    set_backend(_requested)
else:
    _unknown = _UnknownBackend(f"REPTILE_NP_BACKEND={_requested} is not one of "
                               f"{', '.join(BACKENDS)}; set it to one of them or unset it.")
    _current.update(module=_unknown, mlp_module=_unknown)
