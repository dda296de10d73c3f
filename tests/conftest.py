"""Shared fixtures: a seeded Generator and the kernel backend switch."""
import importlib

import numpy as np
import pytest

from reptile_np import kernels


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
