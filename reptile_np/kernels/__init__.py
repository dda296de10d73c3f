"""The kernel backend: readable NumPy (`reference`) or Numba (`fast`), chosen once.

Both modules define the functions named in `KERNELS` with the same signatures and
results (tests hold each pair equal). `set_backend` binds every one of those names in
this module to the chosen module's function, so the layers' ``kernels.conv2d_forward(...)``
*is* `reference.conv2d_forward` or `fast.conv2d_forward`: one hop from layer to kernel.
The same switch picks the MLP inner loop's twins, `mlp_reference` and `mlp_fast`.

Choose the backend with

* the environment variable ``REPTILE_NP_BACKEND=numpy|numba`` (read at import), or
* ``reptile_np.kernels.set_backend("numpy" | "numba")`` at run time, between steps: a
  convolution's forward pass saves what its own backend's backward pass needs.

The default is ``numba`` when Numba imports, else ``numpy`` with one warning. Any other
value of ``REPTILE_NP_BACKEND`` does not stop the import (a traceback at ``import`` would
be all a user sees): `check_environment` and every kernel call raise a ValueError naming
it, until `set_backend` chooses a backend.
"""
import importlib
import os
import warnings

from . import mlp_reference, reference

BACKENDS = ("numpy", "numba")
KERNELS = ("conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight",
           "conv2d_forward_saving", "conv2d_backward",
           "maxpool2d_forward", "maxpool2d_backward",
           "batchnorm2d_forward", "batchnorm2d_backward", "relu_forward", "relu_backward",
           "adam_update")
MLP_KERNELS = ("mlp_sgd_inner_loop",)

_backend = {"name": None, "error": None}


def _numba_modules():
    """The Numba kernels and the Numba MLP loop, or None (with one warning) if Numba is missing."""
    try:
        return (importlib.import_module(__name__ + ".fast"),
                importlib.import_module(__name__ + ".mlp_fast"))
    except ImportError as error:
        warnings.warn(f"Numba is not available ({error}); using the NumPy kernels. "
                      "Install it with: pip install numba", RuntimeWarning, stacklevel=3)
        return None


def _bind(module, mlp_module):
    """Make every kernel name of this module the function of ``module`` (or ``mlp_module``)."""
    names = globals()
    names.update({kernel: getattr(module, kernel) for kernel in KERNELS})
    names.update({kernel: getattr(mlp_module, kernel) for kernel in MLP_KERNELS})


def set_backend(name):
    """Choose the kernels every layer uses: "numpy" (reference) or "numba" (fast).

    Returns:
        The name of the backend now in use ("numpy" if "numba" was asked for
        but Numba cannot be imported).
    """
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}.")
    modules = _numba_modules() if name == "numba" else None
    if modules is None:
        name, modules = "numpy", (reference, mlp_reference)
    _bind(*modules)
    _backend.update(name=name, error=None)
    return name


def get_backend():
    """Name of the backend in use: "numpy" or "numba" (None while none is chosen)."""
    return _backend["name"]


def check_environment():
    """Raise ValueError if ``REPTILE_NP_BACKEND`` named no backend and `set_backend` has
    not chosen one since; the command line calls it before doing anything."""
    if _backend["error"] is not None:
        raise ValueError(_backend["error"])


def _refuse_unknown_backend(*args, **kwargs):
    """Every kernel while ``REPTILE_NP_BACKEND`` names no backend."""
    check_environment()


_requested = os.environ.get("REPTILE_NP_BACKEND", "numba").strip().lower() or "numba"
if _requested in BACKENDS:
    set_backend(_requested)
else:
    _backend["error"] = (f"REPTILE_NP_BACKEND={_requested} is not one of {', '.join(BACKENDS)}; "
                         f"set it to one of them or unset it.")
    globals().update({kernel: _refuse_unknown_backend for kernel in KERNELS + MLP_KERNELS})
