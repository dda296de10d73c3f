"""Independent pieces of work on a Dask cluster: the executor behind ``--scheduler``.

`connect` opens a `distributed.Client` to a running scheduler (``tcp://host:8786``), or
starts a ``LocalCluster`` of N single-threaded worker processes on 127.0.0.1 for
``local:N``, checks that the workers run the same reptile-np, NumPy and Numba as this
process, and yields a `DaskExecutor`. Its ``map(function, items, context)`` is the
executor seam of `reptile_np.workers`: the results come back in the order of ``items``,
so code that draws its items in this process (the evaluation tasks, a meta-batch) gets
the results of a serial run, bit for bit:

* the context (theta, the optimiser's snapshot, the model) is scattered to every worker
  once per `map`, not sent with every item;
* the items go in chunks of `DaskExecutor.chunk_size` (one scheduler task per chunk), so
  the scheduler's per-task cost (a few ms) is spread over many items. A chunk travels
  inside its scheduler task (not scattered to one worker: a chunk whose only copy died
  with its worker could not be rerun), so it is also cut at `CHUNK_BYTES`;
* every chunk sets its worker's kernels to this process's backend and to
  ``worker_threads`` threads before it computes (`prepare_worker`,
  `reptile_np.kernels.set_threads`), so the results are those of a serial run (the Numba
  kernels give the same bits for any thread count; OpenBLAS runs one thread per piece).

Why the threads are set at run time, in the worker: a thread variable set for the worker
(the nanny's ``env``) arrives after the spawned worker has re-imported the main module,
and so NumPy; Dask's ``pre-spawn-environ`` works but rewrites the environment of the
process that runs the nanny -- ours, for a ``LocalCluster``. `reptile_np.kernels.set_threads`
changes the counts in the running process instead, on any cluster, for workers that
restart too.

Failures: a worker lost mid-chunk is the scheduler's to handle -- it reruns the chunk on
another worker, and gives up with ``KilledWorker`` after ``distributed.scheduler.
allowed-failures`` (3) deaths, or cancels the chunk when every worker holding the
scattered context died; either becomes one ConnectionError line here. An exception
inside a chunk (a ValueError, a worker whose Numba does not import) is raised here as it
was raised there. An unreachable scheduler, a cluster without workers and mismatched
versions are each one line, within seconds (`connect`'s ``timeout``).

``distributed`` is imported only when a cluster is used: it is the optional extra
``dist`` (``pip install 'reptile-np[dist]'``).
"""
import collections
import concurrent.futures
import contextlib
import copy
import logging
import math
import sys
import time

from . import __version__, checks, kernels
from .runtime import keep_freed_memory

EXTRA_MESSAGE = "needs dask.distributed: pip install 'reptile-np[dist]'"

LOCAL_PREFIX = "local:"

CHUNK_SIZE = 16
"""Items per scheduler task. An Omniglot evaluation task takes ~40 ms on one core and the
scheduler's round trip a few ms, so 16 of them keep the overhead to a few per cent (see the
README's "Scaling out" for the measurement); a list shorter than one chunk per worker
thread is dealt out evenly instead (a meta-batch of 5 on 2 workers: 3 + 2)."""

CHUNK_BYTES = 4 << 20
"""A chunk is closed once its arrays reach this many bytes (2 Mini-ImageNet evaluation
tasks of 2.5 MB; a 15-shot training task of 6.3 MB goes alone): the scheduler relays
every chunk, and warns about tasks over 10 MB."""

CONNECT_TIMEOUT = 5.0
"""Seconds `connect` waits for the scheduler, and for its first worker."""

IDLE_TIMEOUT = 30.0
"""Seconds a `map` waits for a result while the cluster has no worker at all before it
gives up (a restarting worker takes a few seconds)."""


def distributed_module():
    """``distributed``, or ImportError naming the ``dist`` extra."""
    try:
        import distributed
    except ImportError:
        raise ImportError(f"--scheduler {EXTRA_MESSAGE}") from None
    return distributed


def local_workers(address):
    """N for a ``local:N`` address, None for any other address.

    Raises:
        ValueError: naming ``--scheduler`` for ``local:`` without an integer N >= 1.
    """
    if not address.startswith(LOCAL_PREFIX):
        return None
    count = address[len(LOCAL_PREFIX):]
    if not count.isdigit() or int(count) < 1:
        raise ValueError(f"--scheduler {address}: expected local:N with N >= 1 worker "
                         f"processes, or a scheduler address such as tcp://host:8786.")
    return int(count)


@contextlib.contextmanager
def connect(address, worker_threads=1, timeout=CONNECT_TIMEOUT, chunk_size=CHUNK_SIZE):
    """A `DaskExecutor` on the scheduler at ``address``, or on a fresh ``local:N`` cluster.

    Args:
        address: ``local:N`` (a ``LocalCluster`` of N worker processes of one thread each,
            on 127.0.0.1, closed on exit), or a scheduler's address (``tcp://host:8786``).
        worker_threads: threads of each worker task's kernels (1: one core each).
        timeout: seconds to reach the scheduler and to wait for its first worker.
        chunk_size: as `DaskExecutor`.

    Raises:
        ImportError: ``distributed`` is not installed (naming the extra), or the workers
            cannot import reptile-np.
        ValueError: a malformed ``local:`` address, or workers that run other versions of
            reptile-np, NumPy, Numba, Dask or Python than this process.
        ConnectionError: no scheduler answered at ``address``, or it had no worker,
            within ``timeout`` seconds.
    """
    checks.integer("worker_threads", worker_threads)
    distributed = distributed_module()
    workers = local_workers(address)
    with contextlib.ExitStack() as stack:
        if workers is not None:
            import dask
            # No pre-spawn environment: it would be written into this process's (see above).
            with dask.config.set({"distributed.nanny.pre-spawn-environ": {}}):
                cluster = stack.enter_context(distributed.LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                    dashboard_address=None, silence_logs=logging.ERROR))
            target = cluster
        else:
            target = address
        try:
            client = stack.enter_context(distributed.Client(target, timeout=timeout))
        except (OSError, TimeoutError) as error:
            raise ConnectionError(f"--scheduler {address}: no Dask scheduler answered within "
                                  f"{timeout:g} s ({_first_line(error)}).") from None
        try:
            client.wait_for_workers(1, timeout=timeout)
        except TimeoutError:
            raise ConnectionError(f"--scheduler {address}: the scheduler has no workers "
                                  f"(waited {timeout:g} s); start some with dask worker "
                                  f"{address}.") from None
        check_workers(client, address)
        yield DaskExecutor(client, worker_threads, chunk_size)


def versions():
    """The versions a worker must share with the client for the same bits."""
    import numpy
    try:
        import numba
        numba_version = numba.__version__
    except ImportError:
        numba_version = "missing"
    import dask
    import distributed
    return {"reptile-np": __version__, "numpy": numpy.__version__, "numba": numba_version,
            "dask": dask.__version__, "distributed": distributed.__version__,
            "python": ".".join(map(str, sys.version_info[:3]))}


def check_workers(client, address):
    """Raise unless every worker runs this process's `versions`.

    Raises:
        ImportError: a worker cannot import reptile-np (it cannot even report).
        ValueError: the first worker and package whose version differs.
    """
    try:
        reports = client.run(versions)
    except Exception as error:  # whatever failed there (a missing module) arrives as itself
        raise ImportError(f"--scheduler {address}: the workers cannot run reptile-np "
                          f"({type(error).__name__}: {_first_line(error)}); install "
                          f"reptile-np[dist] {__version__} on them.") from None
    ours = versions()
    for worker, theirs in sorted(reports.items()):
        for package, version in ours.items():
            if theirs.get(package) != version:
                raise ValueError(f"--scheduler {address}: worker {worker} runs {package} "
                                 f"{theirs.get(package)}, this process {version}; results "
                                 f"would differ, so install the same versions on both.")


class DaskExecutor:
    """The executor (`reptile_np.workers`) that runs chunks of items on a Dask cluster.

    Args:
        client: a connected `distributed.Client`.
        worker_threads: threads of each worker task's kernels.
        chunk_size: items per scheduler task.
    """

    def __init__(self, client, worker_threads=1, chunk_size=CHUNK_SIZE):
        self.client = client
        self.worker_threads = checks.integer("worker_threads", worker_threads)
        self.chunk_size = checks.integer("chunk_size", chunk_size)

    def slots(self):
        """Tasks the cluster runs at once: its workers' threads together."""
        return max(1, sum(self.client.nthreads().values()))

    def map(self, function, items, context):
        """``function(context, item)`` for every item on the cluster, in order, lazily.

        Args:
            function: a module-level function (workers import it by name).
            items: a list (dealt out in even chunks when it is short) or any iterable
                (drawn lazily, `chunk_size` items or `CHUNK_BYTES` at a time, at most two
                chunks per worker thread waiting).
            context: sent once to every worker; each chunk works on its own copy, so a
                function may change it (an optimiser's state) even on a worker that runs
                several chunks at once.

        Raises:
            ConnectionError: a chunk's workers kept dying (KilledWorker), or the cluster
                has had no workers for `IDLE_TIMEOUT` seconds.
            Whatever ``function`` raised on a worker.
        """
        slots = self.slots()
        size = self.chunk_size
        if isinstance(items, (list, tuple)):
            size = max(1, min(size, math.ceil(len(items) / slots)))
        return self._in_order(function, iter(items), context, size, 2 * slots)

    def _in_order(self, function, items, context, size, in_flight):
        [shared] = self.client.scatter([context], broadcast=True, hash=False)
        settings = (kernels.get_backend(), self.worker_threads)
        pending = collections.deque()
        try:
            for chunk in _chunks(items, size):
                pending.append(self.client.submit(run_chunk, function, shared, chunk, *settings,
                                                  pure=False))
                if len(pending) == in_flight:
                    yield from self._result(pending.popleft())
            while pending:
                yield from self._result(pending.popleft())
        finally:
            for future in pending:
                future.cancel()
            shared.release()

    def _result(self, future):
        """The future's result; a lost chunk or an empty cluster as one ConnectionError."""
        distributed = distributed_module()
        idle_since = None
        while True:
            try:
                return future.result(timeout=IDLE_TIMEOUT / 6)
            except TimeoutError:
                if self.client.nthreads():
                    idle_since = None
                    continue
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > IDLE_TIMEOUT:
                    raise ConnectionError(f"the Dask cluster has had no workers for "
                                          f"{IDLE_TIMEOUT:g} s; start some, then rerun.") from None
            except (distributed.KilledWorker, concurrent.futures.CancelledError) as error:
                # KilledWorker: the chunk's own workers died; cancelled: so did every worker
                # that held the scattered context.
                future.cancel()
                raise ConnectionError(f"Dask gave up on a chunk of work: every worker that ran "
                                      f"it, or held its context, died ({_first_line(error)}).") \
                    from None


def _chunks(items, size):
    """Lists of ``size`` consecutive items, or fewer when they reach `CHUNK_BYTES`."""
    chunk, chunk_bytes = [], 0
    for item in items:
        chunk.append(item)
        chunk_bytes += _array_bytes(item)
        if len(chunk) == size or chunk_bytes >= CHUNK_BYTES:
            yield chunk
            chunk, chunk_bytes = [], 0
    if chunk:
        yield chunk


def _array_bytes(item):
    """The bytes of the NumPy arrays in ``item`` (itself, or in its tuples and lists)."""
    if isinstance(item, (tuple, list)):
        return sum(_array_bytes(part) for part in item)
    return getattr(item, "nbytes", 0)


def run_chunk(function, context, chunk, backend, worker_threads):
    """``[function(context, item) for item in chunk]`` on a worker, with its own copy of
    ``context``, after `prepare_worker`."""
    prepare_worker(backend, worker_threads)
    context = copy.deepcopy(context)
    return [function(context, item) for item in chunk]


_PREPARED = {}
"""What `prepare_worker` did in this worker process."""


def prepare_worker(backend, worker_threads):
    """Give this worker process the client's kernel backend and ``worker_threads`` threads
    for its kernels.

    Raises:
        ImportError: ``backend`` is "numba" and Numba does not import here (the NumPy
            kernels would give other last bits, silently).
    """
    if kernels.get_backend() != backend and kernels.set_backend(backend) != backend:
        raise ImportError(f"a Dask worker cannot run the {backend} kernels: Numba does not "
                          f"import there; install numba on the workers, or use --backend numpy.")
    if _PREPARED.get("threads") != worker_threads:
        kernels.set_threads(worker_threads)
        _PREPARED["threads"] = worker_threads
    if "memory" not in _PREPARED:
        _PREPARED["memory"] = keep_freed_memory()


def _first_line(error):
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
