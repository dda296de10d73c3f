"""Independent pieces of work in local worker processes, one thread each, results in order.

`map_in_processes` is the process plumbing behind ``evaluate(..., workers=N)``: the caller
draws the items (e.g. evaluation tasks with their mini-batches) in its own order, the
workers compute, and the results come back in that same order, so they are those of a
serial run. Each worker starts with one BLAS/OpenMP/Numba thread: a worker per core, and
no thread pools fighting over the cores.

The executor seam: library code that runs independent pieces of work takes an
*executor*, any object with ``map(function, items, context)`` that returns
``function(context, item)`` for every item, lazily and in the order of ``items``.
`InProcess` runs them here, `LocalProcesses` in `map_in_processes`' pool, and
`reptile_np.dist.DaskExecutor` on a Dask cluster. `executor` turns the ``workers=N``
shorthand into one of the first two.
"""
import collections
import concurrent.futures
import contextlib
import multiprocessing
import os

from . import checks, kernels

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "NUMBA_NUM_THREADS")
"""Thread counts a worker process reads when its libraries load; each worker gets 1."""


def map_in_processes(function, items, workers, context):
    """``function(context, item)`` for every item, in ``workers`` fresh processes.

    Args:
        function: a module-level function (workers import it by name).
        items: an iterable, drawn lazily: at most ``4 * workers`` items wait in the pool
            (10,000 Omniglot evaluation tasks would take 800 MB at once).
        workers: the number of processes, an integer >= 1.
        context: what every call needs besides its item (a model, theta, an optimiser);
            sent to each worker once, when it starts.

    Yields:
        The results, in the order of ``items``.

    Raises:
        ValueError: naming ``workers``. A worker that dies raises
            ``concurrent.futures.process.BrokenProcessPool`` here instead of hanging.
    """
    checks.integer("workers", workers)
    with worker_pool(workers, context) as pool:
        yield from _in_order(pool, function, items, in_flight=4 * workers)


class InProcess:
    """The executor that calls the function here, item by item, with ``context`` itself
    (not a copy: the serial evaluation adapts with the caller's optimiser and restores it)."""

    def map(self, function, items, context):
        return (function(context, item) for item in items)


class LocalProcesses:
    """The executor of `map_in_processes`: ``workers`` fresh local processes per `map`."""

    def __init__(self, workers):
        self.workers = checks.integer("workers", workers)

    def map(self, function, items, context):
        return map_in_processes(function, items, self.workers, context)


def executor(workers):
    """The executor for ``workers``: `InProcess` for 1, `LocalProcesses` for more, and an
    executor (anything with a ``map`` method) as it is.

    Raises:
        ValueError: naming ``workers`` (neither an integer >= 1 nor an executor).
    """
    if callable(getattr(workers, "map", None)):
        return workers
    checks.integer("workers", workers)
    return InProcess() if workers == 1 else LocalProcesses(workers)


def _in_order(pool, function, items, in_flight):
    """The pool's results for ``items``, in order, with at most ``in_flight`` waiting."""
    pending = collections.deque()
    for item in items:
        pending.append(pool.submit(_call, function, item))
        if len(pending) == in_flight:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


@contextlib.contextmanager
def worker_pool(workers, context):
    """``workers`` spawned processes holding ``context`` and this process's kernel backend,
    each with one thread."""
    # "spawn", not "fork": a forked child would keep this process's BLAS threads setting.
    # Workers start as work arrives and read the environment then.
    with _environment({name: "1" for name in THREAD_VARIABLES}), \
            concurrent.futures.ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker, initargs=(context, kernels.get_backend())) as pool:
        yield pool


@contextlib.contextmanager
def _environment(values):
    """Set environment variables, restoring the previous values on exit."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


_WORKER = {}
"""The context `_start_worker` received, in a worker process."""


def _start_worker(context, backend):
    kernels.set_backend(backend)
    _WORKER["context"] = context


def _call(function, item):
    return function(_WORKER["context"], item)
