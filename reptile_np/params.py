"""One flat parameter vector per model, seen through named views.

A model owns no weights. Its `ParameterLayout` lists every parameter tensor by
its PyTorch ``state_dict`` name and shape, and places them one after another in a
flat 1-D vector ``theta``. Reptile's arithmetic is then plain vector algebra
(``theta += eps * (phi - theta)``), and `views` / `state_dict` give the named
tensors for layers, saving and cross-checking.
"""
import numpy as np

from . import checks
from .checks import FLOAT_DTYPES


class ParameterLayout:
    """Names, shapes and offsets of the tensors packed into a flat vector.

    Args:
        named_shapes: sequence of ``(name, shape)`` in module order.
    """

    def __init__(self, named_shapes):
        self.names = tuple(name for name, _ in named_shapes)
        self.shapes = tuple(tuple(shape) for _, shape in named_shapes)
        sizes = [int(np.prod(shape)) for shape in self.shapes]
        self.offsets = tuple(int(o) for o in np.concatenate([[0], np.cumsum(sizes)]))
        self.size = self.offsets[-1]

    def check(self, theta, argument="theta"):
        """Raise ValueError unless ``theta`` is a 1-D float32/float64 vector of `size` entries."""
        if not isinstance(theta, np.ndarray) or theta.ndim != 1 or theta.shape[0] != self.size:
            given = theta.shape if isinstance(theta, np.ndarray) else type(theta).__name__
            raise ValueError(f"{argument} must be a 1-D array of {self.size} parameters, got {given}.")
        if theta.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{argument} must be float32 or float64, got {theta.dtype}.")

    def views(self, theta):
        """The named tensors as views into ``theta`` (writing to a view writes to theta)."""
        return [theta[start:stop].reshape(shape) for start, stop, shape
                in zip(self.offsets[:-1], self.offsets[1:], self.shapes)]

    def state_dict(self, theta):
        """``{name: array}`` in module order, each a copy, PyTorch names and layouts."""
        self.check(theta)
        return {name: view.copy() for name, view in zip(self.names, self.views(theta))}

    def flatten(self, state_dict, dtype=None):
        """Inverse of `state_dict`: pack named tensors into a new flat vector.

        Args:
            state_dict: mapping with exactly the layout's names and shapes (array-likes,
                e.g. NumPy arrays or CPU tensors converted with ``.numpy()``).
            dtype: dtype of the result, float32 or float64. Default: the tensors' own
                dtype, which must then be one of those two and the same for every tensor:
                mixed dtypes are refused rather than resolved by the order of the entries.

        Raises:
            ValueError: naming ``state_dict`` (or the entry) for a non-mapping, missing or
                unexpected names, a wrong shape, or mixed or non-float dtypes without
                ``dtype``; naming ``dtype`` for a dtype other than float32/float64.
        """
        checks.mapping("state_dict", state_dict, "parameter names to arrays")
        if dtype is not None:
            dtype = checks.float_dtype("dtype", dtype)
        missing = [name for name in self.names if name not in state_dict]
        extra = [name for name in state_dict if name not in self.names]
        if missing or extra:
            raise ValueError(f"state_dict must have exactly the model's parameters: "
                             f"missing {missing}, unexpected {extra}.")
        arrays = [np.asarray(state_dict[name]) for name in self.names]
        for name, shape, array in zip(self.names, self.shapes, arrays):
            if array.shape != shape:
                raise ValueError(f"state_dict[{name!r}] must have shape {shape}, got {array.shape}.")
        if dtype is None:
            dtype = self._common_dtype(arrays)
        return np.concatenate([a.ravel() for a in arrays]).astype(dtype, copy=False)

    def _common_dtype(self, arrays):
        """The one float32/float64 dtype of ``arrays`` (the layout's tensors, in order)."""
        first = {}  # dtype -> name of its first tensor
        for name, array in zip(self.names, arrays):
            first.setdefault(array.dtype, name)
        if len(first) > 1:
            (dtype_a, name_a), (dtype_b, name_b) = list(first.items())[:2]
            raise ValueError(f"state_dict: expected one dtype for every tensor (or an explicit "
                             f"dtype=), got {dtype_a} in {name_a!r} and {dtype_b} in {name_b!r}.")
        (dtype, name), = first.items()
        if dtype not in FLOAT_DTYPES:
            raise ValueError(f"state_dict: expected float32 or float64 tensors (or an explicit "
                             f"dtype=), got {dtype} in {name!r}.")
        return dtype
