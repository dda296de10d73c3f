"""A small MLP's whole SGD inner loop in one kernel call, with `meta.inner_loop`'s contract.

One inner step of the sine-wave MLP (1-64-64-1, batches of 10) is about 25 NumPy calls
with little arithmetic each, so Python's overhead dominates it. `mlp_sgd_inner_loop` hands
every step of the loop to `kernels.mlp_sgd_inner_loop` at once (Numba, or its NumPy twin
under the "numpy" backend). Its result equals `meta.inner_loop`'s up to rounding: the
kernel computes tanh as ``1 - 2 / (exp(2z) + 1)``. `tests/test_mlp_loop.py` holds the two
equal.

It is chosen by whoever knows the model is such an MLP and the optimiser is SGD (the sine
demo), never guessed by the algorithm::

    theta = meta.reptile_step(model, theta, tasks, SGD(0.02), rng, 10, 5, epsilon,
                              reduction="mean", inner_loop=fused.mlp_sgd_inner_loop)
"""
import numpy as np

from . import kernels
from .optim import SGD


def mlp_sgd_inner_loop(model, theta, x, y, batches, optimizer, reduction="sum", weight_decay=1.0):
    """`meta.inner_loop` for a multilayer perceptron under plain SGD, in one kernel call.

    Args:
        model: a `Sequential` whose `mlp_structure` is not None (e.g. `models.sine_mlp`).
        optimizer: an `optim.SGD` (its learning rate is used).
        batches: index arrays of one length (as `meta.minibatches` draws them).
        Others: as `meta.inner_loop`.

    Returns:
        phi, the adapted parameters.

    Raises:
        ValueError: naming ``model``, ``optimizer`` or ``batches`` when this loop does not
            cover them (use `meta.inner_loop`), or as `meta.inner_loop` for the data.
    """
    structure = model.mlp_structure()
    if structure is None:
        raise ValueError("model: expected a multilayer perceptron with squared error "
                         "(Linear, activation, ..., Linear; loss 'mse'), as models.sine_mlp "
                         "builds; use meta.inner_loop for other models.")
    if type(optimizer) is not SGD:
        raise ValueError(f"optimizer: expected optim.SGD, got {type(optimizer).__name__}; use "
                         f"meta.inner_loop for other optimisers.")
    x, y = model.check_batch(theta, x, y)
    phi = theta.copy()
    if len(batches) == 0:
        return phi
    lengths = {len(batch) for batch in batches}
    index = np.asarray(batches) if len(lengths) == 1 else None
    if index is None or index.ndim != 2 or index.dtype.kind not in "iu" or index.shape[1] == 0:
        raise ValueError("batches: expected non-empty integer index arrays of one length; use "
                         "meta.inner_loop for batches of different lengths.")
    # One reduction instead of min and max: as unsigned integers, negative indices are
    # above any length.
    if index.view(f"u{index.itemsize}").max() >= len(x):
        raise ValueError(f"batches: expected indices in [0, {len(x)}), got values from "
                         f"{index.min()} to {index.max()}.")
    kernels.mlp_sgd_inner_loop(phi, structure.widths, structure.activation, x[index], y[index],
                               optimizer.lr, reduction, weight_decay)
    return phi
