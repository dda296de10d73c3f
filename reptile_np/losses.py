"""Losses: value and gradient with respect to the network output, together.

Each function returns ``(loss, dout)``; its ``*_r`` twin returns ``R{dout}``, the
derivative of dout along a direction ``r_out`` of the output (Pearlmutter's
R-operator, for exact Hessian-vector products: see `models.Sequential`).

``reduction="sum"`` is what the paper's code differentiates (TF1 ``minimize`` on a
per-example loss vector sums it); ``"mean"`` divides the loss and its gradient by the
batch size, as PyTorch's default. With an SGD inner loop the two differ by that factor
in the learning rate; Adam barely notices (paper notes §1.2). docs/derivations.md
derives both losses' gradients and R-operators.
"""
import numpy as np

REDUCTIONS = ("sum", "mean")


def _check_reduction(reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}.")


def _softmax(logits):
    """Row-wise ``(z - max z, sum exp(z - max z), softmax(z))`` of (N, K) logits, the
    sums (N, 1). Subtracting the row maximum keeps exp() from overflowing; it cancels."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    total = exp.sum(axis=1, keepdims=True)
    return shifted, total, exp / total


def softmax(logits):
    """Row-wise class probabilities ``exp(z - max z) / sum exp(z - max z)`` of (N, K) logits,
    in their dtype: what `softmax_cross_entropy` differentiates, for reporting a prediction."""
    return _softmax(logits)[2]


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
    shifted, total, dlogits = _softmax(logits)
    rows = np.arange(n)
    per_example = np.log(total[:, 0]) - shifted[rows, labels]
    dlogits[rows, labels] -= 1
    if reduction == "mean":
        return per_example.mean(), dlogits / n
    return per_example.sum(), dlogits


def softmax_cross_entropy_r(logits, labels, r_logits, reduction="sum"):
    """R{dlogits} of `softmax_cross_entropy` along ``r_logits`` (N, K).

    dlogits = p - onehot(y) with p = softmax(z) row by row, and dp/dz = diag(p) - p p^T,
    so R{dlogits} = p * (R{z} - sum_k p_k R{z}_k) (N, K), divided by N for "mean"; the
    labels drop out (they only shift dlogits by a constant).
    """
    _check_reduction(reduction)
    p = _softmax(logits)[2]
    r_dlogits = p * (r_logits - np.einsum("nk,nk->n", p, r_logits)[:, None])
    return r_dlogits / logits.shape[0] if reduction == "mean" else r_dlogits


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


def mean_squared_error_r(pred, target, r_pred, reduction="mean"):
    """R{dpred} of `mean_squared_error` along ``r_pred`` (shape of pred): dpred = 2 (pred -
    target) is affine in pred, so R{dpred} = 2 R{pred}, divided by the element count for
    "mean"."""
    _check_reduction(reduction)
    if reduction == "mean":
        return (2 / r_pred.size) * r_pred
    return 2 * r_pred
