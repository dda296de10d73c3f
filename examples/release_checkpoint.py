"""Release a finished training checkpoint: copy it into checkpoints/<name>/, measure it, document it.

    python3 examples/release_checkpoint.py SRC_CHECKPOINT_DIR checkpoints/omniglot-5w5s \\
        --eval-samples 10000

1. copies ``SRC_CHECKPOINT_DIR/checkpoint.npz`` into the release directory (the checkpoint
   alone: not the run's results files, log or lock);
2. evaluates the copy on the test split under both protocols, non-transductive and
   transductive, ``--eval-samples`` tasks each in ``--eval-workers`` processes. These are
   the very tasks ``reptile-np eval`` draws for the test split (`evaluate_splits` with
   ``only``), so the command written beside each number measures it again;
3. writes ``release.json`` and ``README.md`` (the convention: `reptile_np.release`).

The release directory may be new or hold an earlier release (its three files are
replaced); anything else in it is refused. Bad input is one line and exit status 2, as
on the command line.
"""
import argparse
import os
import shlex
import shutil
import sys
from pathlib import Path

from reptile_np import __version__, kernels
from reptile_np.cli import RUN_DEFAULTS, load_splits
from reptile_np.evaluate import evaluate_splits
from reptile_np.files import atomic_path
from reptile_np.release import (FORMAT, PROTOCOLS, RELEASE_FILE, load_trained, sha256_file,
                                training_command, write_release)
from reptile_np.train import checkpoint_file

CHECKPOINT = os.path.basename(checkpoint_file("."))
RELEASE_FILES = {CHECKPOINT, RELEASE_FILE, "README.md"}
SPLIT = "test"


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="release_checkpoint.py",
        description="Copy a finished training checkpoint into a release directory, evaluate "
                    "it on the test split under both protocols, and write release.json and "
                    "README.md with the numbers.")
    parser.add_argument("source", metavar="SRC_CHECKPOINT_DIR",
                        help="the --checkpoint directory of a finished reptile-np train run")
    parser.add_argument("dest", metavar="RELEASE_DIR", help="e.g. checkpoints/omniglot-5w5s")
    parser.add_argument("--eval-samples", type=int, default=10000,
                        help="evaluation tasks per protocol (default: 10000, the paper's)")
    parser.add_argument("--eval-workers", type=int, default=2,
                        help="evaluation processes (default: 2); the numbers do not depend on it")
    parser.add_argument("--data-dir", default=None,
                        help="the data set's directory (default: where fetch-data puts it)")
    args = parser.parse_args(argv)
    for flag, value in (("--eval-samples", args.eval_samples), ("--eval-workers", args.eval_workers)):
        if value < 1:
            parser.error(f"{flag} must be at least 1, got {value}")
    return args


def prepare_release_dir(dest):
    """Make ``dest`` an empty release directory (an earlier release's files removed)."""
    if dest.exists():
        if not dest.is_dir():
            raise ValueError(f"RELEASE_DIR {dest} is not a directory.")
        others = sorted(set(os.listdir(dest)) - RELEASE_FILES)
        if others:
            raise ValueError(f"RELEASE_DIR {dest} holds {others[0]}, which is no release file "
                             f"({', '.join(sorted(RELEASE_FILES))}); choose an empty directory.")
    dest.mkdir(parents=True, exist_ok=True)
    # release.json goes first: until the new one is written, the directory is no release.
    for name in (RELEASE_FILE, "README.md"):
        (dest / name).unlink(missing_ok=True)


def release(args):
    source, dest = args.source, Path(args.dest)
    load_trained(source, "SRC_CHECKPOINT_DIR")  # refuses a missing or damaged checkpoint first
    prepare_release_dir(dest)
    with atomic_path(dest / CHECKPOINT) as tmp:
        shutil.copyfile(checkpoint_file(source), tmp)
    # Everything below reads the copy: the numbers are the released file's.
    model, theta, optimizer, config, metadata = load_trained(str(dest), "RELEASE_DIR")
    run = metadata["config"]
    if metadata["iteration"] < config.meta_iters:
        print(f"warning: {source} is at meta-iteration {metadata['iteration']} of its "
              f"{config.meta_iters}: this releases an unfinished run.", file=sys.stderr)
    splits = load_splits(run["dataset"], args.data_dir, run["split"], config.seed,
                         run.get("image_size", RUN_DEFAULTS["image_size"]),
                         run.get("channels", RUN_DEFAULTS["channels"]))
    # Both protocols from the same adaptations: each number is what eval measures alone.
    measured = evaluate_splits(model, theta, optimizer, splits, config, args.eval_samples,
                               args.eval_workers, sys.stderr, only=(SPLIT,),
                               protocols=(False, True))
    results = {}
    for protocol in PROTOCOLS:
        transductive = protocol == "transductive"
        result = measured[transductive][SPLIT]
        command = ["reptile-np", "eval", "--checkpoint", args.dest, "--eval-samples",
                   str(args.eval_samples), "--eval-workers", str(args.eval_workers),
                   "--transductive" if transductive else "--no-transductive"]
        results[protocol] = {"accuracy": result["accuracy"], "ci95": result["ci95"],
                             "command": shlex.join(command)}
        print(f"{protocol}: {100 * result['accuracy']:.2f}% ± {100 * result['ci95']:.2f} "
              f"on {args.eval_samples} {SPLIT} tasks")
    write_release(dest, {
        "format": FORMAT, "name": dest.name, "checkpoint": CHECKPOINT,
        "sha256": sha256_file(dest / CHECKPOINT), "bytes": (dest / CHECKPOINT).stat().st_size,
        "meta_iterations": metadata["iteration"], "reptile_np_version": __version__,
        "train_command": training_command(metadata),
        "evaluation": {"dataset": run["dataset"], "split": SPLIT,
                       "classes": config.num_classes, "shots": config.num_shots,
                       "eval_batch": config.eval_batch_size, "eval_iters": config.eval_iters,
                       "tasks": args.eval_samples, "seed": config.seed},
        "results": results})
    print(f"released {dest}: {CHECKPOINT}, {RELEASE_FILE}, README.md")


def main(argv=None):
    args = parse_args(argv)
    # The kernels' threads as reptile-np eval sets them (OpenBLAS on one thread per piece of
    # work), so that the release's numbers are eval's to the last bit.
    kernels.set_threads(1)
    try:
        release(args)
    except (ValueError, ImportError, OSError) as error:
        print(f"release_checkpoint.py: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
