"""Our side of the benchmark: the library API, exactly as a user calls it.

    theta = model.init(rng)
    opt = optim.Adam(model.num_params, lr=1e-3, beta1=0.0)
    theta = meta.reptile_step(model, theta, tasks, opt, rng, inner_batch=10, inner_iters=5,
                              epsilon=1.0, reduction="sum")

The kernel backend ("numba" or "numpy") is chosen with `reptile_np.kernels.set_backend`;
`Runner.backend` is the one actually in use (Numba falls back to NumPy when the fast
kernels cannot be imported). A small MLP under SGD (the sine workload) runs its inner
loop with `reptile_np.fused.mlp_sgd_inner_loop`, as the sine demo does.
"""
import numpy as np

from reptile_np import fused, kernels, meta, optim

import workloads


class Runner:
    """One workload on our library with a given kernel backend.

    Args:
        workload: a `workloads.Workload`.
        data: its arrays (`workloads.make_data`).
        state_dict: initial weights ``{name: array}``.
        backend: "numba" or "numpy".
        seed: seed of the generator that draws the mini-batches.
    """

    def __init__(self, workload, data, state_dict, backend, seed=0):
        self.backend = kernels.set_backend(backend)
        self.workload, self.data = workload, data
        self.model = workloads.build_model(workload)
        self.theta = self.model.load_state_dict(state_dict, dtype=np.float32)
        if workload.optimizer == "adam":
            self.opt = optim.Adam(self.model.num_params, lr=workload.lr, beta1=0.0)
        else:
            self.opt = optim.SGD(workload.lr)
        fusable = self.model.mlp_structure() is not None and workload.optimizer == "sgd"
        self.inner_loop = fused.mlp_sgd_inner_loop if fusable else meta.inner_loop
        self.rng = np.random.default_rng(seed)
        self.count = 0
        self.compile_s = None   # Numba compiles inside the first call; see the startup probe

    def loss_and_grad(self, x, y):
        """Loss and flat gradient at the current weights (for the parity check)."""
        loss, grad = self.model.loss_and_grad(self.theta, x, y, self.workload.reduction)
        return float(loss), grad

    def flat_theta(self):
        """A copy of theta, flat in our layout."""
        return self.theta.copy()

    def unit(self):
        """One meta-iteration, or one evaluation task (adapt, then predict the query)."""
        kernels.adapt_threads()   # a no-op unless --adaptive, as in reptile-np's training loop
        w = self.workload
        if w.name == "eval":
            x, y = self.data["tasks"][0]
            batches = meta.minibatches(len(y), w.inner_batch, w.inner_iters, self.rng)
            phi = self.inner_loop(self.model, self.theta, x, y, batches, self.opt, w.reduction)
            return self.model.predict(phi, self.data["x_query"])
        tasks = self.data["tasks"]
        if w.task_pool:     # serial Reptile: the next task of the pool
            tasks = [tasks[self.count % len(tasks)]]
        self.count += 1
        self.theta = meta.reptile_step(self.model, self.theta, tasks, self.opt, self.rng,
                                       inner_batch=w.inner_batch, inner_iters=w.inner_iters,
                                       epsilon=w.epsilon, reduction=w.reduction,
                                       inner_loop=self.inner_loop)
        return self.theta

    def describe(self):
        """Thread settings in effect, for the record."""
        info = {"backend": self.backend, "kernel_threads": kernels.describe_threads()}
        try:
            import numba
            info["numba_threads"] = numba.get_num_threads()
            try:
                info["numba_threading_layer"] = numba.threading_layer()
            except ValueError:  # no parallel region has run yet
                pass
        except ImportError:
            pass
        return info
