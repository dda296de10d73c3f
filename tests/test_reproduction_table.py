"""``examples/reproduction_table.py``: the README's reproduction rows from a run's
checkpoint, log and results files."""
import gzip
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SMALL = ["--dataset", "synthetic", "--classes", "3", "--shots", "2", "--inner-batch", "4",
         "--inner-iters", "2", "--meta-batch", "2", "--eval-batch", "3", "--eval-iters", "3",
         "--eval-interval", "5"]


def _load_script():
    spec = importlib.util.spec_from_file_location("reproduction_table",
                                                  REPO / "examples" / "reproduction_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cli(*args):
    env = dict(os.environ, REPTILE_NP_BACKEND="numpy")
    done = subprocess.run([sys.executable, "-m", "reptile_np.cli", *args], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 8-iteration synthetic run with its gzipped log and both results files."""
    run = tmp_path_factory.mktemp("table") / "run"
    _cli("train", *SMALL, "--meta-iters", "8", "--eval-samples", "0", "--checkpoint", str(run),
         "--log", str(run.parent / "log.jsonl"))
    with open(run.parent / "log.jsonl", "rb") as source, gzip.open(run / "log.jsonl.gz", "wb") as out:
        shutil.copyfileobj(source, out)
    _cli("eval", "--checkpoint", str(run), "--eval-samples", "6", "--both-protocols")
    return run


def _numbers(run, protocol):
    return json.loads((run / f"results-2shot-{protocol}.json").read_text())["results"]


def test_a_row_holds_the_runs_iterations_time_and_both_protocols(run, capsys):
    script = _load_script()
    assert script.main([str(run)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| Omniglot | meta-iterations | training time | test | train |")
    cells = [c.strip() for c in table[2].strip("|").split("|")]
    assert cells[:2] == ["2-shot 3-way", "8 (full)"] and cells[2].endswith(" h")
    expected = [f"{100 * _numbers(run, p)[s]['accuracy']:.2f}% ± "
                f"{100 * _numbers(run, p)[s]['ci95']:.2f} (6 tasks)"
                for p in ("nontransductive", "transductive") for s in ("test", "train")]
    assert cells[3:7] == expected
    assert cells[7] == "-"          # no paper number for a 3-way 2-shot row


def test_training_time_leaves_out_long_gaps():
    script = _load_script()
    records = [{"time": t} for t in (0, 10, 20, 5000, 5010)]
    assert script.training_hours(records, max_gap=300) == pytest.approx(30 / 3600)


def test_a_test_number_outside_the_papers_interval_is_named(run, capsys, monkeypatch):
    script = _load_script()
    test = 100 * _numbers(run, "nontransductive")["test"]["accuracy"]
    monkeypatch.setitem(script.PAPER, (3, 2), ((test + 5.0, 1.0), (0.0, 200.0)))
    assert script.main([str(run)]) == 0
    out = capsys.readouterr().out
    assert f"2-shot 3-way, non-transductive: {test:.2f}% is outside the paper's" in out
    assert "2-shot 3-way, transductive" not in out     # inside its (wide) interval


def test_a_directory_without_a_checkpoint_is_one_line(tmp_path, capsys):
    assert _load_script().main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("reproduction_table.py: error: ")
