"""Few-shot evaluation exactly as the paper's code (paper notes §1.5).

For each evaluation task: sample N classes with K+1 examples each; the first example
of every class is its query, the other N*K are the support set. Adapt with
``eval_iters`` optimiser steps on support mini-batches, starting from theta and from a
snapshot of the inner optimiser's state (thrown away afterwards), then predict:

* transductive: the N queries in one batch, so BatchNorm's batch statistics come
  from the queries together;
* non-transductive: each query alone joins the N*K support examples in one batch of
  N*K+1, and only its own prediction counts.

BatchNorm always uses batch statistics, which is why the two protocols differ.

The tasks are independent (each starts from theta and the same optimiser state), so
`evaluate` can adapt to them in several processes (``workers``, see `reptile_np.workers`)
or on a Dask cluster (an executor, see `reptile_np.dist`). The tasks and their
mini-batches are still drawn in this process, in the serial order, and every worker runs
single-threaded kernels of this process's backend, so the accuracies are identical for
any number of workers.

The result is the mean accuracy over tasks with a 95% confidence interval
(`mean_confidence_interval`).
"""
import numpy as np

from . import checks
from .data.tasks import sample_task, split_eval_task
from .meta import inner_loop, minibatches
from .workers import executor


def query_logits(model, phi, train_x, query_x, transductive):
    """The network's (queries, classes) logits for the queries under either protocol (see
    the module docstring): transductive, all queries in one batch; otherwise each query in
    a batch of the support examples ``train_x`` plus itself, its own row kept."""
    if transductive:
        return model.forward(phi, query_x)
    return np.stack([model.forward(phi, np.concatenate([train_x, query_x[q:q + 1]]))[-1]
                     for q in range(len(query_x))])


def predict_queries(model, phi, train_x, query_x, transductive):
    """Predicted labels of the queries under either protocol (see the module docstring)."""
    return np.argmax(query_logits(model, phi, train_x, query_x, transductive), axis=1)


def adapt(model, theta, optimizer, train_x, train_y, batches, reduction="sum", weight_decay=1.0):
    """The adapted parameters phi: `reptile_np.meta.inner_loop` from ``theta`` and the
    optimiser's current state, which is restored afterwards (so every task starts from the
    same state, as in the paper's evaluation)."""
    state = optimizer.snapshot()
    phi = inner_loop(model, theta, train_x, train_y, batches, optimizer, reduction, weight_decay)
    optimizer.restore(state)
    return phi


def evaluate_task(model, theta, optimizer, task, num_classes, eval_batch, eval_iters, rng,
                  transductive=False, replacement=False, reduction="sum", weight_decay=1.0):
    """Adapt to one K+1-shot task and count correct query predictions.

    Args:
        task: ``(x, y)`` sampled with K+1 shots per class.
        optimizer: the inner optimiser; its state is restored afterwards.
        Others: as `reptile_np.meta.inner_loop` and `reptile_np.meta.minibatches`.

    Returns:
        The number of correctly classified queries (out of ``num_classes``).

    Raises:
        ValueError: naming ``task``, ``num_classes``, ``eval_batch``, ``eval_iters`` or
            ``rng`` (see `_check_adaptation`).
    """
    checks.task("task", task)
    _check_adaptation(model, theta, num_classes, eval_batch, eval_iters, rng)
    batches = minibatches(len(task[1]) - num_classes, eval_batch, eval_iters, rng, replacement)
    return adapt_and_count(model, theta, optimizer, task, batches, num_classes, transductive,
                           reduction, weight_decay)


def adapt_and_count(model, theta, optimizer, task, batches, num_classes, transductive=False,
                    reduction="sum", weight_decay=1.0):
    """`evaluate_task` with its mini-batches (index arrays into the N*K training examples)
    already drawn."""
    return adapt_and_count_protocols(model, theta, optimizer, task, batches, num_classes,
                                     (transductive,), reduction, weight_decay)[0]


def adapt_and_count_protocols(model, theta, optimizer, task, batches, num_classes, protocols,
                              reduction="sum", weight_decay=1.0):
    """`adapt_and_count` under each of ``protocols`` (``transductive`` flags), from one
    adaptation: a tuple of correct-query counts."""
    _, predictions = _adapt_and_predict_each(model, theta, optimizer, task, batches,
                                             num_classes, protocols, reduction, weight_decay)
    return tuple(int(np.sum(labels == np.arange(num_classes))) for labels in predictions)


def adapt_and_predict(model, theta, optimizer, task, batches, num_classes, transductive=False,
                      reduction="sum", weight_decay=1.0):
    """The adapted parameters and the query predictions of one evaluation task.

    Splits ``task`` into support and queries (`split_eval_task`: the queries are the first
    example of each label, in label order, so query i has label i), adapts theta on the
    support batches from the optimiser's current state, which is restored (`adapt`), and
    predicts.

    Returns:
        ``(phi, predictions)``: phi of theta's layout, predictions (num_classes,) labels.
    """
    phi, (predictions,) = _adapt_and_predict_each(model, theta, optimizer, task, batches,
                                                  num_classes, (transductive,), reduction,
                                                  weight_decay)
    return phi, predictions


def _adapt_and_predict_each(model, theta, optimizer, task, batches, num_classes, protocols,
                            reduction, weight_decay):
    """`adapt_and_predict` under each of ``protocols``: phi, and one prediction array each."""
    train_x, train_y, query_x, _ = split_eval_task(*task, num_classes)
    phi = adapt(model, theta, optimizer, train_x, train_y, batches, reduction, weight_decay)
    return phi, [predict_queries(model, phi, train_x, query_x, transductive)
                 for transductive in protocols]


def evaluate(model, theta, optimizer, split, num_classes, num_shots, eval_batch, eval_iters,
             num_tasks, rng, transductive=False, replacement=False, reduction="sum",
             weight_decay=1.0, progress=None, workers=1):
    """Mean few-shot accuracy over ``num_tasks`` tasks, with a 95% confidence interval.

    Args:
        split: the `reptile_np.data.tasks.ClassImages` to draw tasks from.
        num_shots: K; every task is drawn with K+1 examples per class.
        progress: optional `reptile_np.progress.Progress` updated as tasks finish.
        workers: processes that adapt to the tasks (1: this process alone), or an
            executor (`reptile_np.workers.executor`), e.g. a `reptile_np.dist.DaskExecutor`.
            More workers give the same accuracies, sooner when there are cores to run them.

    Returns:
        ``(accuracy, ci95_half_width, per_task_accuracies)``; the accuracy equals
        total correct / (num_tasks * num_classes), as the paper's code reports it.

    Raises:
        ValueError: naming ``num_shots`` or ``num_tasks`` (integers >= 1), ``workers``
            (neither an integer >= 1 nor an executor), or an argument `_check_adaptation`
            checks; `sample_task` checks the split.
    """
    return evaluate_protocols(model, theta, optimizer, split, num_classes, num_shots,
                              eval_batch, eval_iters, num_tasks, rng, (transductive,),
                              replacement, reduction, weight_decay, progress,
                              workers)[transductive]


def evaluate_protocols(model, theta, optimizer, split, num_classes, num_shots, eval_batch,
                       eval_iters, num_tasks, rng, protocols=(False, True), replacement=False,
                       reduction="sum", weight_decay=1.0, progress=None, workers=1):
    """`evaluate` under several protocols at once, for the cost of one.

    Both protocols adapt to the same tasks with the same mini-batches, so one adaptation
    per task serves them all; only the predictions differ. Each protocol's result is
    exactly `evaluate`'s with the same ``rng`` and ``transductive`` (its tasks are drawn
    the same way), at about half the cost of evaluating the two one after the other.

    Args:
        protocols: the ``transductive`` flags to evaluate, e.g. ``(False, True)``.
        Others: as `evaluate`.

    Returns:
        ``{transductive: (accuracy, ci95_half_width, per_task_accuracies)}`` for each of
        ``protocols``.

    Raises:
        ValueError: as `evaluate`, or naming ``protocols`` (not a non-empty sequence of
            distinct booleans).
    """
    _check_adaptation(model, theta, num_classes, eval_batch, eval_iters, rng)
    checks.integer("num_shots", num_shots)
    checks.integer("num_tasks", num_tasks)
    protocols = _check_protocols(protocols)
    run = executor(workers)
    tasks = _draw_tasks(split, num_classes, num_shots, eval_batch, eval_iters, num_tasks, rng,
                        replacement, theta.dtype)
    settings = (num_classes, protocols, reduction, weight_decay)
    counts = run.map(_count_task, tasks, (model, theta, optimizer, settings))
    accuracies = _collect(counts, num_tasks, num_classes, protocols, progress)
    return {protocol: (*mean_confidence_interval(accuracies[:, column]), accuracies[:, column])
            for column, protocol in enumerate(protocols)}


def evaluate_splits(model, theta, optimizer, splits, config, num_tasks, workers=1,
                    progress_stream=None, only=None, protocols=None):
    """A run's final evaluation, on every split, as the paper's code reports it.

    Args:
        splits: ``{"train": ClassImages, "test": ..., ...}``.
        config: the run's `reptile_np.train.TrainConfig` (classes, shots, the evaluation
            batches and iterations, the protocol, the seed).
        num_tasks: tasks per split (the paper: 10,000).
        workers: as `evaluate`.
        progress_stream: where to show each split's progress line (None: nowhere).
        only: names of the splits to evaluate (None: all of them).
        protocols: None for the config's protocol alone; else ``transductive`` flags, e.g.
            ``(False, True)``, evaluated together from the same adaptations
            (`evaluate_protocols`), each with the numbers it has when evaluated alone.

    Returns:
        ``{split name: {"accuracy": ..., "ci95": ..., "tasks": num_tasks}}``, or with
        ``protocols`` ``{transductive: that}`` for each. Split number i of ``splits`` draws
        its tasks from ``default_rng([config.seed, 2, i])``, so every split and run is
        reproducible on its own, and a split evaluated alone (``only``) gives the numbers
        it has in the evaluation of all of them.
    """
    from .progress import Progress
    wanted = (config.transductive,) if protocols is None else _check_protocols(protocols)
    results = {protocol: {} for protocol in wanted}
    for index, (name, split) in enumerate(splits.items()):
        if only is not None and name not in only:
            continue
        progress = Progress(num_tasks, f"evaluating {name}", progress_stream, interval=5.0)
        measured = evaluate_protocols(model, theta, optimizer, split, config.num_classes,
                                      config.num_shots, config.eval_batch_size,
                                      config.eval_iters, num_tasks,
                                      np.random.default_rng([config.seed, 2, index]), wanted,
                                      config.replacement, weight_decay=config.weight_decay,
                                      progress=progress, workers=workers)
        for protocol, (accuracy, ci, _) in measured.items():
            results[protocol][name] = {"accuracy": accuracy, "ci95": ci, "tasks": num_tasks}
    return results[config.transductive] if protocols is None else results


def _check_protocols(protocols):
    """``protocols`` as a tuple of distinct booleans, or ValueError naming it."""
    try:
        flags = tuple(protocols)
    except TypeError:
        flags = None
    if (not flags or len(set(flags)) != len(flags)
            or not all(isinstance(flag, (bool, np.bool_)) for flag in flags)):
        raise ValueError(f"protocols: expected a non-empty sequence of distinct booleans "
                         f"(transductive or not), got {protocols!r}.")
    return tuple(bool(flag) for flag in flags)


def _check_adaptation(model, theta, num_classes, eval_batch, eval_iters, rng):
    """The checks `evaluate` and `evaluate_task` share.

    Raises:
        ValueError: naming ``theta`` (not the model's flat float vector), ``num_classes``
            or ``eval_batch`` (not integers >= 1), ``eval_iters`` (not an integer >= 0)
            or ``rng`` (not a Generator).
    """
    model.layout.check(theta)
    checks.integer("num_classes", num_classes)
    checks.integer("eval_batch", eval_batch)
    checks.integer("eval_iters", eval_iters, low=0)
    checks.generator("rng", rng)


def _draw_tasks(split, num_classes, num_shots, eval_batch, eval_iters, num_tasks, rng,
                replacement, dtype):
    """Each task with its mini-batches: its examples, then its batches, drawn from ``rng``."""
    for _ in range(num_tasks):
        task = sample_task(split, num_classes, num_shots + 1, rng, dtype=dtype)
        yield task, minibatches(num_classes * num_shots, eval_batch, eval_iters, rng, replacement)


def _collect(counts, num_tasks, num_classes, protocols, progress):
    """Per-task accuracies, (num_tasks, len(protocols)), from the correct-query counts of
    each protocol, updating ``progress`` with the running mean of each."""
    accuracies = np.empty((num_tasks, len(protocols)))
    names = (["accuracy"] if len(protocols) == 1 else
             ["transductive" if protocol else "non-transductive" for protocol in protocols])
    for index, correct in enumerate(counts):
        accuracies[index] = np.asarray(correct) / num_classes
        if progress is not None:
            means = accuracies[:index + 1].mean(axis=0)
            progress.update(index + 1, **{name: f"{mean:.3f}" for name, mean in zip(names, means)})
    return accuracies


def _count_task(context, task_and_batches):
    """`adapt_and_count_protocols` for an executor: ``context`` is (model, theta, optimizer,
    settings)."""
    model, theta, optimizer, settings = context
    task, batches = task_and_batches
    return adapt_and_count_protocols(model, theta, optimizer, task, batches, *settings)


def mean_confidence_interval(values, z=1.96):
    """Mean and 95% confidence half-width of per-task results, such as accuracies.

    The half-width is z * std / sqrt(n) with the population standard deviation (ddof=0),
    the convention of the few-shot literature (MAML, Prototypical Networks).

    Args:
        values: One number per evaluated task, e.g. correct / num_queries.
        z: Normal quantile of the interval; 1.96 gives 95%.

    Returns:
        A tuple (mean, half_width) of floats.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise ValueError(
            "values: expected a non-empty sequence of finite numbers, got "
            f"{values.size} values{'' if np.all(np.isfinite(values)) else ' with NaN or inf'}.")
    return float(values.mean()), float(z * values.std() / np.sqrt(values.size))
