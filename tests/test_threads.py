"""`reptile_np.threads`: reading and setting NumPy's BLAS thread count from inside the process."""
import os

import numpy as np
import pytest

from reptile_np import threads

needs_openblas = pytest.mark.skipif(threads.blas_info()["threads"] is None,
                                    reason="NumPy's BLAS is not an OpenBLAS this module can reach")


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
