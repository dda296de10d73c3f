"""`reptile_np.threads`: reading and setting NumPy's BLAS thread count from inside the process."""
import os
import subprocess
import sys

import numpy as np
import pytest

from reptile_np import kernels, threads

needs_openblas = pytest.mark.skipif(threads.blas_info()["threads"] is None,
                                    reason="NumPy's BLAS is not an OpenBLAS this module can reach")


@pytest.fixture
def numba_backend_restored():
    pytest.importorskip("numba")
    previous = kernels.get_backend()
    kernels.set_backend("numba")
    yield
    kernels.set_backend(previous)


@pytest.fixture
def restore_threads():
    before = threads.blas_info()["threads"]
    yield
    if before is not None:
        threads.set_threads(before)


@needs_openblas
@pytest.mark.usefixtures("restore_threads")
@pytest.mark.parametrize("count", [1, 2, 3])
def test_set_threads_changes_what_openblas_reports(count):
    assert threads.set_threads(count) is True
    assert threads.blas_info()["threads"] == count
    plural = "thread" if count == 1 else "threads"
    assert threads.describe().startswith(f"{count} BLAS {plural} (OpenBLAS ")


@needs_openblas
def test_blas_info_agrees_with_threadpoolctl():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    info = threads.blas_info()
    # Other packages (e.g. a deep-learning framework) may load OpenBLAS libraries of their
    # own; compare the one NumPy uses.
    blas = [entry for entry in threadpoolctl.threadpool_info()
            if os.path.realpath(entry["filepath"]) == os.path.realpath(info["library"])]
    assert blas, "threadpoolctl does not find NumPy's OpenBLAS"
    assert (info["threads"], info["kernel"]) == (blas[0]["num_threads"], blas[0]["architecture"])


@pytest.mark.parametrize("count", [0, -1, 1.5, True, "2", None])
def test_set_threads_rejects_what_is_not_a_positive_integer(count):
    with pytest.raises(ValueError, match="count must be an integer of at least 1"):
        threads.set_threads(count)


def test_set_threads_accepts_numpy_integers(restore_threads):
    assert threads.set_threads(np.int64(1)) is (threads.blas_info()["threads"] is not None)


# --------------------------------------------------------------------------------------
# The kernels' own threads (`reptile_np.kernels.set_threads`): the same bits for any count.

_META_ITERATION = """
import sys
import numpy as np
from reptile_np import kernels, meta, models, optim
kernels.set_backend("numba")
kernels.set_threads({threads})
dtype = np.{dtype}
rng = np.random.default_rng(0)
model = models.{model}(num_classes=5)
theta = model.init(rng, dtype)
optimizer = optim.Adam(model.num_params, lr=1e-3, beta1=0.0, dtype=dtype)
tasks = [(rng.standard_normal((15,) + {shape}).astype(dtype), np.repeat(np.arange(5), 3))
         for _ in range(2)]
theta = meta.reptile_step(model, theta, tasks, optimizer, rng, inner_batch={batch},
                          inner_iters=2, epsilon=0.5)
np.savez(sys.argv[1], theta=theta, m=optimizer.m, v=optimizer.v)
"""


def _meta_iteration_in_a_process(tmp_path, model, dtype, count):
    """theta and the Adam moments after one Reptile meta-iteration (2 tasks, 2 Adam steps),
    computed in a fresh process whose kernels run on ``count`` threads. Numba's pool is
    made large enough for 3 threads; the BLAS kernel variables (OPENBLAS_CORETYPE, ...)
    pass through as the environment sets them."""
    shape, batch = ((1, 28, 28), 10) if model == "omniglot_cnn" else ((3, 84, 84), 5)
    code = _META_ITERATION.format(threads=count, dtype=dtype, model=model, shape=shape,
                                  batch=batch)
    out = tmp_path / f"{model}-{dtype}-{count}.npz"
    env = dict(os.environ, NUMBA_NUM_THREADS="3")
    subprocess.run([sys.executable, "-c", code, str(out)], env=env, check=True, timeout=600)
    with np.load(out) as archive:
        return {name: archive[name] for name in archive.files}


@pytest.mark.parametrize("model", ["omniglot_cnn", "miniimagenet_cnn"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_meta_iteration_gives_the_same_bits_on_1_2_and_3_threads(tmp_path, model, dtype):
    """The Numba kernels cut their work by the shapes alone (product tiles, examples,
    channels), so theta and the optimiser state after a whole meta-iteration are the same
    bits for any thread count, on whichever OpenBLAS kernel the environment selects
    (CI runs the suite with OPENBLAS_CORETYPE=Haswell set and unset)."""
    pytest.importorskip("numba")
    one = _meta_iteration_in_a_process(tmp_path, model, dtype, 1)
    for count in (2, 3):
        other = _meta_iteration_in_a_process(tmp_path, model, dtype, count)
        for name in one:
            np.testing.assert_array_equal(other[name], one[name], err_msg=f"{name}, {count} threads")


@pytest.mark.parametrize("count", [0, 1.5, True, "2"])
def test_kernel_threads_refuse_what_is_not_a_positive_integer(count):
    with pytest.raises(ValueError, match="threads: expected an integer of at least 1"):
        kernels.set_threads(count)


def test_kernel_threads_refuse_more_than_numbas_pool(numba_backend_restored):
    import numba
    too_many = numba.config.NUMBA_NUM_THREADS + 1
    with pytest.raises(ValueError, match=f"threads must be at most {too_many - 1} "
                                         f"\\(NUMBA_NUM_THREADS"):
        kernels.set_threads(too_many)
    assert kernels.get_threads() != too_many
