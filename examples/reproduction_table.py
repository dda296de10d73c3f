"""The README's reproduction rows, from the runs' own files.

    python3 examples/reproduction_table.py checkpoints/training/omniglot-1s5w ...

For each ``reptile-np train --checkpoint`` directory given: the meta-iterations its
checkpoint reached (of its schedule), its training wall time from its ``log.jsonl.gz``
(or ``log.jsonl``), and the accuracies of the results files ``reptile-np eval
--both-protocols`` wrote beside it (``results-<K>shot-<protocol>.json``), next to the
paper's numbers for that row. A markdown table row each (a cell says its number of tasks
when it is not the paper's 10,000), then a line for every test number outside the paper's
95% interval. Nothing is measured here: a missing results file
is a blank cell.

Training time is the sum of the gaps between consecutive log records, leaving out gaps of
over ``--max-gap`` seconds (a run paused, or stopped and resumed later).
"""
import argparse
import gzip
import json
import sys
from pathlib import Path

from reptile_np.checkpoint import load_checkpoint
from reptile_np.train import checkpoint_file

# Table 1 of the paper (v3): Reptile, then Reptile + Transduction, mean and 95% CI (%).
PAPER = {(5, 1): ((95.39, 0.09), (97.68, 0.04)), (5, 5): ((98.90, 0.10), (99.48, 0.06)),
         (20, 1): ((88.14, 0.15), (89.43, 0.14)), (20, 5): ((96.65, 0.33), (97.12, 0.32))}
PROTOCOLS = (("nontransductive", "non-transductive"), ("transductive", "transductive"))


def read_log(run):
    """The run's log records (``log.jsonl.gz`` or ``log.jsonl``), or [] if it has none."""
    for name, opener in (("log.jsonl.gz", gzip.open), ("log.jsonl", open)):
        path = run / name
        if path.exists():
            with opener(path, "rt", encoding="utf-8") as log:
                return [json.loads(line) for line in log if line.strip()]
    return []


def training_hours(records, max_gap):
    """Hours between consecutive records, gaps over ``max_gap`` seconds left out."""
    times = [record["time"] for record in records]
    return sum(b - a for a, b in zip(times, times[1:]) if 0 <= b - a <= max_gap) / 3600


def results(run, shots):
    """``{protocol: {split: {"accuracy", "ci95", "tasks"}}}`` of the results files found."""
    found = {}
    for key, _ in PROTOCOLS:
        path = run / f"results-{shots}shot-{key}.json"
        if path.exists():
            found[key] = json.loads(path.read_text(encoding="utf-8"))["results"]
    return found


def cell(measured, protocol, split):
    result = measured.get(protocol, {}).get(split)
    if result is None:
        return ""
    tasks = "" if result["tasks"] == 10000 else f" ({result['tasks']:,} tasks)"
    return f"{100 * result['accuracy']:.2f}% ± {100 * result['ci95']:.2f}{tasks}"


def row(run, max_gap):
    """(markdown row, [sentences on numbers outside the paper's interval])."""
    _, _, metadata = load_checkpoint(checkpoint_file(str(run)))
    config = metadata["config"]["train"]
    ways, shots = config["num_classes"], config["num_shots"]
    reached, planned = metadata["iteration"], config["meta_iters"]
    progress = f"{reached:,} (full)" if reached >= planned else f"{reached:,} of {planned:,}"
    measured = results(run, shots)
    paper = PAPER.get((ways, shots))
    paper_text = " / ".join(f"{mean:.2f} ± {ci:.2f}" for mean, ci in paper) if paper else "-"
    cells = [cell(measured, protocol, split) for protocol, _ in PROTOCOLS
             for split in ("test", "train")]
    line = (f"| {shots}-shot {ways}-way | {progress} | {training_hours(read_log(run), max_gap):.1f} h "
            f"| {' | '.join(cells)} | {paper_text} |")
    outside = []
    for (protocol, name), (mean, ci) in zip(PROTOCOLS, paper or ()):
        result = measured.get(protocol, {}).get("test")
        if result is not None and abs(100 * result["accuracy"] - mean) > ci:
            outside.append(f"{shots}-shot {ways}-way, {name}: {100 * result['accuracy']:.2f}% is "
                           f"outside the paper's {mean:.2f} ± {ci:.2f}")
    return line, outside


def main(argv=None):
    parser = argparse.ArgumentParser(prog="reproduction_table.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="reptile-np train --checkpoint directories")
    parser.add_argument("--max-gap", type=float, default=300.0,
                        help="longest gap between log records counted as training, in seconds")
    args = parser.parse_args(argv)
    try:
        rows = [row(run, args.max_gap) for run in args.runs]
    except (OSError, ValueError, KeyError) as error:
        print(f"reproduction_table.py: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    print("| Omniglot | meta-iterations | training time | test | train | test, transductive "
          "| train, transductive | paper: Reptile / + Transduction |")
    print("|---|---|---|---|---|---|---|---|")
    for line, _ in rows:
        print(line)
    for _, outside in rows:
        for sentence in outside:
            print(f"\n{sentence}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
