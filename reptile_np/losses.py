"""Losses: value and gradient with respect to the network output, together.

Each function returns ``(loss, dout)``. ``reduction="sum"`` is what the paper's
code differentiates (TF1 ``minimize`` on a per-example loss vector sums it);
``"mean"`` divides the loss and its gradient by the batch size, as PyTorch's
default. With an SGD inner loop the two differ by that factor in the learning
rate; Adam barely notices (REFERENCE a.2).
"""
import numpy as np

REDUCTIONS = ("sum", "mean")


def _check_reduction(reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}.")


def softmax_cross_entropy(logits, labels, reduction="sum"):
    """Softmax cross-entropy on integer labels.

    Args:
        logits: (N, K) scores.
        labels: (N,) integers in [0, K).
        reduction: "sum" or "mean" over the batch.

    Returns:
        loss: scalar, sum (or mean) of ``logsumexp(z_n) - z_n[y_n]``.
        dlogits: (N, K), ``softmax(z_n) - onehot(y_n)`` (divided by N for "mean").
    """
    _check_reduction(reduction)
    n = logits.shape[0]
    # Subtracting the row maximum keeps exp() from overflowing; it cancels in the result.
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    total = exp.sum(axis=1, keepdims=True)
    rows = np.arange(n)
    per_example = np.log(total[:, 0]) - shifted[rows, labels]
    dlogits = exp / total
    dlogits[rows, labels] -= 1
    if reduction == "mean":
        return per_example.mean(), dlogits / n
    return per_example.sum(), dlogits


def mean_squared_error(pred, target, reduction="mean"):
    """Squared error, as ``torch.nn.MSELoss``.

    Args:
        pred, target: arrays of the same shape, e.g. (N, 1).
        reduction: "mean" over every element (the sine demo's) or "sum".

    Returns:
        loss: scalar, mean (or sum) of ``(pred - target)^2``.
        dpred: ``2 (pred - target)``, divided by the element count for "mean".
    """
    _check_reduction(reduction)
    diff = pred - target
    total = np.vdot(diff, diff)
    if reduction == "mean":
        return total / diff.size, (2 / diff.size) * diff
    return total, 2 * diff
