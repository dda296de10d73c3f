"""The ``reptile-np`` command: sine, train, eval, gradcheck, export-golden, fetch-data.

``train`` and ``eval`` take the paper code's flags with the same names and meanings
(supervised-reptile's ``args.py``), so its README commands carry over.
"""
import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np

from . import __version__, kernels
from .runtime import keep_freed_memory

DATASETS = ("omniglot", "miniimagenet", "synthetic")


class CommandError(Exception):
    """A problem the user can fix; printed as one line, exit status 2."""


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _weights(text):
    try:
        return tuple(float(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _formatter(prog):
    return argparse.ArgumentDefaultsHelpFormatter(prog, max_help_position=32)


def add_loop_flags(group, inner_batch, inner_iters, learning_rate, meta_step, meta_step_final,
                   meta_iters):
    """The flags the sine demo and few-shot training share, with each one's defaults."""
    group.add_argument("--seed", type=int, default=0, help="random seed")
    group.add_argument("--inner-batch", type=_positive_int, default=inner_batch,
                       help="examples per inner step")
    group.add_argument("--inner-iters", type=_positive_int, default=inner_iters,
                       help="inner steps per task")
    group.add_argument("--learning-rate", type=float, default=learning_rate,
                       help="inner learning rate (Adam, or SGD for --sgd and the sine demo)")
    group.add_argument("--meta-step", type=float, default=meta_step, help="initial outer step size")
    group.add_argument("--meta-step-final", type=float, default=meta_step_final,
                       help="final outer step size")
    group.add_argument("--meta-iters", type=_positive_int, default=meta_iters, help="outer iterations")


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
    parser.set_defaults(run=run_sine)


def run_sine(args):
    from . import sine_demo
    settings = dict(meta_iters=args.meta_iters, inner_iters=args.inner_iters,
                    inner_batch=args.inner_batch, lr=args.learning_rate, meta_step=args.meta_step,
                    meta_step_final=args.meta_step_final, seed=args.seed)
    print(f"reptile-np {__version__} sine: {json.dumps({'algorithm': args.algorithm, **settings})}, "
          f"backend {kernels.get_backend()}")
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

def add_paper_flags(parser):
    """supervised-reptile's flags, same names, same defaults (REFERENCE d.1)."""
    paper = parser.add_argument_group("the paper code's flags (supervised-reptile args.py)")
    paper.add_argument("--pretrained", action="store_true", help="evaluate a checkpoint without training")
    paper.add_argument("--checkpoint", default="model_checkpoint", help="checkpoint directory")
    paper.add_argument("--classes", type=_positive_int, default=5, help="number of classes per task (N)")
    paper.add_argument("--shots", type=_positive_int, default=5, help="examples per class at evaluation (K)")
    paper.add_argument("--train-shots", type=int, default=0,
                       help="examples per class during meta-training (0: use --shots)")
    add_loop_flags(paper, inner_batch=5, inner_iters=20, learning_rate=1e-3, meta_step=0.1,
                   meta_step_final=0.1, meta_iters=400000)
    paper.add_argument("--replacement", action="store_true", help="sample inner batches with replacement")
    paper.add_argument("--meta-batch", type=_positive_int, default=1, help="tasks per outer step")
    paper.add_argument("--eval-batch", type=_positive_int, default=5, help="evaluation inner batch size")
    paper.add_argument("--eval-iters", type=int, default=50, help="evaluation inner iterations")
    paper.add_argument("--eval-samples", type=int, default=10000, help="evaluation tasks per split")
    paper.add_argument("--eval-interval", type=_positive_int, default=10,
                       help="meta-iterations between the one-task train/test accuracy logs")
    paper.add_argument("--weight-decay", type=float, default=1.0,
                       help="multiply weights by this before each inner step (1: off)")
    paper.add_argument("--transductive", action="store_true",
                       help="predict the queries of a task together (BatchNorm statistics shared)")
    paper.add_argument("--foml", action="store_true", help="first-order MAML instead of Reptile")
    paper.add_argument("--foml-tail", type=int, default=None,
                       help="FOMAML: examples per class set aside for the final inner step")
    paper.add_argument("--sgd", action="store_true", help="inner SGD instead of Adam (beta1 = 0)")
    paper.add_argument("--step-weights", type=_weights, default=None,
                       help="outer update = this weighted sum of the inner steps, one weight per "
                            "--inner-iters (paper section 6.2: '1' joint training, '0,1' FOMAML, "
                            "'1,1' Reptile, '0.5,0.5' their average)")


def add_run_flags(parser):
    ours = parser.add_argument_group("reptile-np's flags")
    ours.add_argument("--dataset", choices=DATASETS, default="omniglot", help="data set")
    ours.add_argument("--data-dir", default=None,
                      help="data directory (default: $REPTILE_NP_DATA or ~/.cache/reptile-np/<dataset>)")
    ours.add_argument("--split", choices=("paper", "vinyals"), default="paper",
                      help="Omniglot class split: the paper code's 1200/423 or Vinyals et al.'s")
    ours.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    ours.add_argument("--checkpoint-every", type=_positive_int, default=1000,
                      help="meta-iterations between checkpoints")
    ours.add_argument("--log", default=None, help="append per-iteration records to this JSON-lines file")
    ours.add_argument("--backend", choices=kernels.BACKENDS, default=None,
                      help="kernels (default: $REPTILE_NP_BACKEND, else numba)")
    ours.add_argument("--results", default=None,
                      help="write the final accuracies as JSON here (default: <checkpoint>/results.json)")
    ours.add_argument("--eval-workers", type=_positive_int, default=1,
                      help="processes for the final evaluation, one thread each (about one per "
                           "core); the accuracies do not depend on it")


def add_train_parsers(subparsers):
    commands = (
        ("train", False, "meta-train on few-shot classification",
         "Meta-train Reptile (or FOMAML with --foml) with the paper code's flags, "
         "checkpointing as it goes, then evaluate on every split."),
        ("eval", True, "evaluate a checkpoint (same as train --pretrained)",
         "Evaluate the checkpoint in --checkpoint on every split, as the paper code does "
         "with --pretrained."))
    for name, pretrained, summary, description in commands:
        parser = subparsers.add_parser(name, formatter_class=_formatter, help=summary,
                                       description=description)
        add_paper_flags(parser)
        add_run_flags(parser)
        parser.set_defaults(run=run_train, pretrained=pretrained)


def config_from_args(args):
    """`TrainConfig` from parsed flags (library functions never see argparse)."""
    from .train import TrainConfig
    return TrainConfig(
        num_classes=args.classes, num_shots=args.shots, train_shots=args.train_shots,
        inner_batch_size=args.inner_batch, inner_iters=args.inner_iters,
        replacement=args.replacement, learning_rate=args.learning_rate,
        meta_step_size=args.meta_step, meta_step_size_final=args.meta_step_final,
        meta_batch_size=args.meta_batch, meta_iters=args.meta_iters,
        eval_batch_size=args.eval_batch, eval_iters=args.eval_iters,
        eval_interval=args.eval_interval, weight_decay=args.weight_decay,
        transductive=args.transductive, foml=args.foml, foml_tail=args.foml_tail, sgd=args.sgd,
        step_weights=args.step_weights, seed=args.seed)


def load_splits(dataset, data_dir, split, seed):
    """``{"train": ClassImages, "test": ..., ["val": ...]}`` for a data set."""
    from .data import fetch
    if dataset == "synthetic":
        from .data.synthetic import load_synthetic
        return load_synthetic(seed=seed)
    data_dir = data_dir or os.path.join(fetch.default_data_dir(), dataset)
    # The loaders check --data-dir before any cache is used, and keep the decoded cache in
    # our own data directory (never in the user's data folder, which may be shared or
    # read-only), keyed by --data-dir: where fetch-data leaves it.
    if dataset == "omniglot":
        from .data.omniglot import load_omniglot
        return load_omniglot(data_dir, split=split, seed=seed)
    from .data.miniimagenet import load_miniimagenet
    return load_miniimagenet(data_dir)


def run_train(args):
    from . import models, train
    from .evaluate import evaluate
    from .progress import Progress
    if args.backend:
        kernels.set_backend(args.backend)
    config = config_from_args(args)
    splits = load_splits(args.dataset, args.data_dir, args.split, args.seed)
    image_shape = splits["train"].image_shape
    model = (models.miniimagenet_cnn if image_shape[0] == 3 else models.omniglot_cnn)(config.num_classes)
    if image_shape != model.input_shape:
        raise CommandError(f"the {args.dataset} images are {image_shape}, but the model expects "
                           f"{model.input_shape}.")
    train.check_config(config, splits)
    optimizer = train.make_optimizer(config, model.num_params, np.float32)
    path = train.checkpoint_file(args.checkpoint)
    run_info = {"dataset": args.dataset, "split": args.split, "model": type(model).__name__,
                "backend": kernels.get_backend()}
    print(f"reptile-np {__version__} {args.dataset}: {json.dumps(dataclasses.asdict(config))}")
    print(f"backend {kernels.get_backend()}, {model.num_params} parameters, "
          + ", ".join(f"{name} {s.num_classes} classes" for name, s in splits.items()))
    start_iteration = 0
    if args.pretrained or args.resume:
        theta, start_iteration, _ = train.resume(path, model, optimizer)
        print(f"loaded {path} at meta-iteration {start_iteration}")
    else:
        if os.path.exists(path):
            raise CommandError(f"{path} already exists; pass --resume to continue it, or choose "
                               f"another --checkpoint.")
        theta = model.init(np.random.default_rng(config.seed), np.float32)
    if not args.pretrained:
        theta = train.meta_train(model, theta, optimizer, splits, config, start_iteration, path,
                                 args.checkpoint_every, args.log, sys.stderr, run_info)
    results = {}
    for index, (name, split) in enumerate(splits.items()):
        if args.eval_samples < 1:
            break
        progress = Progress(args.eval_samples, f"evaluating {name}", sys.stderr, interval=5.0)
        accuracy, ci, _ = evaluate(model, theta, optimizer, split, config.num_classes,
                                   config.num_shots, config.eval_batch_size, config.eval_iters,
                                   args.eval_samples, np.random.default_rng([config.seed, 2, index]),
                                   config.transductive, config.replacement,
                                   weight_decay=config.weight_decay, progress=progress,
                                   workers=args.eval_workers)
        results[name] = {"accuracy": accuracy, "ci95": ci, "tasks": args.eval_samples}
    if results:
        mode = "transductive" if config.transductive else "non-transductive"
        print(f"\n{config.num_classes}-way {config.num_shots}-shot, {mode}, "
              f"{args.eval_samples} tasks per split:")
        for name, r in results.items():
            print(f"  {name:<6} {100 * r['accuracy']:6.2f}% ± {100 * r['ci95']:.2f}")
        results_path = args.results or os.path.join(args.checkpoint, "results.json")
        os.makedirs(os.path.dirname(os.path.abspath(results_path)), exist_ok=True)
        with open(results_path, "w", encoding="utf-8") as file:
            json.dump({"config": dataclasses.asdict(config), **run_info, "results": results},
                      file, indent=2)
        print(f"results written to {results_path}")
    return 0


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


# --------------------------------------------------------------------------- entry point

def build_parser():
    parser = argparse.ArgumentParser(
        prog="reptile-np", formatter_class=_formatter,
        description="Reptile and first-order MAML in NumPy, with hand-written gradients.")
    parser.add_argument("--version", action="version", version=f"reptile-np {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_sine_parser(subparsers)
    add_train_parsers(subparsers)
    add_tool_parsers(subparsers)
    return parser


def main(argv=None):
    """Run the command; user errors become one line on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    try:
        return args.run(args)
    except (CommandError, ValueError, ImportError, FloatingPointError, OSError) as error:
        print(f"reptile-np {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"reptile-np {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
