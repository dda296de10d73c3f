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

Threads: `set_threads` (the command line's ``--threads``). The Numba kernels cut their
work into pieces fixed by the array shapes alone and hand the pieces to Numba's
threads, with NumPy's OpenBLAS pinned to one thread inside each piece, so their results
are the same bits for any thread count. The NumPy kernels are serial and give the
threads to OpenBLAS, whose results may change in the last bits with the count.

The default is ``numba`` when Numba imports, else ``numpy`` with one warning. Any other
value of ``REPTILE_NP_BACKEND`` does not stop the import (a traceback at ``import`` would
be all a user sees): `check_environment` and every kernel call raise a ValueError naming
it, until `set_backend` chooses a backend.
"""
import importlib
import os
import warnings

from .. import threads
from ..checks import integer
from . import mlp_reference, reference

BACKENDS = ("numpy", "numba")
KERNELS = ("conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight",
           "conv2d_forward_saving", "conv2d_backward",
           "maxpool2d_forward", "maxpool2d_backward",
           "batchnorm2d_forward", "batchnorm2d_backward", "relu_forward", "relu_backward",
           "adam_update")
MLP_KERNELS = ("mlp_sgd_inner_loop",)

_backend = {"name": None, "error": None, "threads": None}


def _numba_modules():
    """The Numba kernels and the Numba MLP loop, or None (with one warning) if Numba is missing."""
    # How long Numba's OpenMP threads spin for the next parallel region before they sleep,
    # unless the environment says: about 0.1 ms (GOMP_SPINCOUNT=100000). An Omniglot step
    # on 2 threads of this 2-core machine took 1.2 ms so (and with endless spinning), 3.9
    # with threads that sleep at once (OMP_WAIT_POLICY=PASSIVE: every region waits for a
    # wake-up), 1.7 beside one busy process and 1.6 beside three (endless spinning stalls
    # beside other busy processes). Read once, when OpenMP starts.
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", "100000")
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
    _apply_threads()
    return name


def set_threads(count):
    """Run the kernels on ``count`` threads from now on (see the module docstring).

    Args:
        count: an integer >= 1, at most Numba's thread pool size
            (``NUMBA_NUM_THREADS``, by default the number of cores) for the Numba backend.

    Raises:
        ValueError: naming ``count``.
    """
    count = integer("threads", count)
    if _backend["name"] == "numba":
        import numba
        if count > numba.config.NUMBA_NUM_THREADS:
            raise ValueError(f"threads must be at most {numba.config.NUMBA_NUM_THREADS} "
                             f"(NUMBA_NUM_THREADS, by default the number of cores), got {count}; "
                             f"set NUMBA_NUM_THREADS={count} in the environment for more.")
    _backend["threads"] = count
    _apply_threads()


def get_threads():
    """The thread count `set_threads` set, or None before it is called (the Numba kernels
    then run on one thread, and BLAS with the threads the environment gives it)."""
    return _backend["threads"]


def _apply_threads():
    """Give the chosen backend its threads: Numba's pool with single-threaded BLAS inside
    each piece of work, or OpenBLAS's own pool for the serial NumPy kernels. Before
    `set_threads`, only Numba's count is set (to one), and BLAS is left as it is: importing
    the package does not change how the rest of the process multiplies matrices."""
    count = _backend["threads"]
    if _backend["name"] == "numba":
        import numba
        numba.set_num_threads(1 if count is None else min(count, numba.config.NUMBA_NUM_THREADS))
        if count is not None:
            threads.set_threads(1)
    elif count is not None:
        threads.set_threads(count)


def describe_threads():
    """One phrase for progress lines, e.g. "2 threads (Numba; OpenBLAS SkylakeX, 1 per piece)"."""
    count, kernel = _backend["threads"], threads.blas_info()["kernel"]
    if count is None:
        return threads.describe()
    plural = "" if count == 1 else "s"
    if _backend["name"] == "numba":
        return f"{count} thread{plural} (Numba; OpenBLAS {kernel}, 1 per piece)"
    return f"{count} BLAS thread{plural} (OpenBLAS {kernel})"


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
