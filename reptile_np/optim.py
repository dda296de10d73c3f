"""Optimisers over flat parameter vectors, with their state as plain arrays.

``optimizer.step(params, grad)`` updates ``params`` in place. The state (Adam's
second moment ``v``, first moment ``m`` and step counter ``t``) is explicit, so the
two policies of paper notes §1.1 are one line each in the training loop:

* **persistent** (the paper's code): one optimiser, one state, carried through every
  inner step of every task of the whole run; an evaluation task starts from a
  `snapshot` of it and `restore` throws its changes away afterwards.
* **reset**: call `reset` before each task, so every inner loop starts fresh.
"""
import numpy as np

from . import checks, kernels


class SGD:
    """Plain gradient descent, ``params -= lr * grad`` (the paper code's ``--sgd``).

    Args:
        lr: learning rate, a positive finite number.

    Raises:
        ValueError: naming ``lr``.
    """

    def __init__(self, lr):
        checks.number("lr", lr, positive=True)
        self.lr = lr

    def step(self, params, grad):
        """One update of ``params`` (a NumPy array, in place) by ``grad`` of its shape.

        Raises:
            ValueError: naming ``params`` or ``grad``. (Broadcasting would otherwise let
                a grad of shape (1,) move every parameter by the same amount.)
        """
        if not isinstance(params, np.ndarray):
            raise ValueError(f"params: expected a NumPy array (updated in place), "
                             f"got {checks.describe(params)}.")
        if np.shape(grad) != params.shape:
            raise ValueError(f"grad: expected the shape of params {params.shape}, "
                             f"got {np.shape(grad)}.")
        params -= params.dtype.type(self.lr) * grad

    def reset(self):
        """SGD has no state."""

    def snapshot(self):
        """The (empty) state, for symmetry with `Adam`."""
        return {}

    def restore(self, state):
        """Nothing to restore; ``state`` must be SGD's empty one.

        Raises:
            ValueError: naming ``state`` when it holds entries, e.g. an Adam snapshot,
                whose moments SGD would otherwise drop without a word.
        """
        checks.mapping("state", state, "state entries (SGD's is empty)")
        if len(state) > 0:
            raise ValueError(f"state: expected SGD's empty state {{}}, got entries "
                             f"{sorted(state)}.")

    def __repr__(self):
        return f"SGD(lr={self.lr})"


class Adam:
    """Adam in TensorFlow 1's form, as the paper's inner optimiser (paper notes §1.2).

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
        num_params: length of the flat parameter vector, an integer >= 1.
        lr: learning rate, positive. beta1, beta2: as above, in [0, 1). eps: as above,
            >= 0 (0 only where v never vanishes).
        dtype: dtype of the moment vectors (that of the parameters), float32 or float64.

    Raises:
        ValueError: naming the argument that is out of range.
    """

    def __init__(self, num_params, lr=1e-3, beta1=0.0, beta2=0.999, eps=1e-8, dtype=np.float32):
        self.num_params = checks.integer("num_params", num_params)
        self.dtype = checks.float_dtype("dtype", dtype)
        checks.number("lr", lr, positive=True)
        if checks.number("eps", eps) < 0:
            raise ValueError(f"eps: expected a number >= 0, got {eps!r}.")
        for name, beta in (("beta1", beta1), ("beta2", beta2)):
            if not 0 <= checks.number(name, beta) < 1:
                raise ValueError(f"{name}: expected a number in [0, 1), got {beta!r}.")
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.reset()

    def reset(self):
        """Fresh state: zero moments, step counter 0."""
        self.m = np.zeros(self.num_params, dtype=self.dtype)
        self.v = np.zeros(self.num_params, dtype=self.dtype)
        self.t = 0

    def step(self, params, grad):
        """One update of ``params`` (in place); advances the state.

        Args:
            params: NumPy array of shape ``(num_params,)`` and the state's dtype.
            grad: array of the same shape.

        Raises:
            ValueError: naming ``params`` or ``grad`` (with the state's size or dtype).
        """
        if not isinstance(params, np.ndarray) or params.shape != self.m.shape:
            given = params.shape if isinstance(params, np.ndarray) else checks.describe(params)
            raise ValueError(f"params: expected a NumPy array of shape ({self.num_params},), "
                             f"the size of the Adam state, got {given}.")
        if params.dtype != self.dtype:
            raise ValueError(f"params: expected {self.dtype} like the Adam state, got "
                             f"{params.dtype}; construct Adam(..., dtype=np.{params.dtype}).")
        if np.shape(grad) != self.m.shape:
            raise ValueError(f"grad: expected shape ({self.num_params},), the size of the "
                             f"Adam state, got {np.shape(grad)}.")
        self.t += 1
        step_size = self.lr * np.sqrt(1 - self.beta2 ** self.t) / (1 - self.beta1 ** self.t)
        scalar = self.dtype.type
        kernels.adam_update(params, grad, self.m, self.v, scalar(step_size), scalar(self.beta1),
                            scalar(self.beta2), scalar(self.eps))

    def snapshot(self):
        """A copy of the state: ``{"m": ..., "v": ..., "t": ...}``."""
        return {"m": self.m.copy(), "v": self.v.copy(), "t": np.int64(self.t)}

    def restore(self, state):
        """Set the state from a `snapshot` (copies it).

        Args:
            state: mapping with ``"m"`` and ``"v"`` of shape ``(num_params,)`` and the
                step count ``"t"``, an integer >= 0 (a 0-d integer array, as a checkpoint
                loads it, will do).

        Raises:
            ValueError: naming ``state`` or the entry that is missing or malformed.
        """
        checks.mapping("state", state, "'m', 'v' and 't' (an Adam snapshot)")
        missing = [key for key in ("m", "v", "t") if key not in state]
        if missing:
            raise ValueError(f"state: expected the entries 'm', 'v' and 't' of an Adam "
                             f"snapshot, missing {', '.join(map(repr, missing))}.")
        m, v, t = np.asarray(state["m"]), np.asarray(state["v"]), np.asarray(state["t"])
        for key, moment in (("m", m), ("v", v)):
            if moment.shape != (self.num_params,):
                raise ValueError(f"state['{key}']: expected shape ({self.num_params},), "
                                 f"got {moment.shape}.")
        if t.shape != () or t.dtype.kind not in "iu" or t < 0:
            raise ValueError(f"state['t']: expected an integer step count >= 0, "
                             f"got {checks.describe(state['t'])}.")
        self.m, self.v, self.t = m.astype(self.dtype), v.astype(self.dtype), int(t)

    def __repr__(self):
        return (f"Adam(lr={self.lr}, beta1={self.beta1}, beta2={self.beta2}, eps={self.eps}, "
                f"t={self.t})")


def mean_state(states):
    """The optimiser state whose every moment is the mean of the ``states``' (in order).

    For `Adam` snapshots: ``{"m": mean m, "v": mean v, "t": t}``, whose step counts must
    agree (states of tasks that took the same number of steps from one snapshot). For SGD
    the empty state.

    Raises:
        ValueError: naming ``states`` (empty, or of different step counts or entries).
    """
    states = list(states)
    if not states or any(sorted(state) != sorted(states[0]) for state in states):
        raise ValueError(f"states: expected one or more snapshots with the same entries, got "
                         f"{[sorted(state) for state in states]}.")
    if not states[0]:
        return {}
    counts = {int(state["t"]) for state in states}
    if len(counts) != 1:
        raise ValueError(f"states: expected snapshots of one step count, got {sorted(counts)}.")

    def mean(key):
        # One state: itself (np.mean would only copy it).
        return states[0][key] if len(states) == 1 else np.mean([s[key] for s in states], axis=0)

    return {"m": mean("m"), "v": mean("v"), "t": np.int64(counts.pop())}
