"""Few-shot evaluation exactly as the paper's code (REFERENCE a.5).

For each evaluation task: sample N classes with K+1 examples each; the first example
of every class is its query, the other N*K are the support set. Adapt with
``eval_iters`` optimiser steps on support mini-batches, starting from theta and from a
snapshot of the inner optimiser's state (thrown away afterwards), then predict:

* transductive: the N queries in one batch, so BatchNorm's batch statistics come
  from the queries together;
* non-transductive: each query alone joins the N*K support examples in one batch of
  N*K+1, and only its own prediction counts.

BatchNorm always uses batch statistics, which is why the two protocols differ.
"""
import numpy as np

from .data.tasks import mean_confidence_interval, sample_task, split_eval_task
from .meta import inner_loop, minibatches


def predict_queries(model, phi, train_x, query_x, transductive):
    """Predicted labels of the queries under either protocol (see the module docstring)."""
    if transductive:
        return model.predict(phi, query_x)
    return np.array([model.predict(phi, np.concatenate([train_x, query_x[q:q + 1]]))[-1]
                     for q in range(len(query_x))])


def evaluate_task(model, theta, optimizer, task, num_classes, eval_batch, eval_iters, rng,
                  transductive=False, replacement=False, reduction="sum", weight_decay=1.0):
    """Adapt to one K+1-shot task and count correct query predictions.

    Args:
        task: ``(x, y)`` sampled with K+1 shots per class.
        optimizer: the inner optimiser; its state is restored afterwards.
        Others: as `reptile_np.meta.inner_loop` and `reptile_np.meta.minibatches`.

    Returns:
        The number of correctly classified queries (out of ``num_classes``).
    """
    train_x, train_y, query_x, query_y = split_eval_task(*task, num_classes)
    state = optimizer.snapshot()
    batches = minibatches(len(train_y), eval_batch, eval_iters, rng, replacement)
    phi = inner_loop(model, theta, train_x, train_y, batches, optimizer, reduction, weight_decay)
    optimizer.restore(state)
    return int(np.sum(predict_queries(model, phi, train_x, query_x, transductive) == query_y))


def evaluate(model, theta, optimizer, split, num_classes, num_shots, eval_batch, eval_iters,
             num_tasks, rng, transductive=False, replacement=False, reduction="sum",
             weight_decay=1.0, progress=None):
    """Mean few-shot accuracy over ``num_tasks`` tasks, with a 95% confidence interval.

    Args:
        split: the `reptile_np.data.tasks.ClassImages` to draw tasks from.
        num_shots: K; every task is drawn with K+1 examples per class.
        progress: optional `reptile_np.progress.Progress` updated per task.

    Returns:
        ``(accuracy, ci95_half_width, per_task_accuracies)``; the accuracy equals
        total correct / (num_tasks * num_classes), as the paper's code reports it.
    """
    accuracies = np.empty(num_tasks)
    for index in range(num_tasks):
        task = sample_task(split, num_classes, num_shots + 1, rng, dtype=theta.dtype)
        correct = evaluate_task(model, theta, optimizer, task, num_classes, eval_batch,
                                eval_iters, rng, transductive, replacement, reduction,
                                weight_decay)
        accuracies[index] = correct / num_classes
        if progress is not None:
            progress.update(index + 1, accuracy=f"{accuracies[:index + 1].mean():.3f}")
    mean, half_width = mean_confidence_interval(accuracies)
    return mean, half_width, accuracies
