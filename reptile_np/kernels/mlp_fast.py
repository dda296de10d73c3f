"""Numba twin of `mlp_reference.mlp_sgd_inner_loop`: a small MLP's whole inner loop in
one compiled call.

Why: a step of the sine MLP (1-64-64-1, batches of 10) is ~130k multiply-adds spread
over ~25 NumPy calls, so the layer-by-layer loop spends most of its time in Python
and call overhead. Here every step of the inner loop runs inside one call.

How it stays fast without ``fastmath`` (which would let LLVM reorder sums):

* Matrix products are loops along contiguous rows that LLVM vectorises as they are
  (`_add_products`): at these sizes a BLAS call costs more than its arithmetic, and
  Numba's ``np.dot`` would make SciPy a dependency.
* The forward pass multiplies by a transposed copy of each weight, made once per
  step, so that its loop also runs along contiguous rows.
* tanh is ``1 - 2 / (exp(2 z) + 1)``: libm's tanh costs over twice an exp here, and
  neither vectorises. The identity is within a few units in the last place of 1 of
  tanh; near z = 0 that is a larger relative error than ``np.tanh``'s.

Scalar constants in the jitted code (``1``, ``2``) are float64 in Numba, so some
intermediate values are float64 for float32 parameters; every array stays in phi's
dtype. Results equal the reference to rounding, not bit for bit.
"""
import numpy as np
from numba import njit

from .fast import _JIT_OPTIONS
from . import checks
from .checks import ACTIVATIONS

_TANH = ACTIVATIONS.index("tanh")


@njit(**_JIT_OPTIONS)
def _add_products(out, coefficients, rows):
    """``out (R, W) += coefficients (R, J) @ rows (J, W)``.

    Every sum is added as ``out + g_0 + g_1 + ...`` and then the J % 4 leftover terms
    one by one, where ``g_i = (t_4i + t_4i+1) + (t_4i+2 + t_4i+3)`` and ``t_j =
    coefficients[r, j] * rows[j, k]``. The loop orders below all add exactly that:

    * wide outputs loop along the row, which LLVM vectorises, two rows of ``out`` per
      pass (the odd last row alone): a load of four ``rows`` entries serves eight
      products and a load and store of ``out`` four; memory traffic bounds this loop;
    * narrow outputs (W < 8, e.g. a regression head) loop along j, as a vectorised
      loop along so short a row costs more to set up than it computes.
    """
    num_out, num_terms = coefficients.shape
    width = rows.shape[1]
    grouped = num_terms - num_terms % 4
    if width < 8:
        for r in range(num_out):
            for k in range(width):
                total = out[r, k]
                for j in range(0, grouped, 4):
                    total += ((coefficients[r, j] * rows[j, k]
                               + coefficients[r, j + 1] * rows[j + 1, k])
                              + (coefficients[r, j + 2] * rows[j + 2, k]
                                 + coefficients[r, j + 3] * rows[j + 3, k]))
                for j in range(grouped, num_terms):
                    total += coefficients[r, j] * rows[j, k]
                out[r, k] = total
        return
    for r in range(0, num_out - 1, 2):
        for j in range(0, grouped, 4):
            a0, a1 = coefficients[r, j], coefficients[r, j + 1]
            a2, a3 = coefficients[r, j + 2], coefficients[r, j + 3]
            b0, b1 = coefficients[r + 1, j], coefficients[r + 1, j + 1]
            b2, b3 = coefficients[r + 1, j + 2], coefficients[r + 1, j + 3]
            for k in range(width):
                m0, m1, m2, m3 = rows[j, k], rows[j + 1, k], rows[j + 2, k], rows[j + 3, k]
                out[r, k] += (a0 * m0 + a1 * m1) + (a2 * m2 + a3 * m3)
                out[r + 1, k] += (b0 * m0 + b1 * m1) + (b2 * m2 + b3 * m3)
    if num_out % 2:
        r = num_out - 1
        for j in range(0, grouped, 4):
            a0, a1 = coefficients[r, j], coefficients[r, j + 1]
            a2, a3 = coefficients[r, j + 2], coefficients[r, j + 3]
            for k in range(width):
                out[r, k] += ((a0 * rows[j, k] + a1 * rows[j + 1, k])
                              + (a2 * rows[j + 2, k] + a3 * rows[j + 3, k]))
    for r in range(num_out):
        for j in range(grouped, num_terms):
            c = coefficients[r, j]
            for k in range(width):
                out[r, k] += c * rows[j, k]


@njit(**_JIT_OPTIONS)
def _transpose_into(out, matrix):
    """out (C, R) = matrix (R, C) transposed."""
    for r in range(matrix.shape[0]):
        for c in range(matrix.shape[1]):
            out[c, r] = matrix[r, c]


@njit(**_JIT_OPTIONS)
def _activate(z, activation):
    """z (B, W) -> act(z) in place: tanh by one exp (see the module docstring), or relu."""
    for n in range(z.shape[0]):
        for k in range(z.shape[1]):
            value = z[n, k]
            if activation == _TANH:
                z[n, k] = 1 - 2 / (np.exp(value + value) + 1)
            else:
                z[n, k] = value if not value < 0 else 0     # as np.maximum: NaN stays, -inf -> 0


@njit(**_JIT_OPTIONS)
def _times_activation_slope(delta, a, activation):
    """delta (B, W) *= act'(a) in place, from the activation's output a:
    1 - a^2 (tanh) or [a > 0] (relu)."""
    for n in range(delta.shape[0]):
        for k in range(delta.shape[1]):
            if activation == _TANH:
                delta[n, k] *= 1 - a[n, k] * a[n, k]
            else:
                delta[n, k] *= a[n, k] > 0


@njit(**_JIT_OPTIONS)
def _layer(flat, starts, widths, l):
    """Layer l's (weight (out, in), bias (out,)) as views into ``flat`` (phi or grad)."""
    fan_in, fan_out = widths[l], widths[l + 1]
    bias_start = starts[l] + fan_out * fan_in
    return flat[starts[l]:bias_start].reshape((fan_out, fan_in)), flat[bias_start:starts[l + 1]]


@njit(**_JIT_OPTIONS)
def _sgd_steps(phi, widths, activation, x_batches, y_batches, lr, loss_scale, weight_decay):
    """The loop of `mlp_sgd_inner_loop`; ``activation`` is an index into `ACTIVATIONS`,
    ``loss_scale`` is 2 (or 2 / count for "mean") and the scalars are of phi's dtype."""
    num_layers = widths.size - 1
    batch = x_batches.shape[1]
    starts = np.zeros(num_layers + 1, dtype=np.int64)       # layer l begins at starts[l]
    for l in range(num_layers):
        starts[l + 1] = starts[l] + widths[l + 1] * (widths[l] + 1)
    grad = np.empty_like(phi)
    # a_l and d_l = dloss/dz_l, each (B, widths[l]); W_l^T (widths[l], widths[l + 1]).
    activations = [np.empty((batch, widths[l]), dtype=phi.dtype) for l in range(num_layers + 1)]
    deltas = [np.empty((batch, widths[l]), dtype=phi.dtype) for l in range(num_layers + 1)]
    transposed = [np.empty((widths[l], widths[l + 1]), dtype=phi.dtype) for l in range(num_layers)]

    for step in range(x_batches.shape[0]):
        if weight_decay != 1:
            phi *= weight_decay
        activations[0][:, :] = x_batches[step]
        for l in range(num_layers):                         # z_l = a_{l-1} W_l^T + b_l
            weight, bias = _layer(phi, starts, widths, l)
            _transpose_into(transposed[l], weight)
            activations[l + 1][:, :] = bias
            _add_products(activations[l + 1], activations[l], transposed[l])
            if l < num_layers - 1:
                _activate(activations[l + 1], activation)

        deltas[num_layers][:, :] = loss_scale * (activations[num_layers] - y_batches[step])
        for l in range(num_layers - 1, -1, -1):             # dW_l, db_l, then d_{l-1}
            weight, _ = _layer(phi, starts, widths, l)
            dweight, dbias = _layer(grad, starts, widths, l)
            dweight[:, :] = 0
            _add_products(dweight, deltas[l + 1].T, activations[l])
            dbias[:] = 0
            for n in range(batch):
                dbias += deltas[l + 1][n]
            if l > 0:
                deltas[l][:, :] = 0
                _add_products(deltas[l], deltas[l + 1], weight)
                _times_activation_slope(deltas[l], activations[l], activation)
        for k in range(phi.size):
            phi[k] -= lr * grad[k]


def mlp_sgd_inner_loop(phi, widths, activation, x_batches, y_batches, lr, reduction, weight_decay):
    """Twin of `mlp_reference.mlp_sgd_inner_loop`: same arguments, same results to rounding."""
    checks.mlp_sgd_inner_loop(phi, widths, activation, x_batches, y_batches, reduction)
    loss_scale = 2 / (y_batches.shape[1] * y_batches.shape[2]) if reduction == "mean" else 2
    real = phi.dtype.type
    _sgd_steps(phi, np.asarray(widths, dtype=np.int64), ACTIVATIONS.index(activation),
               x_batches, y_batches, real(lr), real(loss_scale), real(weight_decay))
