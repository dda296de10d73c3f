"""The benchmark harness: a quick run on our backends alone, and the parity of the twins.

Checks that `python bench/run.py` completes without PyTorch or JAX, says what to install
for the missing frameworks, and writes JSON lines with the expected keys (not timings);
and that the PyTorch and JAX twins, where installed, make the update ours makes in their
first timed unit (same weights, same batches).
"""
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent

RESULT_KEYS = {"kind", "workload", "framework", "backend", "unit", "dtype", "threads",
               "inner_steps_per_unit", "repeats", "first_call_s", "burn_in_s", "units_per_repeat",
               "s_per_unit", "units_per_s", "ms_per_inner_step", "flops_per_unit", "gflop_s",
               "compile_s", "parity", "info", "peak_rss_mb", "other_cpu"}
SPREAD_KEYS = {"median", "min", "max", "q1", "q3"}


def test_quick_sine_bench_runs_without_torch_or_jax(tmp_path):
    # Packages named torch and jax that fail to import hide any installed ones.
    hidden = tmp_path / "hidden"
    for name in ("torch", "jax"):
        (hidden / name).mkdir(parents=True)
        (hidden / name / "__init__.py").write_text(f"raise ImportError('{name} hidden by the test')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(hidden), str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--workloads", "sine",
         "--frameworks", "numba,numpy,torch,torch-tuned,jax", "--threads", "1",
         "--rounds", "2", "--out-dir", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # One line per missing framework, naming what to install.
    missing_lines = [line for line in proc.stdout.splitlines() if "is not installed" in line]
    assert len(missing_lines) == 2, proc.stdout
    assert any("pip install torch" in line for line in missing_lines)
    assert any("pip install jax" in line for line in missing_lines)

    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    kinds = [r["kind"] for r in records]
    assert kinds[0] == "env" and "ceiling" in kinds
    results = [r for r in records if r["kind"] == "result"]
    assert sorted((r["framework"], r["round"]) for r in results) == [
        ("numba", 1), ("numba", 2), ("numpy", 1), ("numpy", 2)]
    for r in results:
        assert RESULT_KEYS <= set(r), RESULT_KEYS - set(r)
        assert SPREAD_KEYS <= set(r["s_per_unit"])
        assert r["workload"] == "sine" and r["unit"] == "meta-iteration"
        assert r["inner_steps_per_unit"] == 5 and r["threads"] == 1
        assert r["backend"] in ("numba", "numpy")
    numba_row = next(r for r in results if r["framework"] == "numba")
    assert numba_row["parity"]["ok"]   # the Numba backend matches the NumPy reference
    assert {r["module"] for r in records if r["kind"] == "missing"} == {"torch", "jax"}
    assert numba_row["parity"]["update_rel_err"] <= 1e-4   # and so does its first unit
    assert not [r for r in records if r["kind"] not in ("env", "ceiling", "result", "missing")]
    markdown = (out / "results.md").read_text()
    assert "| numba" in markdown and "ok (loss " in markdown and ", update " in markdown
    assert markdown.count("| numba |") == 1         # the median round only
    # A measuring tool: measurements and ratios, no targets and no verdicts on them.
    assert not any(word in markdown.lower() for word in ("target", "| met |", "not met"))
    assert "Each of the 2 rounds" in markdown and "numba / numpy = " in markdown


def _timing(framework, round_index, seconds):
    return {"framework": framework, "round": round_index, "s_per_unit": {"median": seconds}}


@pytest.fixture
def bench(monkeypatch):
    """``bench("run")`` imports a module of bench/, which imports its siblings by their
    plain names, also inside functions: bench/ stays on the path for the test."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    return importlib.import_module


def test_rounds_keep_the_median_round_and_the_ratio_of_each_round(bench):
    run = bench("run")
    ours = [_timing("numba", 1, 0.060), _timing("numba", 2, 0.100), _timing("numba", 3, 0.050)]
    theirs = [_timing("torch", 1, 0.120), _timing("torch", 2, 0.100), _timing("torch", 3, 0.110)]
    assert run.median_round(ours)["round"] == 1                  # 0.050 < 0.060 < 0.100
    assert run.median_round(ours[:2])["round"] == 1              # the faster middle of two
    ratios = run.round_ratios({"numba": ours, "torch": theirs})
    assert [round(r, 6) for r in ratios[("numba", "torch")]] == [2.0, 1.0, 2.2]
    assert run.speedups([run.median_round(ours), run.median_round(theirs)]) == {
        ("numba", "torch"): 0.110 / 0.060}


def _first_unit_parity(bench, framework, workload_name):
    worker, workloads = bench("worker"), bench("workloads")
    workload = workloads.WORKLOADS[workload_name]
    data = workloads.make_data(workload, seed=0)
    state_dict = workloads.initial_state_dict(workload, seed=0)
    ref = worker.reference(workload, data, state_dict, seed=0)
    runner = worker.make_runner(framework, workload, data, state_dict, seed=0)
    runner.unit()
    return worker, worker.unit_parity(runner.flat_theta(), ref, workload)


@pytest.mark.parametrize("framework, module", [("torch", "torch"), ("jax", "jax")])
def test_a_twins_first_unit_makes_our_update(bench, numpy_backend, framework, module):
    # Sine: serial Reptile, 5 SGD steps, no BatchNorm; the twin must have drawn the very
    # batches ours drew (compiling the JAX program must not consume them).
    pytest.importorskip(module)
    worker, parity = _first_unit_parity(bench, framework, "sine")
    assert parity["update_rel_err"] <= worker.PARITY_UPDATE_RTOL["sgd"] and parity["ok"], parity
