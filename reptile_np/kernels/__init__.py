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
are the same bits for any thread count, and `adapt_threads` (``--threads auto``) may
change the count between meta-iterations to the cores other processes leave free. The
NumPy kernels are serial and give the threads to OpenBLAS, whose results may change in
the last bits with the count.

The default is ``numba`` when Numba imports, else ``numpy`` with one warning. Any other
value of ``REPTILE_NP_BACKEND`` does not stop the import (a traceback at ``import`` would
be all a user sees): `check_environment` and every kernel call raise a ValueError naming
it, until `set_backend` chooses a backend.
"""
import importlib
import math
import os
import time
import warnings

from .. import runtime, threads
from ..checks import integer
from . import mlp_reference, reference

BACKENDS = ("numpy", "numba")
KERNELS = ("conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight",
           "conv2d_forward_saving", "conv2d_backward",
           "maxpool2d_forward", "maxpool2d_backward",
           "batchnorm2d_forward", "batchnorm2d_backward", "relu_forward", "relu_backward",
           "adam_update")
MLP_KERNELS = ("mlp_sgd_inner_loop",)

_backend = {"name": None, "error": None, "threads": None, "adaptive": None}


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


def set_threads(count, adaptive=False):
    """Run the kernels on ``count`` threads from now on (see the module docstring).

    Args:
        count: an integer >= 1, at most Numba's thread pool size
            (``NUMBA_NUM_THREADS``, by default the number of cores) for the Numba backend.
        adaptive: with the Numba backend, ``count`` is the most threads: `adapt_threads`
            then uses only the cores the machine's other processes leave free. The NumPy
            backend then gives OpenBLAS one thread (its bits depend on its count).

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
    _backend["adaptive"] = _Adaptive(count) if adaptive else None
    _apply_threads()


def most_threads():
    """The most threads `set_threads` accepts: Numba's pool size (``NUMBA_NUM_THREADS``)
    for the Numba backend, the CPUs this process may run on for the NumPy one."""
    if _backend["name"] == "numba":
        import numba
        return numba.config.NUMBA_NUM_THREADS
    return _cores()


def _cores():
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def adapt_threads():
    """With ``set_threads(N, adaptive=True)``: run on the cores the machine's other
    processes leave free, at most N and at least one. Call it between units of work, e.g.
    once per meta-iteration; it measures the others' load at most once a second
    (`reptile_np.runtime.OtherProcessesLoad`) and is a no-op in between.

    Why: Numba's threads wait for each other at every parallel region, so a thread that
    shares its core with a busy process holds the others up; beside one CPU-bound process
    on 2 cores, an Omniglot training on 2 threads kept 44% of its speed, on 1 thread
    94-102%. The Numba kernels give the same bits for any count (the pieces of work are
    fixed by the shapes), so this changes the speed only. The NumPy kernels' threads are
    OpenBLAS's, whose last bits change with the count, so with them it does nothing.

    Returns:
        The thread count in use.
    """
    adaptive = _backend["adaptive"]
    if adaptive is not None and _backend["name"] == "numba":
        count = adaptive.count()
        if count != _backend["threads"]:
            _backend["threads"] = count
            _apply_threads()
    return _backend["threads"]


class _Adaptive:
    """`adapt_threads`' state: the most threads, and the other processes' load."""

    def __init__(self, most, interval=1.0):
        self.most, self.interval = most, interval
        self.cores = _cores()
        self.load = runtime.OtherProcessesLoad()
        self.last_reading, self.current = time.monotonic(), most

    def count(self):
        """The thread count for now: re-measured when ``interval`` seconds have passed."""
        now = time.monotonic()
        if now - self.last_reading >= self.interval:
            self.last_reading = now
            others = self.load.others()
            if others is not None:
                # The cores left free, rounded: beside one busy process a 2-core machine
                # measures it at 0.6-0.7 CPU while we run 2 threads, 1.0 while we run 1.
                free = math.floor(self.cores - others + 0.5)
                self.current = max(1, min(self.most, free))
        return self.current


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
        threads.set_threads(_numpy_backend_threads())


def _numpy_backend_threads():
    """OpenBLAS's thread count under the NumPy kernels: `set_threads`' count, or one when
    adaptive. OpenBLAS's last bits change with its thread count, so it cannot follow the
    machine's load; one thread keeps a run's numbers whatever the machine does."""
    return 1 if _backend["adaptive"] is not None else _backend["threads"]


def describe_threads():
    """One phrase for progress lines, e.g. "2 threads (Numba; OpenBLAS SkylakeX, 1 per piece)"."""
    count, kernel = _backend["threads"], threads.blas_info()["kernel"]
    if count is None:
        return threads.describe()
    if _backend["name"] != "numba":
        count = _numpy_backend_threads()
    plural = "" if count == 1 else "s"
    if _backend["name"] == "numba":
        if _backend["adaptive"] is not None:
            return (f"up to {_backend['adaptive'].most} threads, fewer while other processes "
                    f"are busy (Numba; OpenBLAS {kernel}, 1 per piece)")
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
