"""Checking an implementation against the suite, through the adapter protocol.

An adapter is any object (a module, a class instance) with some of the callables named
by the cases' ``kind`` (`KINDS`). For each case, ``getattr(adapter, kind)(**inputs)`` is
called with the case's inputs (arrays as NumPy arrays, PyTorch layouts) and must return a
dict holding the case's expected outputs by name (``"grads/0.weight"`` is
``result["grads"]["0.weight"]``). A kind the adapter lacks skips its cases, and the
report says so.

Every output tensor is compared by its worst relative error
``max|actual - expected| / max(max|expected|, floor)`` (`relative_error`; integer outputs
must be equal); a case passes when every output is within the case's tolerance. A
failing case gets a hint: the porting mistake its outputs match, when the suite holds
that mistake's outputs, else the usual causes for that case.
"""
import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import spec
from .suite import MANIFEST

KINDS = ("layer_forward_backward", "loss_forward_backward", "network_forward_backward",
         "optimizer_steps", "minibatch_schedule", "tail_schedule", "epsilon_schedule",
         "meta_step", "evaluate_task")
"""The adapter callables, one per case kind (docs/conformance.md gives each signature)."""


class CaseResult(NamedTuple):
    """One row of the report: ``status`` is "pass", "FAIL" or "skip"."""
    name: str
    status: str
    error: float        # the worst relative error over the case's outputs (nan: not compared)
    tensor: str         # the output where it is worst, or what went wrong
    hint: str           # on failure: the mistake matched, or the usual causes


def load_manifest(directory):
    """The manifest of a suite directory, checked for its format and version.

    Raises:
        ValueError: naming ``directory`` when it holds no suite of this format version.
    """
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"directory: expected a conformance suite written by "
                         f"'reptile-np conformance --out', cannot read {path} ({error}).")
    if not isinstance(manifest, dict) or manifest.get("format") != spec.FORMAT \
            or manifest.get("version") != spec.VERSION:
        raise ValueError(f"directory: {path} is not a '{spec.FORMAT}' manifest of version "
                         f"{spec.VERSION}.")
    return manifest


def load_adapter(reference):
    """The adapter object of ``"path/to/file.py:Name"`` or ``"package.module:Name"``; a
    class is instantiated without arguments. A file's directory goes on ``sys.path``
    first, as when Python runs a script, so the adapter can import its siblings.

    Raises:
        ValueError: naming ``adapter`` when the file, module or name is missing.
    """
    where, _, name = reference.rpartition(":")
    if not where or not name:
        raise ValueError(f"adapter: expected FILE.py:NAME or MODULE:NAME, got {reference!r}.")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise ValueError(f"adapter: no file {where!r}.")
        if str(path.parent.resolve()) not in sys.path:
            sys.path.insert(0, str(path.parent.resolve()))
        module_spec = importlib.util.spec_from_file_location(f"conformance_adapter_{path.stem}",
                                                             path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_spec.name] = module
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as error:
            raise ValueError(f"adapter: cannot import module {where!r} ({error}).")
    if not hasattr(module, name):
        raise ValueError(f"adapter: {where!r} has no {name!r}.")
    adapter = getattr(module, name)
    return adapter() if isinstance(adapter, type) else adapter


def _resolve(value, archive):
    """The manifest's inputs with every ``{"$array": key}`` replaced by the array."""
    if isinstance(value, dict):
        if set(value) == {"$array"}:
            return archive[value["$array"]]
        return {key: _resolve(item, archive) for key, item in value.items()}
    if isinstance(value, list):
        return [_resolve(item, archive) for item in value]
    return value


def relative_error(actual, expected, floor=0.0):
    """``max|actual - expected| / max(max|expected|, floor, tiny)``, norm-wise over the
    tensor (so an entry that is small next to its tensor's largest is not over-weighted);
    for integer ``expected``, 0 when equal and 1 otherwise. Shape mismatches are inf."""
    actual = np.asarray(actual)
    if actual.shape != expected.shape:
        return float("inf")
    if expected.dtype.kind in "iub":
        return 0.0 if np.array_equal(actual, expected) else 1.0
    diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    if diff.size == 0:
        return 0.0
    scale = max(float(np.abs(expected).max()), floor, np.finfo(np.float64).tiny)
    worst = float(diff.max()) / scale
    return worst if np.isfinite(worst) else float("inf")


def _lookup(result, name):
    value = result
    for part in name.split("/"):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _worst(result, entries, archive):
    """(worst error, its output name) of ``result`` against a list of expected entries."""
    worst, where = -1.0, ""
    for entry in entries:
        actual = _lookup(result, entry["name"])
        if actual is None:
            return float("inf"), f"{entry['name']} missing"
        error = relative_error(actual, archive[entry["array"]], entry["floor"])
        if error > worst or np.isnan(error):
            worst, where = error, entry["name"]
    return worst, where


def check_case(case, archive, adapter):
    """Run one case through the adapter; a `CaseResult`."""
    function = getattr(adapter, case["kind"], None)
    if function is None:
        return CaseResult(case["name"], "skip", float("nan"), "", f"adapter has no {case['kind']}")
    causes = "usual causes: " + "; ".join(case["causes"])
    try:
        result = function(**_resolve(case["inputs"], archive))
    except Exception as error:   # the adapter's own bug: report it, check the other cases
        return CaseResult(case["name"], "FAIL", float("inf"),
                          f"raised {type(error).__name__}: {error}", causes)
    if not isinstance(result, dict):
        return CaseResult(case["name"], "FAIL", float("inf"),
                          f"returned {type(result).__name__}, not a dict", causes)
    error, where = _worst(result, case["expected"], archive)
    if error <= case["tolerance"]:
        return CaseResult(case["name"], "pass", error, where, "")
    for mistake in case["mistakes"]:
        if _worst(result, mistake["expected"], archive)[0] <= case["tolerance"]:
            return CaseResult(case["name"], "FAIL", error, where, f"matches: {mistake['cause']}")
    return CaseResult(case["name"], "FAIL", error, where, causes)


def check(directory, adapter):
    """Check ``adapter`` against the suite in ``directory``.

    Args:
        directory: a suite written by `write_suite`.
        adapter: an object with some of the `KINDS` callables, or a ``"FILE.py:NAME"`` /
            ``"MODULE:NAME"`` reference to one.

    Returns:
        The `CaseResult` of every case, in the manifest's order.

    Raises:
        ValueError: naming ``directory`` or ``adapter``.
    """
    manifest = load_manifest(directory)
    if isinstance(adapter, str):
        adapter = load_adapter(adapter)
    results = []
    for case in manifest["cases"]:
        try:
            with np.load(Path(directory) / case["file"], allow_pickle=False) as archive:
                results.append(check_case(case, {key: archive[key] for key in archive.files},
                                          adapter))
        except OSError as error:
            raise ValueError(f"directory: cannot read {case['file']} of the suite ({error}).")
    return results


def format_report(results):
    """The table `check` results print as: one row per case, then a one-line summary."""
    rows = [(r.status, r.name, "-" if np.isnan(r.error) else f"{r.error:.1e}", r.tensor, r.hint)
            for r in results]
    header = ("result", "case", "worst", "where", "hint")
    widths = [max(len(row[i]) for row in rows + [header]) for i in range(4)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[4]
             for row in [header] + rows]
    counts = {status: sum(r.status == status for r in results)
              for status in ("pass", "FAIL", "skip")}
    lines.append(f"{counts['pass']} passed, {counts['FAIL']} failed, {counts['skip']} skipped "
                 f"(worst = max|actual - expected| / max|expected| per output)")
    return "\n".join(line.rstrip() for line in lines)


def exit_status(results):
    """0 when every case that ran passed, 1 when any failed."""
    return 1 if any(r.status == "FAIL" for r in results) else 0
