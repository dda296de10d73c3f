"""Optimisers over flat parameter vectors, with their state as plain arrays.

``optimizer.step(params, grad)`` updates ``params`` in place. The state (Adam's
second moment ``v``, first moment ``m`` and step counter ``t``) is explicit, so the
two policies of REFERENCE a.1 are one line each in the training loop:

* **persistent** (the paper's code): one optimiser, one state, carried through every
  inner step of every task of the whole run; an evaluation task starts from a
  `snapshot` of it and `restore` throws its changes away afterwards.
* **reset**: call `reset` before each task, so every inner loop starts fresh.
"""
import numpy as np

from . import kernels


class SGD:
    """Plain gradient descent, ``params -= lr * grad`` (the paper code's ``--sgd``)."""

    def __init__(self, lr):
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}.")
        self.lr = lr

    def step(self, params, grad):
        """One update of ``params`` (in place)."""
        params -= params.dtype.type(self.lr) * grad

    def reset(self):
        """SGD has no state."""

    def snapshot(self):
        """The (empty) state, for symmetry with `Adam`."""
        return {}

    def restore(self, state):
        """Nothing to restore."""

    def __repr__(self):
        return f"SGD(lr={self.lr})"


class Adam:
    """Adam in TensorFlow 1's form, as the paper's inner optimiser (REFERENCE a.2).

    With step counter t (starting at 1)::

        m <- beta1 * m + (1 - beta1) * g
        v <- beta2 * v + (1 - beta2) * g^2
        params <- params - lr * sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + eps)

    The bias correction is folded into the step size and ``eps`` is added to the
    uncorrected ``sqrt(v)`` -- TF's order; PyTorch adds eps after correcting v. The
    paper uses ``beta1 = 0`` (momentum hurt), so ``m`` is just the last gradient.
    As in TF, the constants (and ``1 - beta``) are in the parameters' dtype. The
    update itself is `kernels.adam_update`.

    Args:
        num_params: length of the flat parameter vector.
        lr: learning rate. beta1, beta2, eps: as above.
        dtype: dtype of the moment vectors (that of the parameters).
    """

    def __init__(self, num_params, lr=1e-3, beta1=0.0, beta2=0.999, eps=1e-8, dtype=np.float32):
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}.")
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
            raise ValueError(f"beta1 and beta2 must lie in [0, 1), got {beta1} and {beta2}.")
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.num_params, self.dtype = num_params, np.dtype(dtype)
        self.reset()

    def reset(self):
        """Fresh state: zero moments, step counter 0."""
        self.m = np.zeros(self.num_params, dtype=self.dtype)
        self.v = np.zeros(self.num_params, dtype=self.dtype)
        self.t = 0

    def step(self, params, grad):
        """One update of ``params`` (in place); advances the state."""
        if params.dtype != self.dtype:
            raise ValueError(f"params are {params.dtype} but the Adam state is {self.dtype}; "
                             f"construct Adam(..., dtype=np.{params.dtype}).")
        self.t += 1
        step_size = self.lr * np.sqrt(1 - self.beta2 ** self.t) / (1 - self.beta1 ** self.t)
        scalar = self.dtype.type
        kernels.adam_update(params, grad, self.m, self.v, scalar(step_size), scalar(self.beta1),
                            scalar(self.beta2), scalar(self.eps))

    def snapshot(self):
        """A copy of the state: ``{"m": ..., "v": ..., "t": ...}``."""
        return {"m": self.m.copy(), "v": self.v.copy(), "t": np.int64(self.t)}

    def restore(self, state):
        """Set the state from a `snapshot` (copies it)."""
        m, v = np.asarray(state["m"]), np.asarray(state["v"])
        if m.shape != (self.num_params,) or v.shape != (self.num_params,):
            raise ValueError(f"Adam state must hold m and v of shape ({self.num_params},), "
                             f"got {m.shape} and {v.shape}.")
        self.m, self.v, self.t = m.astype(self.dtype), v.astype(self.dtype), int(state["t"])

    def __repr__(self):
        return (f"Adam(lr={self.lr}, beta1={self.beta1}, beta2={self.beta2}, eps={self.eps}, "
                f"t={self.t})")
