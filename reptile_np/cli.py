"""The ``reptile-np`` command: sine, train, eval, gradcheck, export-golden, fetch-data.

``train`` and ``eval`` take the paper code's flags with the same names and meanings
(supervised-reptile's ``args.py``), so its README commands carry over.

A run is defined by its training flags (seed, task shape, inner and outer loops, data set
and split). ``train`` records them in the checkpoint; ``train --resume`` and ``eval`` take
them from there, and a flag given on the command line that contradicts the checkpoint is
an error rather than a silent change of the run. To tell "given" from "left at its
default", those flags have no argparse default (``argparse.SUPPRESS``): a flag not given
is absent from the parsed arguments, and its value comes from the checkpoint or from
`train.TrainConfig`'s defaults.
"""
import argparse
import dataclasses
import json
import math
import os
import sys
import time

import numpy as np

from . import __version__, experiments, kernels, theory
from .conformance import command as conformance
from .predict import add_predict_parser
from .runtime import keep_freed_memory
from .sweep import add_sweep_parser

DATASETS = ("omniglot", "miniimagenet", "synthetic", "folder")

DATASET_MODELS = {"omniglot": "omniglot", "synthetic": "omniglot", "miniimagenet": "miniimagenet"}
"""The network (a `reptile_np.models.MODELS` name) each data set trains; synthetic glyphs
are Omniglot-sized. ``folder`` trains the network of its image shape (`FOLDER_MODELS`)."""

FOLDER_MODELS = {(1, 28): "omniglot", (3, 84): "miniimagenet"}
"""The network for each ``(--channels, --image-size)`` of ``--dataset folder``: the
networks' dense layer sizes follow from the input size, so only these two shapes fit."""

IMAGE_FLAGS = ("image_size", "channels")
"""The flags that shape the images of ``--dataset folder`` (the other data sets' are fixed)."""

RUN_DEFAULTS = {"dataset": "omniglot", "split": "paper", "image_size": 28, "channels": 1}
"""The training-defining flags stored beside the `TrainConfig` (in the checkpoint's run info)."""

CONFIG_FIELDS = {
    "seed": "seed", "classes": "num_classes", "shots": "num_shots", "train_shots": "train_shots",
    "inner_batch": "inner_batch_size", "inner_iters": "inner_iters",
    "learning_rate": "learning_rate", "meta_step": "meta_step_size",
    "meta_step_final": "meta_step_size_final", "meta_iters": "meta_iters",
    "replacement": "replacement", "meta_batch": "meta_batch_size",
    "eval_batch": "eval_batch_size", "eval_iters": "eval_iters",
    "eval_interval": "eval_interval", "weight_decay": "weight_decay",
    "transductive": "transductive", "foml": "foml", "foml_tail": "foml_tail", "sgd": "sgd",
    "step_weights": "step_weights", "parallel_tasks": "parallel_tasks"}
"""Each `TrainConfig` field's flag (argparse dest)."""

FIELDS_ADDED_LATER = {"parallel_tasks": False}
"""`TrainConfig` fields that checkpoints written before them lack, with the value they had."""

EVALUATION_FLAGS = ("shots", "eval_batch", "eval_iters", "transductive")
"""Training flags that ``eval`` may change: they choose how the checkpoint is evaluated, and
the model's output size does not depend on them (``--classes`` does)."""

EVAL_CHECKED_FLAGS = ("dataset", "split", "image_size", "channels", "classes", "seed")
"""Training flags ``eval`` accepts only with the checkpoint's value: the data the model must
not have trained on (the split, and the seed that shuffles the paper split), and the output
size. ``eval`` takes every other training flag from the checkpoint without asking."""

RESUME_MAY_CHANGE = ("eval_interval", "meta_iters")
"""Training flags ``--resume`` accepts with a new value (``--meta-iters`` only larger)."""


class CommandError(Exception):
    """A problem the user can fix; printed as one line, exit status 2."""


# --------------------------------------------------------------------------- flag values
# argparse prefixes a type function's ArgumentTypeError with "argument --flag:", so these
# messages need not repeat the flag; a ValueError would come out as "invalid <function
# name> value", which is why every parse failure is turned into an ArgumentTypeError.

def _integer(minimum):
    """A type function for integers of at least ``minimum``."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            wanted = "a positive integer" if minimum == 1 else f"an integer of at least {minimum}"
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return value
    return parse


_positive_int = _integer(1)
_count = _integer(0)


def _number(above=None, at_least=None):
    """A type function for finite floats, ``> above`` or ``>= at_least`` if given."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or (above is not None and value <= above) \
                or (at_least is not None and value < at_least):
            bound = (f" above {above:g}" if above is not None
                     else f" of at least {at_least:g}" if at_least is not None else "")
            raise argparse.ArgumentTypeError(f"expected a finite number{bound}, got {text!r}")
        return value
    return parse


def _weights(text):
    try:
        weights = tuple(float(w) for w in text.split(","))
    except ValueError:
        weights = ()
    if not weights or not all(math.isfinite(w) for w in weights):
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise argparse.ArgumentTypeError(f"expected comma-separated finite numbers, got {shown!r}")
    return weights


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (the usage is a --help away)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _formatter(prog):
    return argparse.ArgumentDefaultsHelpFormatter(prog, max_help_position=32)


def _option(dest):
    return "--" + dest.replace("_", "-")


def _add(group, dest, default, help, suppress, **kwargs):
    """Add the flag of ``dest``. With ``suppress``, a flag not given stays out of the parsed
    arguments (its value comes from the checkpoint or the defaults) and the help says so;
    ``suppress="checkpoint"``: its value always comes from the checkpoint (``eval``)."""
    if suppress:
        shown = ("off" if default is False else "none" if default is None else
                 ",".join(f"{w:g}" for w in default) if isinstance(default, tuple) else default)
        shown = "the checkpoint's" if suppress == "checkpoint" else f"{shown}, or the checkpoint's"
        help = f"{help} (default: {shown})"
        default = argparse.SUPPRESS
    group.add_argument(_option(dest), dest=dest, default=default, help=help, **kwargs)


def add_loop_flags(group, inner_batch, inner_iters, learning_rate, meta_step, meta_step_final,
                   meta_iters, suppress=False, meta_iters_help="outer iterations"):
    """The flags the sine demo and few-shot training share, with each one's defaults."""
    _add(group, "seed", 0, "random seed", suppress, type=int)
    _add(group, "inner_batch", inner_batch, "examples per inner step", suppress, type=_positive_int)
    _add(group, "inner_iters", inner_iters, "inner steps per task", suppress, type=_positive_int)
    _add(group, "learning_rate", learning_rate,
         "inner learning rate (Adam, or SGD for --sgd and the sine demo)", suppress,
         type=_number(above=0))
    _add(group, "meta_step", meta_step, "initial outer step size", suppress,
         type=_number(at_least=0))
    _add(group, "meta_step_final", meta_step_final, "final outer step size", suppress,
         type=_number(at_least=0))
    _add(group, "meta_iters", meta_iters, meta_iters_help, suppress, type=_positive_int)


def _thread_count(text):
    """``--threads``: a positive integer, or "auto"."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or auto, got {text!r}") \
            from None


def add_threads_flag(parser):
    parser.add_argument("--threads", type=_thread_count, default="auto",
                        help="threads of the kernels, whatever OPENBLAS_NUM_THREADS says: "
                             "the Numba kernels cut their work into pieces fixed by the shapes, "
                             "so results are the same bits for any count; the NumPy kernels "
                             "give them to OpenBLAS (the last bits may change). auto: every "
                             "core, fewer while other processes keep cores busy (Numba "
                             "kernels, re-measured once a second; OpenBLAS gets 1 under the NumPy kernels)")


def apply_threads_flag(threads):
    """Give the kernels ``--threads``' count (or, for "auto", every core, adaptively)."""
    if threads == "auto":
        kernels.set_threads(kernels.most_threads(), adaptive=True)
    else:
        kernels.set_threads(threads)


def _check_output_file(path, flag):
    """Raise CommandError unless ``path``'s directory exists and is writable (checked before
    any work, so a typo costs no training)."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise CommandError(f"{flag} {path} is a directory; give a file name.")
    if not os.path.isdir(directory):
        raise CommandError(f"{flag} {path}: the directory {directory} does not exist.")
    if not os.access(directory, os.W_OK):
        raise CommandError(f"{flag} {path}: the directory {directory} is not writable.")


# --------------------------------------------------------------------------- sine

def add_sine_parser(subparsers):
    parser = subparsers.add_parser(
        "sine", formatter_class=_formatter,
        help="meta-train on sine waves and show fast adaptation (no download needed)",
        description="Meta-train the paper's sine-wave MLP (the blog demo's settings), then "
                    "compare how fast the learned initialisation, a random one and joint "
                    "training adapt to held-out sine waves from 10 points.")
    parser.add_argument("--algorithm", choices=("reptile", "fomaml", "maml"), default="reptile",
                        help="meta-learning algorithm (maml: exact second order, float64, slow)")
    add_loop_flags(parser, inner_batch=10, inner_iters=5, learning_rate=0.02, meta_step=0.1,
                   meta_step_final=0.0, meta_iters=30000)
    parser.add_argument("--eval-tasks", type=_positive_int, default=100, help="held-out tasks to evaluate on")
    parser.add_argument("--no-baselines", action="store_true",
                        help="skip the joint-training run and the random-initialisation row")
    parser.add_argument("--plot", default="sine.png", help="where to write the figure")
    parser.add_argument("--no-plot", action="store_true", help="do not draw the figure")
    parser.add_argument("--json", help="also write the table as JSON to this file")
    add_threads_flag(parser)
    parser.set_defaults(run=run_sine)


def run_sine(args):
    from . import sine_demo
    if args.json:
        _check_output_file(args.json, "--json")
    if not args.no_plot:
        _check_output_file(args.plot, "--plot")
    settings = dict(meta_iters=args.meta_iters, inner_iters=args.inner_iters,
                    inner_batch=args.inner_batch, lr=args.learning_rate, meta_step=args.meta_step,
                    meta_step_final=args.meta_step_final, seed=args.seed)
    print(f"reptile-np {__version__} sine: {json.dumps({'algorithm': args.algorithm, **settings})}, "
          f"backend {kernels.get_backend()}, {kernels.describe_threads()}")
    settings["progress_stream"] = sys.stderr
    start = time.perf_counter()
    model, theta_random, theta_meta = sine_demo.train_sine(args.algorithm, **settings)
    thetas = {f"{args.algorithm} (meta-learned)": theta_meta}
    if not args.no_baselines:
        _, _, theta_joint = sine_demo.train_sine("joint", **settings)
        thetas["joint training (k=1)"] = theta_joint
        thetas["random initialisation"] = theta_random
    print(f"trained in {time.perf_counter() - start:.1f} s")
    tasks = sine_demo.evaluation_tasks(args.eval_tasks, args.seed)
    results = {name: sine_demo.evaluate_sine(model, theta, tasks, args.learning_rate)
               for name, theta in thetas.items()}
    print(f"\nMean squared error on the 50-point grid of {args.eval_tasks} held-out tasks, after k "
          f"full-batch SGD steps (lr {args.learning_rate}) on 10 points (mean ± 95% CI):\n")
    print(sine_demo.format_sine_table(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump({name: {str(step): {"mse": m, "ci95": ci} for step, (m, ci) in r.items()}
                       for name, r in results.items()}, file, indent=2)
    if not args.no_plot:
        panels = {name: theta for name, theta in thetas.items() if "random" not in name}
        try:
            sine_demo.plot_sine(args.plot, model, panels, tasks[0], args.learning_rate)
            print(f"\nfigure written to {args.plot}")
        except ImportError as error:
            print(f"\nno figure: {error}")
    return 0


# --------------------------------------------------------------------------- train / eval

def add_paper_flags(parser, command):
    """supervised-reptile's flags, same names, same defaults (its ``args.py``): all of them
    for ``train``, those it evaluates with for ``eval``."""
    from .train import TrainConfig
    defaults = TrainConfig()
    train = command == "train"
    suppress = True if train else "checkpoint"
    paper = parser.add_argument_group("the paper code's flags (supervised-reptile args.py)")
    if train:
        paper.add_argument("--pretrained", action="store_true",
                           help="evaluate a checkpoint without training (same as reptile-np eval)")
    paper.add_argument("--checkpoint", default="model_checkpoint", help="checkpoint directory")
    _add(paper, "classes", defaults.num_classes, "number of classes per task (N)", suppress,
         type=_positive_int)
    _add(paper, "shots", defaults.num_shots, "examples per class at evaluation (K)", suppress,
         type=_positive_int)
    if train:
        _add(paper, "train_shots", defaults.train_shots,
             "examples per class during meta-training (0: use --shots)", suppress, type=_count)
        add_loop_flags(paper, inner_batch=defaults.inner_batch_size,
                       inner_iters=defaults.inner_iters, learning_rate=defaults.learning_rate,
                       meta_step=defaults.meta_step_size,
                       meta_step_final=defaults.meta_step_size_final,
                       meta_iters=defaults.meta_iters, suppress=True,
                       meta_iters_help="outer iterations; with --resume, a larger value extends "
                                       "the run, and since the outer step size anneals linearly "
                                       "over --meta-iters, the remaining iterations then take "
                                       "other step sizes than the original schedule")
        _add(paper, "replacement", False, "sample inner batches with replacement", suppress,
             action="store_true")
        _add(paper, "meta_batch", defaults.meta_batch_size, "tasks per outer step", suppress,
             type=_positive_int)
    else:
        _add(paper, "seed", defaults.seed, "random seed (it shuffles the paper split)", suppress,
             type=int)
    _add(paper, "eval_batch", defaults.eval_batch_size, "evaluation inner batch size", suppress,
         type=_positive_int)
    _add(paper, "eval_iters", defaults.eval_iters, "evaluation inner iterations", suppress,
         type=_count)
    paper.add_argument("--eval-samples", type=_count, default=10000,
                       help="evaluation tasks per split (0: no final evaluation)")
    if train:
        _add(paper, "eval_interval", defaults.eval_interval,
             "meta-iterations between the one-task train/test accuracy logs", suppress,
             type=_positive_int)
        _add(paper, "weight_decay", defaults.weight_decay,
             "multiply weights by this before each inner step (1: off)", suppress,
             type=_number(above=0))
    _add(paper, "transductive", False,
         "predict the queries of a task together (BatchNorm statistics shared)", suppress,
         action=argparse.BooleanOptionalAction)
    if train:
        _add(paper, "foml", False, "first-order MAML instead of Reptile", suppress,
             action="store_true")
        _add(paper, "foml_tail", None,
             "FOMAML: examples per class set aside for the final inner step", suppress,
             type=_positive_int)
        _add(paper, "sgd", False, "inner SGD instead of Adam (beta1 = 0)", suppress,
             action="store_true")
        _add(paper, "step_weights", None,
             "outer update = this weighted sum of the inner steps, one weight per "
             "--inner-iters (paper section 6.2: '1' joint training, '0,1' FOMAML, "
             "'1,1' Reptile, '0.5,0.5' their average)", suppress, type=_weights)


def add_run_flags(parser, command):
    train = command == "train"
    suppress = True if train else "checkpoint"
    ours = parser.add_argument_group("reptile-np's flags")
    _add(ours, "dataset", RUN_DEFAULTS["dataset"], "data set", suppress, choices=DATASETS)
    ours.add_argument("--data-dir", default=None,
                      help="data directory (default: $REPTILE_NP_DATA or ~/.cache/reptile-np/<dataset>)")
    _add(ours, "split", RUN_DEFAULTS["split"],
         "Omniglot class split: the paper code's 1200/423 or Vinyals et al.'s", suppress,
         choices=("paper", "vinyals"))
    _add(ours, "image_size", RUN_DEFAULTS["image_size"],
         "--dataset folder: resize the images to this many pixels squared (28 or, with "
         "--channels 3, 84)", suppress, type=_positive_int)
    _add(ours, "channels", RUN_DEFAULTS["channels"],
         "--dataset folder: 1 (grayscale) or 3 (RGB)", suppress, type=int, choices=(1, 3))
    if train:
        ours.add_argument("--resume", action="store_true",
                          help="continue the run in --checkpoint, with its flags")
        ours.add_argument("--checkpoint-every", type=_positive_int, default=1000,
                          help="meta-iterations between checkpoints")
        ours.add_argument("--log", default=None,
                          help="per-iteration records as JSON lines, each written when its "
                               "iteration ends; --resume drops the records after the checkpoint")
    ours.add_argument("--backend", choices=kernels.BACKENDS, default=None,
                      help="kernels (default: $REPTILE_NP_BACKEND, else numba)")
    ours.add_argument("--results", default=None,
                      help="write the final accuracies as JSON here (default: "
                           "<checkpoint>/results-<K>shot-<protocol>.json, for a released "
                           "checkpoint ./<name>-results-...); an existing file "
                           "is replaced only if it holds the same evaluation of the same "
                           "--checkpoint")
    ours.add_argument("--both-protocols", action="store_true",
                      help="evaluate non-transductively and transductively from the same "
                           "adaptations (each task adapted once, about the cost of one "
                           "protocol), writing each protocol's default results file; "
                           "instead of --transductive")
    ours.add_argument("--eval-workers", type=_positive_int, default=1,
                      help="processes for the final evaluation, one thread each (about one per "
                           "core); the accuracies do not depend on it")
    ours.add_argument("--scheduler", default=None, metavar="ADDRESS",
                      help="run the final evaluation (and --parallel-tasks) on the Dask "
                           "scheduler at ADDRESS (tcp://host:8786), or on a local cluster of N "
                           "one-thread worker processes for local:N; needs the dist extra; the "
                           "accuracies do not depend on it")
    ours.add_argument("--worker-threads", type=_positive_int, default=1,
                      help="with --scheduler: threads of each worker task's kernels")
    if train:
        _add(ours, "parallel_tasks", False,
             "adapt to the tasks of a meta-batch independently, each from a snapshot of the "
             "inner Adam state, which then becomes the tasks' mean state (a deviation from "
             "the paper's chained state, see meta.independent_reptile_step); on --scheduler's "
             "workers if given", suppress, action="store_true")
    add_threads_flag(ours)


def add_train_parsers(subparsers):
    commands = (
        ("train", False, "meta-train on few-shot classification",
         "Meta-train Reptile (or FOMAML with --foml) with the paper code's flags, "
         "checkpointing as it goes, then evaluate on every split. With --resume (or "
         "--pretrained), the training flags come from the checkpoint; giving one with "
         "another value is an error."),
        ("eval", True, "evaluate a checkpoint (same as train --pretrained)",
         "Evaluate the checkpoint in --checkpoint on every split, as the paper code does "
         "with --pretrained. The training flags come from the checkpoint; --shots, "
         "--eval-batch, --eval-iters and --transductive choose the evaluation."))
    for name, pretrained, summary, description in commands:
        parser = subparsers.add_parser(name, formatter_class=_formatter, help=summary,
                                       description=description)
        add_paper_flags(parser, name)
        add_run_flags(parser, name)
        parser.set_defaults(run=run_train, pretrained=pretrained)


def load_splits(dataset, data_dir, split, seed, image_size=RUN_DEFAULTS["image_size"],
                channels=RUN_DEFAULTS["channels"]):
    """``{"train": ClassImages, "test": ..., ["val": ...]}`` for a data set (``image_size``
    and ``channels`` shape the images of ``folder`` only)."""
    from .data import fetch
    if dataset == "synthetic":
        from .data.synthetic import load_synthetic
        return load_synthetic(seed=seed)
    if dataset == "folder" and not data_dir:
        # Only the user knows where their own images are; there is no default place.
        raise CommandError("--dataset folder needs --data-dir DIR, the folder of train/ and "
                           "test/ (and optionally val/) class folders.")
    data_dir = data_dir or os.path.join(fetch.default_data_dir(), dataset)
    # The loaders check --data-dir before any cache is used, and keep the decoded cache in
    # our own data directory (never in the user's data folder, which may be shared or
    # read-only), keyed by --data-dir: where fetch-data leaves it.
    if dataset == "omniglot":
        from .data.omniglot import load_omniglot
        return load_omniglot(data_dir, split=split, seed=seed)
    if dataset == "folder":
        from .data.folder import load_folder
        return load_folder(data_dir, image_size=image_size, channels=channels)
    from .data.miniimagenet import load_miniimagenet
    return load_miniimagenet(data_dir)


def run_train(args):
    """`train` and `eval`, with ``--scheduler``'s cluster (if given) open throughout."""
    import contextlib
    if args.scheduler and args.eval_workers != 1:
        raise CommandError("--scheduler and --eval-workers both choose where the evaluation "
                           "runs; pass one of them.")
    if args.scheduler:
        from .dist import connect
        cluster = connect(args.scheduler, args.worker_threads)
    else:
        cluster = contextlib.nullcontext(args.eval_workers)
    with cluster as executor:
        return _train_or_evaluate(args, executor)


def _train_or_evaluate(args, executor):
    from . import models, train
    from .checkpoint import load_checkpoint
    from .files import ensure_writable_dir
    from .release import check_checkpoint_dir
    from .runlock import lock_run_directory
    if args.pretrained and getattr(args, "resume", False):
        raise CommandError("--resume continues training and --pretrained only evaluates; "
                           "pass one of them.")
    if args.backend:
        kernels.set_backend(args.backend)
    if os.path.exists(args.checkpoint) and not os.path.isdir(args.checkpoint):
        raise CommandError(f"--checkpoint {args.checkpoint} is not a directory.")
    check_checkpoint_dir(args.checkpoint, args.pretrained)  # released ones: verified, read-only
    path = train.checkpoint_file(args.checkpoint)
    given = {dest: getattr(args, dest) for dest in (*CONFIG_FIELDS, *RUN_DEFAULTS)
             if hasattr(args, dest)}
    lock = None  # the checkpoint directory's lock, for a training
    if args.pretrained:
        settings, run_info = _evaluation_settings(given, load_checkpoint(path)[2], path)
    else:
        if args.resume and not os.path.isfile(path):
            raise CommandError(f"--resume: there is no checkpoint in --checkpoint "
                               f"{args.checkpoint} to continue.")
        if not args.resume:
            settings, run_info = {**_default_settings(), **given}, {}
            train.check_config(config_from_settings(settings))
            _model_name(settings, given)  # refuses a bad image shape before any work
        ensure_writable_dir(args.checkpoint, "--checkpoint")
        lock = lock_run_directory(args.checkpoint)  # held until this process exits
        if args.resume:
            settings, run_info = _resume_settings(given, load_checkpoint(path)[2], args.checkpoint)
        elif os.path.exists(path):
            raise CommandError(f"{path} already exists; pass --resume to continue it, or choose "
                               f"another --checkpoint.")
        if args.log:
            _check_output_file(args.log, "--log")
            if not args.resume and os.path.isfile(args.log) and os.path.getsize(args.log):
                raise CommandError(f"--log {args.log} already holds records; choose another "
                                   f"file (or pass --resume to continue the run it logs).")
    config = config_from_settings(settings)
    train.check_config(config)
    results_paths = _results_paths(args, config, given) if args.eval_samples else {}

    model_name = _model_name(settings, given)
    splits = load_splits(settings["dataset"], args.data_dir, settings["split"], config.seed,
                         settings["image_size"], settings["channels"])
    model = models.MODELS[model_name](config.num_classes)
    image_shape = splits["train"].image_shape
    if image_shape != model.input_shape:
        raise CommandError(f"the {settings['dataset']} images are {image_shape}, but the model "
                           f"expects {model.input_shape}.")
    train.check_config(config, splits)
    optimizer = train.make_optimizer(config, model.num_params, np.float32)
    # The image shape trained on, whatever the data set (only folder's can be chosen).
    run_info.update(dataset=settings["dataset"], split=settings["split"],
                    image_size=image_shape[1], channels=image_shape[0], model=model_name,
                    backend=kernels.get_backend())
    print(f"reptile-np {__version__} {settings['dataset']}: {json.dumps(dataclasses.asdict(config))}")
    print(f"backend {kernels.get_backend()}, {kernels.describe_threads()}, {model.num_params} parameters, "
          + ", ".join(f"{name} {s.num_classes} classes" for name, s in splits.items()))
    start_iteration = 0
    if args.pretrained or args.resume:
        theta, start_iteration, metadata = train.resume(path, model, optimizer)
        print(f"loaded {path} at meta-iteration {start_iteration}")
        if not metadata["verified"]:
            print(f"warning: {path} was written by an older reptile-np without checksums, so "
                  f"damage to it cannot be detected; the next checkpoint is written with them.",
                  file=sys.stderr)
    else:
        theta = model.init(np.random.default_rng(config.seed), np.float32)
    if not args.pretrained:
        theta = train.meta_train(model, theta, optimizer, splits, config, start_iteration, path,
                                 args.checkpoint_every, args.log, sys.stderr, run_info,
                                 executor if args.scheduler else None)
        start_iteration = config.meta_iters
    if results_paths:
        _evaluate_and_write(args, model, theta, optimizer, splits, config, run_info,
                            start_iteration, results_paths, executor)
    if lock is not None:
        lock.close()
    return 0


def _model_name(settings, given):
    """The `reptile_np.models.MODELS` name the run trains, or CommandError for image flags
    that do not apply (another data set) or fit no network (a folder's image shape)."""
    dataset = settings["dataset"]
    if dataset != "folder":
        for dest in IMAGE_FLAGS:
            if dest in given:
                raise CommandError(f"{_show(dest, given[dest])} applies only to --dataset "
                                   f"folder; the {dataset} images have a fixed size.")
        return DATASET_MODELS[dataset]
    shape = (settings["channels"], settings["image_size"])
    if shape not in FOLDER_MODELS:
        supported = " or ".join(f"--channels {c} --image-size {s}" for c, s in FOLDER_MODELS)
        raise CommandError(f"--channels {shape[0]} --image-size {shape[1]} fits none of the "
                           f"networks: --dataset folder supports {supported}.")
    return FOLDER_MODELS[shape]


def _evaluate_and_write(args, model, theta, optimizer, splits, config, run_info, iteration,
                        results_paths, executor):
    """The final evaluation on every split (on ``executor``, see `reptile_np.workers`) under
    each protocol of ``results_paths`` (``{transductive: path}``, both protocols from the
    same adaptations): print each table, write each results file."""
    from .evaluate import evaluate_splits
    measured = evaluate_splits(model, theta, optimizer, splits, config, args.eval_samples,
                               executor, sys.stderr, protocols=tuple(results_paths))
    for transductive, results_path in results_paths.items():
        results = measured[transductive]
        protocol_config = dataclasses.replace(config, transductive=transductive)
        mode = "transductive" if transductive else "non-transductive"
        print(f"\n{config.num_classes}-way {config.num_shots}-shot, {mode}, "
              f"{args.eval_samples} tasks per split:")
        for name, r in results.items():
            # One task has no spread to estimate: its interval would read "± 0.00".
            spread = f"± {100 * r['ci95']:.2f}" if args.eval_samples > 1 else "± n/a (1 task)"
            print(f"  {name:<6} {100 * r['accuracy']:6.2f}% {spread}")
        with open(results_path, "w", encoding="utf-8") as file:
            json.dump({"checkpoint": os.path.abspath(args.checkpoint), "iteration": iteration,
                       "protocol": _protocol(protocol_config),
                       "config": dataclasses.asdict(protocol_config), **run_info,
                       "results": results}, file, indent=2)
        print(f"results written to {results_path}")


# --------------------------------------------------------------------------- a run's flags

def _default_settings():
    """Every training flag's value when neither the command line nor a checkpoint sets it."""
    from .train import TrainConfig
    config = dataclasses.asdict(TrainConfig())
    return {**{dest: config[field] for dest, field in CONFIG_FIELDS.items()}, **RUN_DEFAULTS}


def config_from_settings(settings):
    """`TrainConfig` from ``{flag dest: value}`` (library functions never see argparse)."""
    from .train import TrainConfig
    return TrainConfig(**{field: settings[dest] for dest, field in CONFIG_FIELDS.items()})


def _stored_settings(metadata, path):
    """The training flags a checkpoint was trained with: ``{flag dest: value}``."""
    stored = metadata.get("config") or {}
    try:
        config = {**FIELDS_ADDED_LATER, **stored["train"]}
        settings = {dest: config[field] for dest, field in CONFIG_FIELDS.items()}
        settings.update({key: stored[key] for key in RUN_DEFAULTS if key not in IMAGE_FLAGS})
        # Checkpoints from before --dataset folder do not record the image shape; their
        # data sets' is fixed, and the flags apply to folder only.
        settings.update({key: stored.get(key, RUN_DEFAULTS[key]) for key in IMAGE_FLAGS})
    except (KeyError, TypeError):
        raise CommandError(f"{path} does not record the flags it was trained with; it cannot "
                           f"be resumed or evaluated from the command line.") from None
    if settings["step_weights"] is not None:  # JSON keeps the tuple as a list
        settings["step_weights"] = tuple(settings["step_weights"])
    return settings


def _show(dest, value):
    """A flag and its value as typed: ``--seed 3``, ``--sgd``, ``no --sgd``."""
    flag = _option(dest)
    if value is True:
        return flag
    if value is False or value is None:
        return f"no {flag}"
    if isinstance(value, tuple):
        return f"{flag} {','.join(f'{w:g}' for w in value)}"
    return f"{flag} {value}"


CONTRADICTION_REASONS = {
    "split": " (the other split's test characters include some this checkpoint trained on)",
    "seed": " (the seed shuffles the paper split: another seed's test characters include "
            "some this checkpoint trained on)",
    "classes": " (the model has one output per class)"}


def _refuse_contradictions(given, stored, allowed, purpose):
    """CommandError for the first given flag, outside ``allowed``, whose value differs from
    the checkpoint's."""
    for dest, value in given.items():
        if dest not in allowed and value != stored[dest]:
            reason = CONTRADICTION_REASONS.get(dest, "") if purpose.startswith("evaluate") else ""
            raise CommandError(f"{_show(dest, value)} contradicts the checkpoint's "
                               f"{_show(dest, stored[dest])}{reason}; drop it to {purpose}.")


def _print_taken(path, stored, given, dests):
    # The image flags say something only for --dataset folder.
    taken = [_show(dest, stored[dest]) for dest in dests if dest not in given
             and (dest not in IMAGE_FLAGS or stored["dataset"] == "folder")]
    if taken:
        print(f"from {path}: {' '.join(taken)}")


def _resume_settings(given, metadata, directory):
    """The resumed run's flags: the checkpoint's, with only what ``--resume`` may change.

    Returns:
        ``(settings, run_info)``; run info keeps the checkpoint's record of extensions.
    """
    from .train import checkpoint_file
    path = checkpoint_file(directory)
    stored = _stored_settings(metadata, path)
    _refuse_contradictions(given, stored, RESUME_MAY_CHANGE, "continue the run")
    iteration, planned = metadata["iteration"], stored["meta_iters"]
    meta_iters = given.get("meta_iters", planned)
    extensions = list(metadata["config"].get("extensions", []))
    if meta_iters <= iteration:
        reached = f"meta-iteration {iteration} of {planned}"
        if meta_iters == planned:
            raise CommandError(f"the run in --checkpoint {directory} is already complete "
                               f"({reached}); evaluate it with reptile-np eval, or pass a larger "
                               f"--meta-iters to extend it.")
        raise CommandError(f"--meta-iters {meta_iters} is not beyond the checkpoint's {reached}; "
                           f"pass a larger --meta-iters to extend the run.")
    if meta_iters < planned:
        raise CommandError(f"--meta-iters {meta_iters} contradicts the checkpoint's --meta-iters "
                           f"{planned}; only a larger value (extending the run) is allowed.")
    if meta_iters > planned:
        print(f"extending the run from --meta-iters {planned} to {meta_iters}: the outer step "
              f"size now anneals linearly over {meta_iters} iterations, so meta-iterations "
              f"{iteration + 1} to {meta_iters} take other step sizes than either schedule alone.")
        extensions.append({"iteration": iteration, "meta_iters": [planned, meta_iters]})
    _print_taken(path, stored, given, [d for d in (*RUN_DEFAULTS, *CONFIG_FIELDS)
                                       if d not in RESUME_MAY_CHANGE])
    settings = {**stored, **given, "meta_iters": meta_iters}
    return settings, ({"extensions": extensions} if extensions else {})


def _evaluation_settings(given, metadata, path):
    """Evaluation's flags: the checkpoint's, with only the evaluation flags changed.

    Returns:
        ``(settings, run_info)``; the settings keep saying how the model was trained
        (``--train-shots`` is pinned when ``--shots`` changes the evaluation's K).
    """
    stored = _stored_settings(metadata, path)
    _refuse_contradictions(given, stored, EVALUATION_FLAGS, "evaluate the checkpoint")
    _print_taken(path, stored, given, (*EVAL_CHECKED_FLAGS, *EVALUATION_FLAGS, "learning_rate",
                                       "sgd", "weight_decay", "replacement"))
    settings = {**stored, **given}
    if settings["shots"] != stored["shots"] and not stored["train_shots"]:
        settings["train_shots"] = stored["shots"]
    extensions = metadata["config"].get("extensions")
    return settings, ({"extensions": extensions} if extensions else {})


def _protocol(config):
    """What defines an evaluation of a checkpoint (its results files are told apart by it)."""
    return {"classes": config.num_classes, "shots": config.num_shots,
            "transductive": config.transductive, "eval_batch": config.eval_batch_size,
            "eval_iters": config.eval_iters}


def _results_paths(args, config, given):
    """``{transductive: results file}`` for each protocol the final evaluation measures:
    the config's, or both with ``--both-protocols`` (checked as `_results_path`)."""
    if not args.both_protocols:
        return {config.transductive: _results_path(args, config)}
    for flag, is_given in (("--transductive", "transductive" in given),
                           ("--results", args.results is not None)):
        if is_given:
            raise CommandError(f"--both-protocols writes each protocol's default results "
                               f"file; drop {flag}.")
    return {transductive: _results_path(args, dataclasses.replace(config,
                                                                  transductive=transductive))
            for transductive in (False, True)}


def _results_path(args, config):
    """Where the final accuracies go, checked before any work.

    The default name says the protocol (``results-5shot-transductive.json``), so evaluating
    a checkpoint both ways keeps both; it goes beside the checkpoint, or, for a released
    one, into the current directory (`reptile_np.release.default_results_path`). An existing file is replaced only if it holds the
    same protocol's evaluation of the same ``--checkpoint`` (a newer one of the same run);
    anything else is refused rather than lost.
    """
    from .files import ensure_writable_dir
    from .release import default_results_path, is_release
    mode = "transductive" if config.transductive else "nontransductive"
    path = args.results or default_results_path(args.checkpoint,
                                                f"results-{config.num_shots}shot-{mode}.json")
    flag = "--results" if args.results or is_release(args.checkpoint) else "--checkpoint"
    if os.path.isdir(path):
        raise CommandError(f"--results {path} is a directory; give a file name.")
    ensure_writable_dir(os.path.dirname(os.path.abspath(path)), flag)
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as file:
                existing = json.load(file)
            same = (existing.get("checkpoint") == os.path.abspath(args.checkpoint)
                    and existing.get("protocol") == _protocol(config))
        except (OSError, ValueError, AttributeError):
            same = False
        if not same:
            raise CommandError(f"{flag} {path} already holds the results of another evaluation "
                               f"or run; choose another --results, or move that file away.")
    return path


# --------------------------------------------------------------------------- checks and data

def add_model_flags(parser, run):
    """--model (one of the paper's networks) and --seed, for the per-model tools."""
    from .models import MODELS
    parser.add_argument("--model", choices=sorted(MODELS), default="omniglot", help="network")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.set_defaults(run=run)


def add_tool_parsers(subparsers):
    check = subparsers.add_parser(
        "gradcheck", formatter_class=_formatter,
        help="check every hand-written gradient of a model against finite differences",
        description="Compare the model's analytic gradient with centred finite differences "
                    "in float64, tensor by tensor; exit status 1 if any check fails.")
    add_model_flags(check, run_gradcheck)

    golden = subparsers.add_parser(
        "export-golden", formatter_class=_formatter,
        help="write weights, a batch, the loss and every gradient to one .npz",
        description="Write a framework-neutral golden file (see the README) so another "
                    "implementation can be tested against ours without PyTorch.")
    add_model_flags(golden, run_export_golden)
    golden.add_argument("--out", default="golden.npz", help="output file")

    fetch = subparsers.add_parser(
        "fetch-data", formatter_class=_formatter, help="download and prepare a data set",
        description="Download Omniglot's two zips from the dataset's public address, verify "
                    "their MD5 checksums, and build the 28x28 cache. With --from, import zips "
                    "already on disk instead (validated by content).")
    fetch.add_argument("dataset", choices=("omniglot",))
    fetch.add_argument("--dest", default=None,
                       help="data directory (default: $REPTILE_NP_DATA or ~/.cache/reptile-np, + /omniglot)")
    fetch.add_argument("--from", dest="from_dir", default=None, help="import the zips from this directory")
    fetch.set_defaults(run=run_fetch)


def run_gradcheck(args):
    from .gradcheck import format_table, run_gradcheck as check
    rows, passed = check(args.model, args.seed)
    print(format_table(rows))
    return 0 if passed else 1


def run_export_golden(args):
    from .golden import export_golden
    export_golden(args.model, args.out, seed=args.seed)
    print(f"golden file written to {args.out}")
    return 0


def run_fetch(args):
    from .data import fetch
    dest = args.dest or os.path.join(fetch.default_data_dir(), "omniglot")
    path = fetch.fetch_omniglot(dest, from_dir=args.from_dir)
    print(f"Omniglot ready in {path}: train on it with --data-dir {path}")
    return 0


# --------------------------------------------------------------------------- plot

def add_plot_parser(subparsers):
    parser = subparsers.add_parser(
        "plot", formatter_class=_formatter,
        help="draw learning curves from train --log files",
        description="Draw one figure from one or more train --log files: (a) the train and "
                    "test accuracies on one task each (the paper code's logging metric, noisy), "
                    "as running means; (b) the outer update norm |theta_new - theta_old|, "
                    "smoothed the same way, on a log scale. Needs matplotlib (the plot extra).")
    parser.add_argument("logs", nargs="+", metavar="LOG", help="JSON-lines logs of train --log")
    parser.add_argument("--out", default="curves.png",
                        help="image file to write (its suffix picks the format)")
    parser.add_argument("--smooth", type=_positive_int, default=100,
                        help="points per running mean (100: the progress line's)")
    parser.set_defaults(run=run_plot)


def run_plot(args):
    from . import plot
    _check_output_file(args.out, "--out")
    logs = dict(zip(plot.log_labels(args.logs), (plot.read_log(path) for path in args.logs)))
    plot.plot_curves(args.out, logs, args.smooth)
    print(f"figure written to {args.out}")
    return 0


# --------------------------------------------------------------------------- entry point

def build_parser():
    parser = _Parser(
        prog="reptile-np", formatter_class=_formatter,
        description="Reptile and first-order MAML in NumPy, with hand-written gradients.")
    parser.add_argument("--version", action="version", version=f"reptile-np {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_sine_parser(subparsers)
    add_train_parsers(subparsers)
    add_tool_parsers(subparsers)
    add_plot_parser(subparsers)
    add_predict_parser(subparsers)
    theory.add_theory_parser(subparsers)
    experiments.add_experiment_parser(subparsers)
    conformance.add_conformance_parser(subparsers)
    add_sweep_parser(subparsers)
    return parser


def main(argv=None):
    """Run the command; user errors become one line on stderr and exit status 2."""
    try:
        kernels.check_environment()
    except ValueError as error:
        print(f"reptile-np: error: {error}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    try:
        if hasattr(args, "threads"):
            apply_threads_flag(args.threads)
        return args.run(args)
    except (CommandError, ValueError, ImportError, FloatingPointError, OSError) as error:
        # One line, whatever the message holds (an OSError's may quote a long path).
        message = " ".join(str(error).split())
        print(f"reptile-np {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"reptile-np {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
