"""Meta-training on few-shot classification, as the paper's ``train.py`` (paper notes §1.1).

Every meta-iteration ``i`` draws its randomness from ``iteration_rng(seed, i)``, so a
run is reproducible, any iteration can be replayed, and resuming from a checkpoint
needs only theta, the inner optimiser's state and ``i``.
"""
import dataclasses
import json
import os
import time

import numpy as np

from . import kernels, meta
from .checkpoint import load_checkpoint, save_checkpoint
from .data.tasks import sample_task
from .evaluate import evaluate_task
from .optim import SGD, Adam
from .progress import Progress


@dataclasses.dataclass
class TrainConfig:
    """The paper code's hyper-parameters, with its defaults (paper notes §4.1).

    Field names follow supervised-reptile's keyword arguments; the command-line flags
    are the same with dashes (``--inner-batch`` is ``inner_batch_size``, ...).
    """

    num_classes: int = 5
    num_shots: int = 5
    train_shots: int = 0             # 0: use num_shots for meta-training too
    inner_batch_size: int = 5
    inner_iters: int = 20
    replacement: bool = False
    learning_rate: float = 1e-3
    meta_step_size: float = 0.1
    meta_step_size_final: float = 0.1
    meta_batch_size: int = 1
    meta_iters: int = 400000
    eval_batch_size: int = 5
    eval_iters: int = 50
    eval_interval: int = 10
    weight_decay: float = 1.0
    transductive: bool = False
    foml: bool = False
    foml_tail: int = None
    sgd: bool = False
    step_weights: tuple = None       # section 6.2: outer update from a weighted sum of inner steps
    seed: int = 0
    parallel_tasks: bool = False     # independent tasks: meta.independent_reptile_step

    @property
    def shots_for_training(self):
        """K used during meta-training: ``train_shots`` if set, else ``num_shots``."""
        return self.train_shots or self.num_shots


def make_optimizer(config, num_params, dtype):
    """The inner optimiser: Adam with beta1 = 0 (the paper's) or SGD with ``--sgd``."""
    if config.sgd:
        return SGD(config.learning_rate)
    return Adam(num_params, lr=config.learning_rate, beta1=0.0, dtype=dtype)


def iteration_rng(seed, iteration, stream=0):
    """The random generator of one meta-iteration (stream 1: its periodic evaluation)."""
    return np.random.default_rng([seed, iteration, stream])


def check_config(config, splits=None):
    """Raise ValueError, naming the flag, if the config cannot run (on these splits).

    Args:
        config: the `TrainConfig`.
        splits: ``{"train": ClassImages, ...}``; None checks the values alone (the command
            line does so before it loads any data).
    """
    for flag, value in (("--inner-batch", config.inner_batch_size), ("--inner-iters", config.inner_iters),
                        ("--meta-batch", config.meta_batch_size), ("--meta-iters", config.meta_iters),
                        ("--eval-batch", config.eval_batch_size), ("--eval-interval", config.eval_interval),
                        ("--classes", config.num_classes), ("--shots", config.num_shots)):
        if value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}.")
    for flag, value in (("--train-shots", config.train_shots), ("--eval-iters", config.eval_iters)):
        if value < 0:
            raise ValueError(f"{flag} must be at least 0, got {value}.")
    for flag, value, low in (("--learning-rate", config.learning_rate, "above 0"),
                             ("--weight-decay", config.weight_decay, "above 0"),
                             ("--meta-step", config.meta_step_size, "at least 0"),
                             ("--meta-step-final", config.meta_step_size_final, "at least 0")):
        if not np.isfinite(value) or value < 0 or (value == 0 and low == "above 0"):
            raise ValueError(f"{flag} must be a finite number {low}, got {value}.")
    if config.step_weights is not None and (config.foml or len(config.step_weights) != config.inner_iters):
        raise ValueError(f"--step-weights needs one weight per inner iteration "
                         f"({config.inner_iters}), got {len(config.step_weights)}, and no --foml.")
    if config.parallel_tasks and (config.foml or config.step_weights is not None):
        raise ValueError("--parallel-tasks runs Reptile only, not --foml or --step-weights.")
    if config.foml_tail is not None:
        if not config.foml:
            raise ValueError(f"--foml-tail {config.foml_tail} needs --foml.")
        if not 1 <= config.foml_tail < config.shots_for_training:
            raise ValueError(f"--foml-tail {config.foml_tail} must be at least 1 and smaller "
                             f"than the {config.shots_for_training} training shots.")
    if config.replacement:
        for flag, batch, shots in (("--inner-batch", config.inner_batch_size, config.shots_for_training),
                                   ("--eval-batch", config.eval_batch_size, config.num_shots)):
            if batch > config.num_classes * shots:
                raise ValueError(f"{flag} {batch} is more than the {config.num_classes * shots} "
                                 f"examples of a task, which --replacement cannot draw.")
    if splits is None:
        return
    for name, split in splits.items():
        if config.num_classes > split.num_classes:
            raise ValueError(f"--classes {config.num_classes} is more than the {split.num_classes} "
                             f"classes of the {name} split.")
    train = splits["train"]
    if config.shots_for_training > train.samples_per_class:
        raise ValueError(f"--train-shots/--shots {config.shots_for_training} is more than the "
                         f"{train.samples_per_class} samples each class has.")
    if config.num_shots + 1 > min(s.samples_per_class for s in splits.values()):
        raise ValueError(f"--shots {config.num_shots} needs {config.num_shots + 1} samples per "
                         f"class for evaluation (K support + 1 query), more than the data has.")


def meta_iteration(model, theta, optimizer, train_split, config, iteration, executor=None):
    """One outer step: sample the meta-batch of tasks, adapt to each, update theta.

    With ``config.parallel_tasks`` the tasks are independent
    (`reptile_np.meta.independent_reptile_step`) and adapt on ``executor`` (None: here).

    Returns:
        ``(new_theta, epsilon)``: the updated parameters (``theta`` is left as it was) and
        the outer step size the linear schedule gave this iteration (`meta.meta_step_size`).
    """
    rng = iteration_rng(config.seed, iteration)
    tasks = [sample_task(train_split, config.num_classes, config.shots_for_training, rng,
                         dtype=theta.dtype) for _ in range(config.meta_batch_size)]
    epsilon = meta.meta_step_size(iteration, config.meta_iters, config.meta_step_size,
                                  config.meta_step_size_final)
    common = dict(replacement=config.replacement, weight_decay=config.weight_decay)
    if config.step_weights is not None:
        new_theta = meta.combination_step(model, theta, tasks, optimizer, rng,
                                          config.inner_batch_size, config.inner_iters, epsilon,
                                          config.step_weights, **common)
    elif config.parallel_tasks:
        new_theta = meta.independent_reptile_step(model, theta, tasks, optimizer, rng,
                                                  config.inner_batch_size, config.inner_iters,
                                                  epsilon, executor=executor, **common)
    elif config.foml:
        new_theta = meta.fomaml_step(model, theta, tasks, optimizer, rng, config.inner_batch_size,
                                     config.inner_iters, epsilon, tail_shots=config.foml_tail,
                                     **common)
    else:
        new_theta = meta.reptile_step(model, theta, tasks, optimizer, rng, config.inner_batch_size,
                                      config.inner_iters, epsilon, **common)
    return new_theta, epsilon


def quick_accuracy(model, theta, optimizer, split, config, rng):
    """Accuracy on one evaluation task (the paper's periodic, noisy, logging metric)."""
    task = sample_task(split, config.num_classes, config.num_shots + 1, rng, dtype=theta.dtype)
    return evaluate_task(model, theta, optimizer, task, config.num_classes,
                         config.eval_batch_size, config.eval_iters, rng, config.transductive,
                         config.replacement, weight_decay=config.weight_decay) / config.num_classes


def meta_train(model, theta, optimizer, splits, config, start_iteration=0, checkpoint_path=None,
               checkpoint_every=1000, log_path=None, progress_stream=None, run_info=None,
               executor=None):
    """Meta-train from ``start_iteration`` to ``config.meta_iters``.

    Every ``config.eval_interval`` iterations, one train task and one test task are
    evaluated (as the paper's code logs them); a running mean of the last 100 of
    each is shown on the progress line and every value goes to ``log_path`` (JSON lines,
    one record per iteration, written as the iteration ends; records after
    ``start_iteration`` already in the file are dropped first, see `open_log`). A record
    holds ``iteration`` (1-based: the iterations done), ``time``, ``epsilon`` (the outer
    step size used), ``update_norm`` (the 2-norm of that iteration's change of theta) and,
    every ``eval_interval`` iterations, ``train_accuracy`` and ``test_accuracy``.

    Args:
        splits: ``{"train": ClassImages, "test": ClassImages, ...}``.
        checkpoint_path: write a checkpoint there every ``checkpoint_every`` iterations
            and at the end (None: never).
        run_info: JSON-serialisable dict stored in checkpoints beside the config.
        executor: where the tasks of a meta-batch adapt with ``config.parallel_tasks``
            (see `meta_iteration`).

    Returns:
        The meta-trained theta.

    Raises:
        FloatingPointError: theta became non-finite (the last checkpoint is kept).
        OSError: a checkpoint could not be written (the message says which one is kept).
    """
    check_config(config, splits)
    progress = Progress(config.meta_iters, "meta-iteration", progress_stream, start=start_iteration)
    recent = {"train": [], "test": []}
    stored_config = {"train": dataclasses.asdict(config), **(run_info or {})}
    saved = start_iteration if start_iteration else None  # the iteration on disk, if any
    log = open_log(log_path, start_iteration) if log_path else None
    try:
        for iteration in range(start_iteration, config.meta_iters):
            kernels.adapt_threads()  # the cores other processes leave free (--threads auto)
            new_theta, epsilon = meta_iteration(model, theta, optimizer, splits["train"], config,
                                                iteration, executor)
            if not np.all(np.isfinite(new_theta)):
                raise FloatingPointError(
                    f"theta became non-finite at meta-iteration {iteration}; lower "
                    f"--learning-rate or --meta-step (the last checkpoint is kept).")
            # The outer step's length |theta_new - theta_old|_2. Divided by epsilon it is the
            # length of the mean direction the tasks pulled theta in (phi - theta for
            # Reptile), so the log tells the schedule's annealing from the tasks' own pull.
            update_norm = float(np.linalg.norm(new_theta - theta))
            theta = new_theta
            record = {"iteration": iteration + 1, "time": time.time(), "epsilon": epsilon,
                      "update_norm": update_norm}
            if (iteration + 1) % config.eval_interval == 0:
                rng = iteration_rng(config.seed, iteration, stream=1)
                for name in ("train", "test"):
                    record[f"{name}_accuracy"] = quick_accuracy(model, theta, optimizer,
                                                                splits[name], config, rng)
                    recent[name] = (recent[name] + [record[f"{name}_accuracy"]])[-100:]
            if log is not None:
                # Flushed at once, so a killed run's log holds every iteration it finished;
                # written before the checkpoint, so no checkpointed iteration lacks its record.
                log.write(json.dumps(record) + "\n")
                log.flush()
            if checkpoint_path and ((iteration + 1) % checkpoint_every == 0
                                    or iteration + 1 == config.meta_iters):
                _save(checkpoint_path, model, theta, optimizer, iteration + 1, stored_config, saved)
                saved = iteration + 1
            fields = {name: f"{np.mean(values):.3f}" for name, values in recent.items() if values}
            progress.update(iteration + 1, **fields)
    finally:
        if log is not None:
            log.close()
    return theta


def _save(path, model, theta, optimizer, iteration, stored_config, saved):
    """`save_checkpoint`; when it fails (a full disk), the error also says which
    meta-iteration the checkpoint that was kept holds."""
    try:
        save_checkpoint(path, model, theta, optimizer.snapshot(), iteration, stored_config)
    except OSError as error:
        if saved is None:
            raise
        raise OSError(f"{error} It holds meta-iteration {saved}.") from None


def open_log(path, start_iteration):
    """Open a JSON-lines log to append the records after ``start_iteration``.

    The records of later iterations (written by a run that went on past its last
    checkpoint, then died) are dropped first, and so is a torn last line, so a resumed
    run's log holds every iteration exactly once.

    Returns:
        The file, open for appending.
    """
    keep = 0
    if os.path.isfile(path):
        with open(path, "rb") as file:
            for line in file:
                try:
                    record = json.loads(line)
                    beyond = record["iteration"] > start_iteration
                except (ValueError, KeyError, TypeError):
                    beyond = True
                if beyond or not line.endswith(b"\n"):
                    break
                keep += len(line)
        os.truncate(path, keep)
    return open(path, "a", encoding="utf-8")


def resume(checkpoint_path, model, optimizer):
    """Load theta and optimiser state from a checkpoint; return (theta, iteration, metadata).

    Raises:
        ValueError: the checkpoint is unreadable, of another model, or its optimiser state
            (Adam's m, v, t; none for SGD) is not ``optimizer``'s kind.
    """
    theta, optimizer_state, metadata = load_checkpoint(checkpoint_path, model)
    if bool(optimizer_state) != bool(optimizer.snapshot()):
        stored, wanted = ("Adam", "SGD") if optimizer_state else ("SGD", "Adam")
        raise ValueError(f"checkpoint {checkpoint_path} holds {stored} state, but the run uses "
                         f"{wanted} (--sgd decides).")
    if optimizer_state:
        optimizer.restore(optimizer_state)
    return theta, metadata["iteration"], metadata


def checkpoint_file(directory):
    """The checkpoint path inside a ``--checkpoint`` directory."""
    return os.path.join(directory, "checkpoint.npz")
