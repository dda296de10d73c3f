"""The benchmark workloads: shapes, step counts, synthetic data and FLOP counts.

Every framework (our Numba and NumPy backends, the PyTorch and JAX twins) runs the
same workload on the same arrays made here, starting from the same weights (our
``model.init``), drawing its mini-batches with the same ``meta.minibatches``.
A *unit* is what one timing sample measures: one meta-iteration, or one evaluation task.
"""
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Workload:
    name: str
    model: str                  # key of reptile_np.models.MODELS
    input_shape: tuple          # one example, without the batch axis
    unit: str                   # "meta-iteration" or "evaluation task"
    meta_batch: int             # tasks per unit
    inner_iters: int            # optimiser steps per task
    inner_batch: int            # examples per step
    samples_per_task: int       # examples in a task's pool
    optimizer: str              # "adam" (beta1 = 0, lr 1e-3) or "sgd"
    lr: float
    reduction: str              # loss reduction over a batch
    epsilon: float = 1.0        # outer step size (unused by "eval")
    num_classes: int = 5
    query: int = 0              # "eval": examples predicted after adaptation
    task_pool: int = 0          # "sine": tasks drawn up front and cycled through

    @property
    def inner_steps(self):
        """Optimiser steps per unit."""
        return self.meta_batch * self.inner_iters


WORKLOADS = {
    # 5 tasks x 5 Adam steps on batches of 10 drawn from 5 classes x 10 train-shots.
    "omniglot": Workload("omniglot", "omniglot", (1, 28, 28), "meta-iteration",
                         meta_batch=5, inner_iters=5, inner_batch=10, samples_per_task=50,
                         optimizer="adam", lr=1e-3, reduction="sum", epsilon=1.0),
    "miniimagenet": Workload("miniimagenet", "miniimagenet", (3, 84, 84), "meta-iteration",
                             meta_batch=5, inner_iters=8, inner_batch=10, samples_per_task=50,
                             optimizer="adam", lr=1e-3, reduction="sum", epsilon=1.0),
    # Serial Reptile on sine waves: 1 task x 5 SGD steps of 10 of the 50 grid points.
    "sine": Workload("sine", "sine", (1,), "meta-iteration",
                     meta_batch=1, inner_iters=5, inner_batch=10, samples_per_task=50,
                     optimizer="sgd", lr=0.02, reduction="mean", epsilon=0.1, task_pool=64),
    # Omniglot 5-way 1-shot evaluation: 50 Adam steps on batches of 5 (the 5 support
    # images), then a prediction for 5 query images.
    "eval": Workload("eval", "omniglot", (1, 28, 28), "evaluation task",
                     meta_batch=1, inner_iters=50, inner_batch=5, samples_per_task=5,
                     optimizer="adam", lr=1e-3, reduction="sum", query=5),
}
TIMED = tuple(WORKLOADS)                 # workloads with a speed table
PROBES = ("startup", "memory")           # workloads measured by probe subprocesses
ALL = TIMED + PROBES


def make_data(workload, seed=0):
    """The fixed synthetic arrays of a workload (float32 inputs).

    Returns:
        ``{"tasks": [(x, y), ...]}``: ``meta_batch`` tasks (``task_pool`` for sine,
        cycled through one per unit), and for "eval" also ``"x_query"``.
    """
    rng = np.random.default_rng(seed)
    if workload.model == "sine":
        from reptile_np.data.sine import sine_task
        return {"tasks": [sine_task(rng) for _ in range(workload.task_pool)]}
    shots = workload.samples_per_task // workload.num_classes
    y = np.repeat(np.arange(workload.num_classes, dtype=np.int64), shots)
    tasks = [(rng.random((workload.samples_per_task,) + workload.input_shape, dtype=np.float32), y)
             for _ in range(workload.meta_batch)]
    data = {"tasks": tasks}
    if workload.query:
        data["x_query"] = rng.random((workload.query,) + workload.input_shape, dtype=np.float32)
    return data


def build_model(workload):
    """Our `reptile_np.models.Sequential` for the workload."""
    from reptile_np import models
    if workload.model == "sine":
        return models.sine_mlp()
    return models.MODELS[workload.model](workload.num_classes)


def initial_state_dict(workload, seed=0):
    """Our model's initial weights as ``{name: float32 array}`` (PyTorch names and layouts)."""
    model = build_model(workload)
    theta = model.init(np.random.default_rng(seed), dtype=np.float32)
    return model.state_dict(theta)


def forward_flops(workload, batch):
    """Multiply-add FLOPs (2 per MAC) of the conv and linear layers for one forward pass.

    Counted from the model's layers: a conv layer with weight (O, C, KH, KW) and output
    (O, OH, OW) costs 2*O*C*KH*KW*OH*OW per example, a linear layer 2*in*out.
    BatchNorm, pooling, activations, the loss and the optimiser are not counted.
    """
    model = build_model(workload)
    shape, flops = model.input_shape, 0
    for layer in model.layers:
        out_shape = layer.output_shape(shape)
        weight = layer.param_shapes.get("weight")
        if weight is not None and len(weight) == 4:
            flops += 2 * int(np.prod(weight)) * out_shape[1] * out_shape[2]
        elif weight is not None and len(weight) == 2:
            flops += 2 * int(np.prod(weight))
        shape = out_shape
    return flops * batch


def flops_per_unit(workload):
    """Forward + backward FLOPs of one unit, taken as 3x the forward conv/linear FLOPs
    (forward, input gradient, weight gradient), plus the query forward pass of "eval"."""
    train = 3 * forward_flops(workload, workload.inner_batch) * workload.inner_steps
    return train + (forward_flops(workload, workload.query) if workload.query else 0)


def im2col_shapes(workload, batch):
    """(M, K, N) of the forward im2col matmuls of the conv layers, ``(N*OH*OW, C*KH*KW) x
    (C*KH*KW, O)``, for measuring the sgemm rate at the shapes that matter."""
    model = build_model(workload)
    shape, shapes = model.input_shape, []
    for layer in model.layers:
        out_shape = layer.output_shape(shape)
        weight = layer.param_shapes.get("weight")
        if weight is not None and len(weight) == 4:
            shapes.append((batch * out_shape[1] * out_shape[2],
                           int(np.prod(weight[1:])), weight[0]))
        shape = out_shape
    return shapes
