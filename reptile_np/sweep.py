"""``reptile-np sweep``: a grid of ordinary ``train`` runs on a Dask cluster, one table.

::

    reptile-np sweep --scheduler local:2 --out sweeps/lr \\
        --grid "learning-rate=1e-3,5e-4 seed=0,1,2" -- --dataset omniglot --meta-iters 1000

Every combination of the grid is one ``reptile-np train`` with the flags after ``--`` and
its own values of the grid's flags, in its own directory under ``--out`` (its
``--checkpoint``; its ``--results`` is ``results.json`` there, its ``--log`` ``log.jsonl``,
its printed output ``output.txt``). A Dask worker runs one training at a time in its own
process (give the workers one thread each), so each run is exactly the run the same
``train`` command gives on one machine.

Resumable at every level:

* a run whose ``results.json`` exists is finished and skipped (rerun the sweep after a
  failure, and only what is missing runs);
* a run with a checkpoint continues it (``--resume``), or only evaluates it
  (``--pretrained``) when the checkpoint already holds every meta-iteration;
* when a worker dies mid-run, Dask reruns the run's task on another worker, which
  resumes from the run's last checkpoint: the run loses the iterations since then and
  nothing else, and its final theta is the undisturbed run's (a resumed run continues
  bit for bit). Dask gives up on a run whose workers died 3 times (``KilledWorker``).

At the end ``table.md`` and ``table.json`` in ``--out`` hold, per combination of the
grid's flags other than ``--seed``, the mean over its seeds of every split's final
accuracy with a 95% confidence interval (`reptile_np.evaluate.mean_confidence_interval`
over the seeds' accuracies), and the runs that failed, each with the last line of its
error. The exit status is 1 when a run failed.
"""
import argparse
import contextlib
import itertools
import json
import os
import sys

SWEEP_OWNS = ("--checkpoint", "--results", "--log", "--resume", "--pretrained", "--scheduler")
"""Flags of ``train`` the sweep sets itself, for every run."""

RESULTS_NAME = "results.json"


def add_sweep_parser(subparsers):
    parser = subparsers.add_parser(
        "sweep", help="run a grid of train runs on a Dask cluster, resumable, with one table",
        description="Run every combination of --grid as a normal `reptile-np train` (with the "
                    "flags after --) in its own checkpoint directory under --out, on the Dask "
                    "workers of --scheduler; finished runs are skipped and interrupted ones "
                    "resumed, so a sweep can be rerun until it completes. Writes table.md and "
                    "table.json: per combination, the mean final accuracy over its seeds with "
                    "a 95% confidence interval. Needs the dist extra.")
    parser.add_argument("--scheduler", required=True, metavar="ADDRESS",
                        help="the Dask scheduler (tcp://host:8786), or local:N for N local "
                             "worker processes of one thread each")
    parser.add_argument("--grid", required=True, type=parse_grid,
                        help='space-separated FLAG=VALUE,VALUE,... of train flags that take a '
                             'value, e.g. "learning-rate=1e-3,5e-4 seed=0,1,2"; the runs are '
                             'every combination')
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="the sweep's directory: one subdirectory per run, and the tables")
    parser.add_argument("train_flags", nargs=argparse.REMAINDER, metavar="-- TRAIN_FLAGS",
                        help="the flags every run's train gets")
    parser.set_defaults(run=run_sweep)


def parse_grid(text):
    """``"learning-rate=1e-3,5e-4 seed=0,1"`` as ``[("learning-rate", ["1e-3", "5e-4"]),
    ("seed", ["0", "1"])]``; an argparse type (its errors name ``--grid``)."""
    grid = []
    for entry in text.split():
        name, _, values = entry.partition("=")
        name = name.lstrip("-")
        values = [value for value in values.split(",") if value]
        if not name or not values:
            raise argparse.ArgumentTypeError(f"expected FLAG=VALUE,VALUE,..., got {entry!r}")
        if f"--{name}" in SWEEP_OWNS:
            raise argparse.ArgumentTypeError(f"--{name} is set by the sweep for every run")
        if any(os.sep in value for value in values) or name in dict(grid):
            raise argparse.ArgumentTypeError(f"{entry!r}: a flag given twice, or a value "
                                             f"with {os.sep!r} (it names the run's directory)")
        grid.append((name, values))
    if not grid:
        raise argparse.ArgumentTypeError("expected at least one FLAG=VALUE,...")
    return grid


def plan_runs(grid, train_flags, out):
    """Every combination of ``grid``: ``[(name, {flag: value}, argv of train)]``.

    The name (``learning-rate=1e-3_seed=0``) is the run's directory under ``out``.
    """
    names = [name for name, _ in grid]
    runs = []
    for values in itertools.product(*(values for _, values in grid)):
        flags = dict(zip(names, values))
        name = "_".join(f"{flag}={value}" for flag, value in flags.items())
        directory = os.path.join(out, name)
        argv = ["train", *train_flags, *itertools.chain(*((f"--{f}", v) for f, v in flags.items())),
                "--checkpoint", directory, "--results", os.path.join(directory, RESULTS_NAME),
                "--log", os.path.join(directory, "log.jsonl")]
        runs.append((name, flags, argv))
    return runs


def run_sweep(args):
    from . import dist
    from .cli import CommandError, build_parser
    from .progress import Progress
    train_flags = args.train_flags[1:] if args.train_flags[:1] == ["--"] else args.train_flags
    owned = [flag for flag in train_flags if flag.split("=")[0] in SWEEP_OWNS]
    if owned:
        raise CommandError(f"{owned[0]} is set by the sweep for every run; drop it from the "
                           f"train flags.")
    runs = plan_runs(args.grid, train_flags, args.out)
    for _, _, argv in runs:
        # A bad value: argparse's one line and exit status 2, before any run starts.
        parsed, unknown = build_parser().parse_known_args(argv)
        if unknown:
            raise CommandError(f"{unknown[0]} (in --grid or after --) is not a flag of "
                               f"reptile-np train.")
        if parsed.eval_samples == 0:
            raise CommandError("--eval-samples 0: the sweep's table is of the runs' final "
                               "accuracies; give at least one evaluation task.")
    os.makedirs(args.out, exist_ok=True)
    outcomes = {name: finished_outcome(os.path.join(args.out, name)) for name, _, _ in runs}
    todo = [(name, argv) for name, _, argv in runs if outcomes[name] is None]
    print(f"sweep {args.out}: {len(runs)} runs, {len(runs) - len(todo)} finished before")
    with dist.connect(args.scheduler) as executor:
        distributed = dist.distributed_module()
        client = executor.client
        futures = {client.submit(run_training, argv, os.path.join(args.out, name),
                                 key=f"sweep-run-{name}", pure=False): name
                   for name, argv in todo}
        progress = Progress(len(todo), "sweep runs", sys.stderr, interval=0)
        for done, future in enumerate(distributed.as_completed(futures), 1):
            name = futures[future]
            try:
                outcomes[name] = future.result()
            except distributed.KilledWorker:
                outcomes[name] = {"status": "failed", "reason": "every Dask worker that ran it "
                                                                "died (KilledWorker)"}
            except Exception as error:  # the run's own errors come back as its outcome
                outcomes[name] = {"status": "failed", "reason": f"{type(error).__name__}: {error}"}
            failed = sum(outcome["status"] == "failed" for outcome in outcomes.values()
                         if outcome is not None)
            progress.update(done, force=True, failed=failed)
    rows = table_rows(runs, outcomes)
    markdown = format_table(rows, [name for name, _ in args.grid if name != "seed"])
    with open(os.path.join(args.out, "table.md"), "w", encoding="utf-8") as file:
        file.write(markdown)
    with open(os.path.join(args.out, "table.json"), "w", encoding="utf-8") as file:
        json.dump(rows, file, indent=2)
    print(markdown, end="")
    print(f"tables written to {os.path.join(args.out, 'table.md')} and table.json")
    return 1 if any(outcome["status"] == "failed" for outcome in outcomes.values()) else 0


def finished_outcome(directory):
    """The outcome of a run whose results file exists, else None."""
    path = os.path.join(directory, RESULTS_NAME)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as file:
        return {"status": "finished", "results": json.load(file)["results"]}


def run_training(argv, directory):
    """One run of the sweep, on a Dask worker: ``reptile-np train`` in this process.

    It continues what a previous attempt left: a run with results is not run again, a
    checkpoint is resumed (or, holding every meta-iteration, only evaluated), and a run
    that died before its first checkpoint starts again (its partial log removed).

    Returns:
        ``{"status": "finished", "results": ...}`` or ``{"status": "failed", "reason": the
        last line the run printed}``.
    """
    from .checkpoint import load_checkpoint
    from .cli import main
    from .train import checkpoint_file
    outcome = finished_outcome(directory)
    if outcome is not None:
        return outcome
    os.makedirs(directory, exist_ok=True)
    checkpoint = checkpoint_file(directory)
    if os.path.isfile(checkpoint):
        metadata = load_checkpoint(checkpoint)[2]
        complete = metadata["iteration"] >= metadata["config"]["train"]["meta_iters"]
        argv = [*argv, "--pretrained" if complete else "--resume"]
        if complete:  # --pretrained evaluates and writes no log
            argv = argv[:argv.index("--log")] + argv[argv.index("--log") + 2:]
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(directory, "log.jsonl"))
    output_path = os.path.join(directory, "output.txt")
    with open(output_path, "a", encoding="utf-8") as output, \
            contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        print(f"$ reptile-np {' '.join(argv)}", flush=True)
        try:
            status = main(argv)
        except SystemExit as exit:  # argparse's
            status = exit.code
    outcome = finished_outcome(directory)
    if status == 0 and outcome is not None:
        return outcome
    with open(output_path, encoding="utf-8") as output:
        lines = [line.strip() for line in output if line.strip()]
    return {"status": "failed", "reason": f"exit status {status}: {lines[-1] if lines else ''}"}


def table_rows(runs, outcomes):
    """Per combination of the flags other than ``seed``: its seeds' mean accuracies.

    Returns:
        A list of ``{"flags": {...}, "seeds": [...], "finished": n, "failed": [{"run",
        "reason"}], "accuracy": {split: {"mean", "ci95"}}}``, in the grid's order.
    """
    from .evaluate import mean_confidence_interval
    rows = {}
    for name, flags, _ in runs:
        key = tuple((flag, value) for flag, value in flags.items() if flag != "seed")
        row = rows.setdefault(key, {"flags": dict(key), "seeds": [], "finished": 0,
                                    "failed": [], "accuracies": {}})
        outcome = outcomes[name]
        if outcome["status"] == "failed":
            row["failed"].append({"run": name, "reason": outcome["reason"]})
            continue
        row["finished"] += 1
        row["seeds"].append(flags.get("seed"))
        for split, result in outcome["results"].items():
            row["accuracies"].setdefault(split, []).append(result["accuracy"])
    for row in rows.values():
        accuracies = row.pop("accuracies")
        row["accuracy"] = {split: dict(zip(("mean", "ci95"), mean_confidence_interval(values)))
                           for split, values in accuracies.items()}
    return list(rows.values())


def format_table(rows, flags):
    """The rows of `table_rows` as Markdown: accuracies in %, then the failed runs."""
    splits = list(dict.fromkeys(split for row in rows for split in row["accuracy"]))
    lines = ["| " + " | ".join([*flags, "runs", *splits]) + " |",
             "|" + "---|" * (len(flags) + 1 + len(splits))]
    for row in rows:
        cells = [row["flags"][flag] for flag in flags] + [str(row["finished"])]
        for split in splits:
            result = row["accuracy"].get(split)
            spread = (f" ± {100 * result['ci95']:.2f}" if row["finished"] > 1 else "") \
                if result else ""
            cells.append(f"{100 * result['mean']:.2f}{spread}" if result else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    failures = [failure for row in rows for failure in row["failed"]]
    if failures:
        lines += ["", f"{len(failures)} failed (rerun the sweep to retry them):"]
        lines += [f"- {failure['run']}: {failure['reason']}" for failure in failures]
    return "\n".join(lines) + "\n"
