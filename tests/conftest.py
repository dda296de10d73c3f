"""Shared fixtures: a seeded Generator, the kernel backend switch, the shared Omniglot data."""
import importlib
import time
from pathlib import Path

import numpy as np
import pytest

from reptile_np import kernels, threads
from reptile_np.data.omniglot import load_characters

# Tests read the data from ../shared/data beside the repository, never from a copy in it.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
OMNIGLOT_DIR = SHARED_DATA / "omniglot"


@pytest.fixture
def rng():
    """A fresh ``numpy.random.Generator`` seeded with 0 (draws float64 by default)."""
    return np.random.default_rng(0)


def _numba_kernels_import():
    try:
        importlib.import_module("reptile_np.kernels.fast")
    except ImportError:
        return False
    return True


@pytest.fixture(params=["numpy", "numba"])
def backend(request):
    """Run the test once per kernel backend, restoring the previous one afterwards.

    The "numba" run is skipped when `reptile_np.kernels.fast` does not import.
    """
    if request.param == "numba" and not _numba_kernels_import():
        pytest.skip("reptile_np.kernels.fast (Numba kernels) does not import")
    previous = kernels.get_backend()
    kernels.set_backend(request.param)
    yield request.param
    kernels.set_backend(previous)


@pytest.fixture
def numpy_backend():
    """Force the NumPy reference kernels for one test, restoring the previous backend."""
    previous = kernels.get_backend()
    kernels.set_backend("numpy")
    yield "numpy"
    kernels.set_backend(previous)


@pytest.fixture(scope="session")
def omniglot_cache(tmp_path_factory):
    """Decode the shared Omniglot release once per test session into a temporary cache."""
    if not OMNIGLOT_DIR.is_dir():
        pytest.skip(f"no Omniglot data in {OMNIGLOT_DIR}")
    pytest.importorskip("PIL")
    cache_dir = tmp_path_factory.mktemp("omniglot_cache")
    start = time.perf_counter()
    load_characters(OMNIGLOT_DIR, cache_dir=cache_dir)
    print(f"full Omniglot decode: {time.perf_counter() - start:.2f} s")
    return cache_dir


def record_omniglot_decodes(monkeypatch, decoded):
    """Make the Omniglot decoder return ``decoded`` at once; returns the list of the data
    directories it is then called with (tests check whether and where loaders decode)."""
    from reptile_np.data import omniglot
    calls = []

    def decode(data_dir, *args, **kwargs):
        calls.append(Path(data_dir))
        return decoded

    monkeypatch.setattr(omniglot, "decode_omniglot", decode)
    return calls


@pytest.fixture(scope="module")
def one_blas_thread():
    """One BLAS thread for a module's tests, as the command line runs: two contend with
    any other busy process on a 2-core machine (an in-process evaluation then takes
    seconds instead of a fraction of one). The previous count is restored afterwards."""
    before = threads.blas_info()["threads"]
    threads.set_threads(1)
    yield
    if before:
        threads.set_threads(before)
