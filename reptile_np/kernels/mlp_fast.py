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
* tanh is ``1 - 2 / (exp(2 z) + 1)`` with an exp written here (`_tanh_in_place`) so
  that LLVM vectorises it: libm's tanh and exp are scalar calls, and without Intel's
  SVML Numba has no vector version of either. Calling libm's exp took a third of the
  sine loop's time. The identity is within a few units in the last place of 1 of tanh;
  near z = 0 that is a larger relative error than ``np.tanh``'s.

Scalar constants in the jitted code (``1``, ``2``) are float64 in Numba, so some
intermediate values are float64 for float32 parameters (tanh is computed in float64
for both); every array stays in phi's dtype. Results equal the reference to rounding,
not bit for bit.
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
    """out (C, R) = matrix (R, C) transposed, written row by row: contiguous stores and
    strided loads took 0.6 us for 64 x 64 float32, the other way round 1.0 us."""
    for c in range(matrix.shape[1]):
        for r in range(matrix.shape[0]):
            out[c, r] = matrix[r, c]


# exp(u) = 2^n * exp(r), n = round(u / ln 2), |r| <= ln(2) / 2, in float64 (fdlibm's
# constants). Adding _SHIFTER = 1.5 * 2^52 rounds u / ln 2 to the integer n and leaves n
# in the low bits of the sum, from where 2^n is made by integer arithmetic on the bits --
# no float-to-integer conversion, which AVX2 cannot vectorise for 64-bit integers.
_LOG2_E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01     # ln 2 = _LN2_HI + _LN2_LO; n * _LN2_HI is exact
_LN2_LO = 1.90821492927058770002e-10
_SHIFTER = 6755399441055744.0            # 1.5 * 2^52
_SHIFTER_BITS = 0x4338000000000000       # its bits as an int64
_EXP_ARGUMENT_BOUND = 708.0              # 2^n stays a normal float64 for |u| <= 708
# 1/k! for k = 12 ... 2: the Taylor polynomial of exp(r) - 1 - r, degree 12, whose
# remainder r^13/13! is below 1.7e-16 (0.8 units in the last place of exp) for
# |r| <= ln(2) / 2; degree 11 made tanh 19 units wrong, degree 13 gained nothing.
_EXP_TAYLOR = (2.08767569878681e-09, 2.505210838544172e-08,
               2.755731922398589e-07, 2.7557319223985893e-06, 2.48015873015873e-05,
               0.0001984126984126984, 0.001388888888888889, 0.008333333333333333,
               0.041666666666666664, 0.16666666666666666, 0.5)


@njit(**_JIT_OPTIONS)
def _tanh_in_place(z, polynomial, powers):
    """z (B, W), C-contiguous -> tanh(z) = 1 - 2 / (exp(2 z) + 1) in place.

    ``polynomial`` and ``powers`` are float64 scratch vectors of at least z.size: the
    three loops below run along them and z so that each vectorises (every step is an
    add, multiply, compare or integer shift). NaN stays NaN (the clamps compare with
    ``>``/``<``, which NaN fails) and +-inf give +-1, as ``np.tanh``.
    """
    values = z.reshape(-1)
    count = values.size
    bits = powers.view(np.int64)
    for i in range(count):
        u = values[i] + values[i]
        if u > _EXP_ARGUMENT_BOUND:
            u = _EXP_ARGUMENT_BOUND
        if u < -_EXP_ARGUMENT_BOUND:
            u = -_EXP_ARGUMENT_BOUND
        shifted = u * _LOG2_E + _SHIFTER
        n = shifted - _SHIFTER
        r = (u - n * _LN2_HI) - n * _LN2_LO
        p = _EXP_TAYLOR[0]
        for c in _EXP_TAYLOR[1:]:
            p = p * r + c
        polynomial[i] = (p * r) * r + r + 1.0
        powers[i] = shifted
    for i in range(count):          # the bits of 2^n: (n + 1023) << 52
        bits[i] = (bits[i] - _SHIFTER_BITS + 1023) << 52
    for i in range(count):
        values[i] = 1.0 - 2.0 / (polynomial[i] * powers[i] + 1.0)


@njit(**_JIT_OPTIONS)
def _relu_in_place(z):
    """z (B, W) -> max(z, 0) in place (as np.maximum: NaN stays, -inf -> 0)."""
    for n in range(z.shape[0]):
        for k in range(z.shape[1]):
            value = z[n, k]
            z[n, k] = value if not value < 0 else 0


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
    polynomial = np.empty(batch * widths.max(), dtype=np.float64)   # _tanh_in_place's scratch
    powers = np.empty_like(polynomial)

    for step in range(x_batches.shape[0]):
        if weight_decay != 1:
            phi *= weight_decay
        activations[0][:, :] = x_batches[step]
        for l in range(num_layers):                         # z_l = a_{l-1} W_l^T + b_l
            weight, bias = _layer(phi, starts, widths, l)
            _transpose_into(transposed[l], weight)
            activations[l + 1][:, :] = bias
            _add_products(activations[l + 1], activations[l], transposed[l])
            if l < num_layers - 1 and activation == _TANH:
                _tanh_in_place(activations[l + 1], polynomial, powers)
            elif l < num_layers - 1:
                _relu_in_place(activations[l + 1])

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
