"""Learning curves from ``reptile-np train --log`` files (``reptile-np plot``).

A log holds one JSON record per meta-iteration (see `reptile_np.train.meta_train`). Every
``--eval-interval`` iterations a record carries the accuracy on ONE train task and ONE
test task: the paper code's logging metric, far too noisy to read raw, so the curves are
running means of it. Every record also carries the outer step's ``update_norm`` (logs of
older versions lack it; they are drawn without it).
"""
import json
from pathlib import Path

import numpy as np

CURVES = ("train_accuracy", "test_accuracy", "update_norm")
"""The record fields drawn; a record may lack any of them (accuracies come every
``--eval-interval`` iterations, ``update_norm`` only from runs that logged it)."""

FIGURE_SIZE = (8, 8)
DPI = 100
"""The figure is FIGURE_SIZE * DPI = 800 x 800 pixels."""


def pyplot(what):
    """matplotlib's pyplot on the Agg backend (files only: no display needed, none opened),
    imported when a figure is drawn, never at module import (matplotlib is an extra).

    Args:
        what: what needs it, for the message ("the plot command").

    Raises:
        ImportError: one sentence naming the ``plot`` extra, when matplotlib is missing.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(f"{what} needs matplotlib: pip install 'reptile-np[plot]'") from None
    return plt


def save_figure(figure, path):
    """Lay ``figure`` out, write it to ``path`` at `DPI` (its suffix picks the format), and
    free it (pyplot keeps every open figure otherwise)."""
    import matplotlib.pyplot as plt
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


def running_mean(values, window):
    """The trailing running mean: point i is the mean of ``values[max(0, i - window + 1):i + 1]``.

    The first ``window - 1`` points average the fewer values there are, so the curve starts
    at the first record rather than ``window`` records later; with ``window = 100`` it is the
    running mean the training progress line shows.

    Args:
        values: a 1-D sequence of numbers.
        window: how many values each mean takes, at least 1.

    Returns:
        A float64 array as long as ``values``.

    Raises:
        ValueError: naming ``window`` unless it is an integer of at least 1.
    """
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"window must be an integer of at least 1, got {window!r}.")
    values = np.asarray(values, dtype=np.float64)
    if not len(values):
        return values
    # Each window's own sum (not differences of one long cumulative sum, which lose the
    # small values' digits after hundreds of thousands of records). A window longer than
    # the values sums the same as one of their length.
    sums = np.convolve(values, np.ones(min(window, len(values))))[:len(values)]
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    return sums / counts


def read_log(path):
    """The curves of one log: ``{field: (iterations, values)}`` for each field of `CURVES`.

    A last line without its newline (a run still writing, or killed mid-line) is skipped
    when it does not parse, as `reptile_np.train.open_log` drops it on resume.

    Returns:
        For each field, two float64 arrays: the iterations of the records that hold it,
        and its values there (both empty when no record does).

    Raises:
        ValueError: naming the argument ``LOG`` and ``path``: the file cannot be read, a
            line is not a record with an integer ``iteration`` and numeric fields, or the
            log holds no records.
    """
    try:
        with open(path, "rb") as file:
            lines = file.read().splitlines(keepends=True)
    except OSError as error:
        raise ValueError(f"LOG {path} cannot be read: {error.strerror or error}.") from None
    points = {field: ([], []) for field in CURVES}
    records = 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            iteration = record["iteration"]
            if isinstance(iteration, bool) or not isinstance(iteration, int):
                raise TypeError
            fields = {field: float(record[field]) for field in CURVES if field in record}
        except (ValueError, KeyError, TypeError):
            if number == len(lines) and not line.endswith(b"\n"):
                continue
            raise ValueError(f"LOG {path}: line {number} is not a training log record "
                             f"(a JSON object with an integer 'iteration'); give a file "
                             f"written by reptile-np train --log.") from None
        records += 1
        for field, value in fields.items():
            points[field][0].append(iteration)
            points[field][1].append(value)
    if not records:
        raise ValueError(f"LOG {path} holds no records; give the log of a run that has "
                         f"finished at least one meta-iteration.")
    return {field: (np.asarray(iterations, dtype=np.float64), np.asarray(values, dtype=np.float64))
            for field, (iterations, values) in points.items()}


def log_labels(paths):
    """Each log's legend label: its file stem, or the path as given where stems repeat
    (``run1/log.jsonl`` and ``run2/log.jsonl``)."""
    stems = [Path(path).stem for path in paths]
    return [stem if stems.count(stem) == 1 else str(path) for stem, path in zip(stems, paths)]


def plot_curves(out, logs, smooth=100):
    """Write the learning-curve figure: (a) the smoothed one-task train and test accuracies,
    (b) the smoothed update norm on a log scale, against the meta-iteration.

    Args:
        out: the image file (its suffix picks the format: png, pdf, svg, ...).
        logs: ``{label: curves}``, curves as `read_log` returns them. A log without
            accuracies, or without update norms, is left out of that panel only.
        smooth: points per running mean (`running_mean`); raw points are single tasks.

    Raises:
        ImportError: matplotlib (the ``plot`` extra) is not installed.
        ValueError: naming ``--out`` when its suffix is not an image format matplotlib writes.
    """
    plt = pyplot("the plot command")
    figure, (accuracy_axis, norm_axis) = plt.subplots(2, 1, figsize=FIGURE_SIZE, sharex=True)
    formats = figure.canvas.get_supported_filetypes()
    suffix = Path(out).suffix.lstrip(".").lower()
    if suffix not in formats:
        plt.close(figure)
        raise ValueError(f"--out {out}: expected a file name ending in an image format "
                         f"({', '.join('.' + name for name in sorted(formats))}).")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (label, curves) in enumerate(logs.items()):
        colour = colours[index % len(colours)]
        for field, style in (("train_accuracy", "-"), ("test_accuracy", "--")):
            iterations, values = curves[field]
            if len(values):
                accuracy_axis.plot(iterations, running_mean(values, smooth), style, color=colour,
                                   label=f"{label} {field.split('_')[0]}")
        iterations, values = curves["update_norm"]
        if len(values):
            norm_axis.plot(iterations, running_mean(values, smooth), color=colour, label=label)
    accuracy_axis.set_title(f"(a) accuracy: each raw point is ONE task (noisy), "
                            f"shown as a running mean of {smooth} points", fontsize=10)
    accuracy_axis.set_ylabel(f"one-task accuracy, mean of {smooth}")
    norm_axis.set_title(f"(b) outer update norm |theta_new - theta_old|, running mean of {smooth}",
                        fontsize=10)
    norm_axis.set_ylabel("update norm")
    norm_axis.set_yscale("log")
    norm_axis.set_xlabel("meta-iteration")
    for axis, what in ((accuracy_axis, "accuracies"), (norm_axis, "update_norm")):
        if axis.lines:
            axis.legend(fontsize=8)
        else:
            axis.text(0.5, 0.5, f"no {what} in these logs", transform=axis.transAxes,
                      ha="center", va="center")
    save_figure(figure, out)
