"""The JAX twin: the same networks and the whole meta-iteration compiled with ``jax.jit``.

* Parameters are a dict keyed by our ``state_dict`` names. Activations are NHWC, the
  layout XLA's CPU convolutions prefer (weights loaded as HWIO); the last feature map
  is transposed to (C, H, W) before flattening, so the linear weight is ours unchanged.
* TF "same" padding is explicit per layer, (before, after) with the odd cell after;
  max-pooling pads with -inf, TF "same" style.
* BatchNorm with batch statistics (biased variance, eps 1e-3); summed cross-entropy, or
  sine's mean squared error.
* Adam in TF1's form (as ours, beta1 = 0) or SGD; the state is carried across tasks.
* One meta-iteration is one compiled call: the tasks and their inner steps unrolled,
  then the interpolation. The mini-batch indices are drawn on the host with our
  ``meta.minibatches`` from a generator seeded as `ours.Runner`'s, task after task, and
  passed in as an array: the n-th timed unit sees the batches of ours' n-th unit. The
  example arguments that compilation needs draw from a separate generator.

Compilation (lower + compile) is timed and reported apart from the timed stage.
"""
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from reptile_np.meta import minibatches


def same_padding(size, kernel, stride):
    """TF "same" padding along one axis: (before, after), the odd cell after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def conv(x, w, b, stride):
    """NHWC conv with TF "same" padding; ``w`` is HWIO."""
    k = w.shape[0]
    pads = [same_padding(x.shape[1], k, stride), same_padding(x.shape[2], k, stride)]
    y = lax.conv_general_dilated(x, w, (stride, stride), pads,
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + b


def batch_norm(x, gamma, beta, eps=1e-3):
    mean = x.mean(axis=(0, 1, 2))
    var = jnp.square(x - mean).mean(axis=(0, 1, 2))
    return (x - mean) * lax.rsqrt(var + eps) * gamma + beta


def max_pool_same(x):
    pads = ((0, 0), same_padding(x.shape[1], 2, 2), same_padding(x.shape[2], 2, 2), (0, 0))
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), pads)


def flatten_chw(x):
    """(N, H, W, C) -> (N, C*H*W) in PyTorch's order."""
    return x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)


def omniglot_forward(p, x):
    for i in (0, 3, 6, 9):      # conv, BN, ReLU
        x = conv(x, p[f"{i}.weight"], p[f"{i}.bias"], 2)
        x = jax.nn.relu(batch_norm(x, p[f"{i + 1}.weight"], p[f"{i + 1}.bias"]))
    return flatten_chw(x) @ p["13.weight"].T + p["13.bias"]


def miniimagenet_forward(p, x):
    for i in (0, 4, 8, 12):     # conv, BN, max-pool, ReLU
        x = conv(x, p[f"{i}.weight"], p[f"{i}.bias"], 1)
        x = batch_norm(x, p[f"{i + 1}.weight"], p[f"{i + 1}.bias"])
        x = jax.nn.relu(max_pool_same(x))
    return flatten_chw(x) @ p["17.weight"].T + p["17.bias"]


def sine_forward(p, x):
    x = jnp.tanh(x @ p["0.weight"].T + p["0.bias"])
    x = jnp.tanh(x @ p["2.weight"].T + p["2.bias"])
    return x @ p["4.weight"].T + p["4.bias"]


FORWARD = {"omniglot": omniglot_forward, "miniimagenet": miniimagenet_forward,
           "sine": sine_forward}


def make_loss(workload):
    forward = FORWARD[workload.model]

    def loss(params, x, y):
        out = forward(params, x)
        if workload.model == "sine":
            return jnp.mean(jnp.square(out - y))
        log_p = jax.nn.log_softmax(out)
        return -jnp.sum(jnp.take_along_axis(log_p, y[:, None], axis=1))
    return loss


def make_optimizer(workload):
    """(init, step) of TF-form Adam (beta1 = 0) or SGD over a parameter dict."""
    lr = workload.lr
    if workload.optimizer == "sgd":
        return (lambda params: (),
                lambda params, grads, state: (jax.tree.map(lambda p, g: p - lr * g, params, grads),
                                              state))
    beta1, beta2, eps = 0.0, 0.999, 1e-8

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return zeros, zeros, jnp.zeros((), jnp.float32)

    def step(params, grads, state):
        m, v, t = state
        t = t + 1
        m = jax.tree.map(lambda m, g: beta1 * m + (1 - beta1) * g, m, grads)
        v = jax.tree.map(lambda v, g: beta2 * v + (1 - beta2) * g * g, v, grads)
        size = lr * jnp.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
        params = jax.tree.map(lambda p, m, v: p - size * m / (jnp.sqrt(v) + eps), params, m, v)
        return params, (m, v, t)
    return init, step


def to_nhwc(x):
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if x.ndim == 4 else x


class Runner:
    """One workload as compiled JAX calls; the interface of `ours.Runner`."""

    def __init__(self, workload, data, state_dict, seed=0):
        self.workload, self.backend = workload, "jax-jit"
        # Conv weights OIHW -> HWIO; everything else as ours.
        self.params = {k: jnp.asarray(v.transpose(2, 3, 1, 0) if v.ndim == 4 else v)
                       for k, v in state_dict.items()}
        self.names = list(state_dict)
        loss = make_loss(workload)
        self.value_and_grad = jax.jit(jax.value_and_grad(loss))
        opt_init, opt_step = make_optimizer(workload)
        self.opt_state = opt_init(self.params)
        self.pool_x = jnp.asarray(np.stack([to_nhwc(x) for x, _ in data["tasks"]]))
        self.pool_y = jnp.asarray(np.stack([y for _, y in data["tasks"]]))
        self.x_query = jnp.asarray(to_nhwc(data["x_query"])) if "x_query" in data else None
        self.eval_x, self.eval_y = self.pool_x[0], self.pool_y[0]
        self.rng = np.random.default_rng(seed)
        self.count = 0

        # The loops over tasks and steps are Python loops, unrolled into one XLA program:
        # XLA's CPU backend ran this network ~7x slower inside lax.scan / fori_loop
        # (a while loop) than unrolled. Unrolling costs compile time, reported apart.
        def adapt(theta, opt_state, x, y, batch_idx):
            phi = theta
            for index in batch_idx:             # (inner_iters, inner_batch)
                grads = jax.grad(loss)(phi, x[index], y[index])
                phi, opt_state = opt_step(phi, grads, opt_state)
            return phi, opt_state

        def meta_iteration(theta, opt_state, pool_x, pool_y, task_ids, batch_idx):
            phi_sum = jax.tree.map(jnp.zeros_like, theta)
            for task_id, idx in zip(task_ids, batch_idx):
                phi, opt_state = adapt(theta, opt_state, pool_x[task_id], pool_y[task_id], idx)
                phi_sum = jax.tree.map(jnp.add, phi_sum, phi)
            scale = 1.0 / len(task_ids)
            theta = jax.tree.map(lambda t, s: t + workload.epsilon * (s * scale - t),
                                 theta, phi_sum)
            return theta, opt_state

        def eval_task(theta, opt_state, x, y, batch_idx, x_query):
            phi, opt_state = adapt(theta, opt_state, x, y, batch_idx)
            return jnp.argmax(FORWARD[workload.model](phi, x_query), axis=1), opt_state

        # Compiling needs example arguments of the right shapes only. Their batch indices
        # come from a generator of their own, so that `self.rng` draws, unit after unit,
        # exactly the batches `ours.Runner` draws.
        example_rng = np.random.default_rng(seed + 1)
        start = time.perf_counter()
        if workload.name == "eval":
            args = (self.params, self.opt_state, self.eval_x, self.eval_y,
                    self._batches(1, example_rng)[0], self.x_query)
            self.compiled = jax.jit(eval_task).lower(*args).compile()
        else:
            args = (self.params, self.opt_state, self.pool_x, self.pool_y,
                    self._task_ids(), self._batches(workload.meta_batch, example_rng))
            self.compiled = jax.jit(meta_iteration).lower(*args).compile()
        self.compile_s = time.perf_counter() - start

    def _batches(self, num_tasks, rng=None):
        """Batch indices (num_tasks, inner_iters, inner_batch), drawn with ``rng`` (default:
        the runner's own generator, which the timed units use)."""
        w = self.workload
        rng = self.rng if rng is None else rng
        return np.stack([np.stack(minibatches(w.samples_per_task, w.inner_batch, w.inner_iters,
                                              rng)) for _ in range(num_tasks)]).astype(np.int32)

    def _task_ids(self):
        w = self.workload
        if w.task_pool:     # serial Reptile: the next task of the pool
            return np.array([self.count % w.task_pool], dtype=np.int32)
        return np.arange(w.meta_batch, dtype=np.int32)

    def _flat(self, tree):
        """A parameter dict as one NumPy vector in our layout (state_dict order, OIHW)."""
        arrays = [np.asarray(tree[k]) for k in self.names]
        arrays = [a.transpose(3, 2, 0, 1) if a.ndim == 4 else a for a in arrays]
        return np.concatenate([a.ravel() for a in arrays])

    def loss_and_grad(self, x, y):
        """Loss and flat gradient (our layout) at the current weights."""
        loss, grads = self.value_and_grad(self.params, jnp.asarray(to_nhwc(x)), jnp.asarray(y))
        return float(loss), self._flat(grads)

    def flat_theta(self):
        """A copy of theta, flat in our layout."""
        return self._flat(self.params)

    def unit(self):
        """One meta-iteration, or one evaluation task (adapt, then predict the query)."""
        if self.workload.name == "eval":
            pred, self.opt_state = self.compiled(self.params, self.opt_state, self.eval_x,
                                                 self.eval_y, self._batches(1)[0], self.x_query)
            return jax.block_until_ready(pred)
        task_ids = self._task_ids()
        self.count += 1
        self.params, self.opt_state = self.compiled(self.params, self.opt_state, self.pool_x,
                                                    self.pool_y, task_ids,
                                                    self._batches(len(task_ids)))
        return jax.block_until_ready(self.params)

    def describe(self):
        return {"backend": self.backend, "jax_devices": [str(d) for d in jax.devices()],
                "compile_s": self.compile_s}
