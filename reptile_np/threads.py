"""How many threads NumPy's BLAS uses, read and set from inside the running process.

Our matrix products (the convolutions' and the linear layers') run in NumPy's BLAS,
which for the NumPy wheels is OpenBLAS. Its thread count is read from
``OPENBLAS_NUM_THREADS`` (default: every core) when NumPy loads, and can be changed
afterwards only through OpenBLAS's own C functions, which this module calls with
ctypes (no extra package needed; threadpoolctl does the same).

Why the command line pins it to one thread: the Numba kernels make their own threads
(`reptile_np.kernels.set_threads`) and call OpenBLAS from each of them on a piece of
work whose bounds depend on the shapes alone. OpenBLAS's own threads would split a
product's sums in a way that depends on its kernel (chosen for the CPU, or forced with
``OPENBLAS_CORETYPE``) and thread count (with the Haswell kernel, float32 convolution
outputs differ between 1 and 2 threads by up to 4e-4 relative), and they spin while they
wait for work, so beside another busy process an Omniglot training ran at 0.3 to 17
meta-iterations/s with 2 threads.

Nothing here changes ``OPENBLAS_CORETYPE`` or any other environment variable.
"""
import ctypes
import glob
import os

import numpy as np

# OpenBLAS's C entry points. The wheels of NumPy >= 2 ship it as "scipy_openblas" with
# prefixed, 64-bit-integer names; older ones use the plain names (with or without "64_").
_SYMBOL_FORMS = ("scipy_{}64_", "{}64_", "{}")


def _loaded_openblas_paths():
    """Paths of the OpenBLAS libraries mapped into this process (Linux), else the ones
    shipped beside NumPy (they are loaded, since NumPy is imported)."""
    paths = []
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                path = line.rstrip("\n").split(" ", 5)[-1].strip()
                if "openblas" in os.path.basename(path).lower() and path not in paths:
                    paths.append(path)
    except OSError:
        pass
    if not paths:
        numpy_dir = os.path.dirname(np.__file__)
        for pattern in ("numpy.libs/*openblas*", ".dylibs/*openblas*"):
            paths += glob.glob(os.path.join(os.path.dirname(numpy_dir), pattern))
            paths += glob.glob(os.path.join(numpy_dir, pattern))
    return paths


class _OpenBLAS:
    """The three OpenBLAS functions we use, bound to one loaded library."""

    def __init__(self, library, form, names):
        self.path = library._name
        self._library, self._form = library, form
        self._set, self._get, self._corename = (getattr(library, name) for name in names)
        self._set.argtypes, self._set.restype = [ctypes.c_int], None
        self._get.argtypes, self._get.restype = [], ctypes.c_int
        self._corename.argtypes, self._corename.restype = [], ctypes.c_char_p

    def set_threads(self, count):
        self._set(int(count))

    def threads(self):
        return int(self._get())

    def function(self, name):
        """The library's C function ``name`` (in this library's naming form), or None."""
        return getattr(self._library, self._form.format(name), None)

    def integer(self):
        """The C integer type of the library's BLAS sizes: 64 bits in an ILP64 build."""
        config = self.function("openblas_get_config")
        if config is None:
            return ctypes.c_int64 if "64_" in self._form else ctypes.c_int
        config.argtypes, config.restype = [], ctypes.c_char_p
        return ctypes.c_int64 if b"USE64BITINT" in (config() or b"") else ctypes.c_int

    def kernel(self):
        name = self._corename()
        return name.decode("ascii", "replace") if name else "unknown"


def _find_openblas():
    """The `_OpenBLAS` NumPy uses, or None (another BLAS, or not found)."""
    for path in _loaded_openblas_paths():
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        for form in _SYMBOL_FORMS:
            names = [form.format(f"openblas_{what}") for what in
                     ("set_num_threads", "get_num_threads", "get_corename")]
            if all(hasattr(library, name) for name in names):
                return _OpenBLAS(library, form, names)
    return None


_openblas = _find_openblas()


def set_threads(count):
    """Run NumPy's BLAS (OpenBLAS) with ``count`` threads from now on.

    Args:
        count: an integer >= 1.

    Returns:
        True if the thread count was set; False if NumPy's BLAS is not an OpenBLAS
        this module can reach (then the environment's setting stays in force).

    Raises:
        ValueError: ``count`` is not an integer >= 1.
    """
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"count must be an integer of at least 1, got {count!r}.")
    if _openblas is None:
        return False
    _openblas.set_threads(count)
    return True


def openblas_function(name):
    """NumPy's OpenBLAS C function ``name`` (e.g. "cblas_sgemm"), as a ctypes function
    without a signature, or None when NumPy's BLAS is not an OpenBLAS this module reaches."""
    return None if _openblas is None else _openblas.function(name)


def openblas_integer():
    """The ctypes integer type of NumPy's OpenBLAS sizes (``c_int64`` for the NumPy >= 2
    wheels' ILP64 build); None without a reachable OpenBLAS."""
    return None if _openblas is None else _openblas.integer()


def blas_info():
    """What runs NumPy's products: ``{"library", "kernel", "threads"}``.

    ``library`` is the OpenBLAS file (None if not found), ``kernel`` the OpenBLAS core
    in use (e.g. "Haswell", "SkylakeX"), ``threads`` its current thread count (None
    when unknown).
    """
    if _openblas is None:
        return {"library": None, "kernel": "unknown", "threads": None}
    return {"library": _openblas.path, "kernel": _openblas.kernel(), "threads": _openblas.threads()}


def describe():
    """One phrase for progress lines, e.g. "1 BLAS thread (OpenBLAS Haswell)"."""
    info = blas_info()
    if info["threads"] is None:
        return "BLAS threads as the environment sets them (not OpenBLAS)"
    plural = "" if info["threads"] == 1 else "s"
    return f"{info['threads']} BLAS thread{plural} (OpenBLAS {info['kernel']})"
