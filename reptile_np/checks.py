"""Argument checks shared by the public API.

Each check raises a `ValueError` whose one sentence starts with the argument's name and
ends with the bad value (``"num_classes: expected an integer of at least 1, got 0."``),
so a user sees at once what to change. Arrays are described by dtype and shape, never
printed. The checks are cheap (type and attribute tests), so entry points can call them
on every call.
"""
import collections.abc
import math
import numbers

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
"""The dtypes the models, optimisers and kernels compute in."""


def describe(value):
    """A short description of ``value`` for an error message: a scalar's repr, an array's
    dtype and shape, a sequence's length, otherwise its type's name."""
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__} of length {len(value)}"
    if value is None or isinstance(value, (numbers.Number, str)):
        text = repr(value)
        if len(text) <= 40:
            return text
    return type(value).__name__


def integer(name, value, low=1, high=None, what=None):
    """Check that ``value`` is an integer (not a bool) from ``low`` to ``high``.

    Args:
        name: the argument's name, as the message shows it.
        value: the value given.
        low: the smallest value allowed.
        high: the largest value allowed, or None for no limit.
        what: what ``high`` is, shown in parentheses ("the classes in this split").

    Returns:
        ``value`` as a Python int.

    Raises:
        ValueError: naming ``name`` and ``value``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low \
            or (high is not None and value > high):
        if high is None:
            expected = f"an integer of at least {low}"
        else:
            expected = f"an integer from {low} to {high}" + (f" ({what})" if what else "")
        raise ValueError(f"{name}: expected {expected}, got {describe(value)}.")
    return int(value)


def number(name, value, positive=False):
    """Check that ``value`` is a finite real number (not a bool), ``> 0`` if ``positive``.

    Returns:
        ``value`` as a Python float.

    Raises:
        ValueError: naming ``name`` and ``value``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value) or (positive and not value > 0):
        expected = "a positive finite number" if positive else "a finite number"
        raise ValueError(f"{name}: expected {expected}, got {describe(value)}.")
    return float(value)


def generator(name, value):
    """Check that ``value`` is a `numpy.random.Generator`: every random draw goes through
    one, so a run is reproducible from its seed.

    Raises:
        ValueError: naming ``name`` and what was given instead.
    """
    if not isinstance(value, np.random.Generator):
        raise ValueError(f"{name}: expected a numpy.random.Generator "
                         f"(np.random.default_rng(seed)), got {describe(value)}.")


def float_dtype(name, value):
    """Check that ``value`` names float32 or float64, the dtypes the package computes in.

    Returns:
        The `numpy.dtype`.

    Raises:
        ValueError: naming ``name`` and the dtype given (None is refused too, although
            ``np.dtype(None)`` is float64: it is more likely a slip than a choice).
    """
    try:
        dtype = np.dtype(value) if value is not None else None
    except TypeError:
        dtype = None
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name}: expected float32 or float64, "
                         f"got {dtype if dtype is not None else describe(value)}.")
    return dtype


def same_length(name, x, y):
    """Check that ``y`` has one entry per example of ``x`` (one task's inputs and targets).

    Raises:
        ValueError: naming ``name`` and both lengths.
    """
    if len(x) != len(y):
        raise ValueError(f"{name}: expected y with len(x) = {len(x)} entries, got {len(y)}.")


def task(name, value):
    """Check that ``value`` is one task, an ``(x, y)`` pair with one target per example.

    Returns:
        ``(x, y)``.

    Raises:
        ValueError: naming ``name``.
    """
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{name}: expected an (x, y) pair, got {describe(value)}.")
    same_length(name, *value)
    return value


def tasks(name, value):
    """Check that ``value`` is a non-empty list (or tuple) of `task` pairs.

    Raises:
        ValueError: naming ``name`` (or ``name[i]`` for the first bad task).
    """
    if not isinstance(value, (list, tuple)) or len(value) == 0:
        raise ValueError(f"{name}: expected a non-empty list of (x, y) pairs, "
                         f"got {describe(value)}.")
    for index, pair in enumerate(value):
        task(f"{name}[{index}]", pair)


def mapping(name, value, what):
    """Check that ``value`` is a mapping (a dict, an ``np.load`` archive, ...).

    Args:
        what: what it maps, for the message ("parameter names to arrays").

    Raises:
        ValueError: naming ``name`` and the type given.
    """
    if not isinstance(value, collections.abc.Mapping):
        raise ValueError(f"{name}: expected a mapping of {what}, got {describe(value)}.")
