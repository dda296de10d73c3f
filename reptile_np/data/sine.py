"""Sine-wave regression tasks (the paper's section 3 case study and the blog demo).

A task is ``f(x) = amplitude * sin(x + phase)`` with amplitude ~ U[0.1, 5) and
phase ~ U[0, 2 pi), observed on the fixed grid of 50 points ``linspace(-5, 5, 50)``.
"""
import numpy as np

GRID_POINTS = 50
X_RANGE = (-5.0, 5.0)
AMPLITUDE_RANGE = (0.1, 5.0)
PHASE_RANGE = (0.0, 2 * np.pi)


def sine_grid(dtype=np.float64):
    """The 50 input points as a (50, 1) column."""
    return np.linspace(*X_RANGE, GRID_POINTS, dtype=dtype)[:, None]


def sample_sine_task(rng):
    """(amplitude, phase) of a random task."""
    return rng.uniform(*AMPLITUDE_RANGE), rng.uniform(*PHASE_RANGE)


def sine_values(x, amplitude, phase):
    """``amplitude * sin(x + phase)``, the same shape and dtype as x."""
    return (amplitude * np.sin(x + phase)).astype(x.dtype)


def sine_task(rng, dtype=np.float32):
    """A random task on the grid: (x, y), both (50, 1) of ``dtype``."""
    x = sine_grid(dtype)
    return x, sine_values(x, *sample_sine_task(rng))
