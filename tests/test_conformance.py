"""The conformance suite: written and read back without pickle, passed by our own thin
adapter and by the PyTorch and JAX adapters of examples/adapters/, failed by four
deliberately broken adapters exactly where their mistake shows, each with its hint;
the command line's exit statuses.

The example adapters run the whole suite (68 cases, three of them the paper's full-size
networks): the point is that every case passes. The PyTorch run takes ~7 s of CPU, the
JAX one ~35 s (XLA compiles a program for every case's shapes); writing the suite ~5 s.
"""
import contextlib
import importlib
import io
import sys
from pathlib import Path

import numpy as np
import pytest

from reptile_np import cli, evaluate, meta, models
from reptile_np.conformance import KINDS, check, exit_status, format_report, load_manifest, spec
from reptile_np.conformance.suite import make_optimizer

ADAPTERS = Path(__file__).resolve().parents[1] / "examples" / "adapters"


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The suite written once by ``reptile-np conformance --out``: (directory, stdout, status)."""
    directory = tmp_path_factory.mktemp("conformance") / "suite"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = cli.main(["conformance", "--out", str(directory)])
    return directory, printed.getvalue(), status


@pytest.fixture
def suite(written):
    return written[0]


def failed(results):
    return {r.name: r.hint for r in results if r.status == "FAIL"}


def names(manifest, *prefixes, kinds=None):
    return {case["name"] for case in manifest["cases"]
            if case["name"].startswith(prefixes) or (kinds and case["kind"] in kinds)}


# ------------------------------------------------------------------------- the files

def test_suite_reads_back_without_pickle(suite):
    manifest = load_manifest(suite)
    assert (manifest["format"], manifest["version"]) == (spec.FORMAT, spec.VERSION)
    cases = manifest["cases"]
    assert len({case["name"] for case in cases}) == len(cases)
    for case in cases:
        assert case["kind"] in KINDS and case["tests"] and case["causes"] and case["expected"]
        with np.load(suite / case["file"], allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
        for key in array_references(case["inputs"]) + [e["array"] for e in case["expected"]] + [
                e["array"] for mistake in case["mistakes"] for e in mistake["expected"]]:
            assert key in arrays and arrays[key].dtype != object, (case["name"], key)
        floats = [arrays[e["array"]] for e in case["expected"]
                  if arrays[e["array"]].dtype.kind == "f"]
        assert all(a.dtype.name == case["dtype"] for a in floats), case["name"]
    # Every group of cases comes in both dtypes, the index streams once.
    for group in ("layer/", "loss/", "network/", "optimizer/", "meta/", "evaluate/"):
        dtypes = {c["dtype"] for c in cases if c["name"].startswith(group)}
        assert dtypes == {"float64", "float32"}, group


def array_references(value):
    """Every ``{"$array": key}`` key in a case's inputs."""
    if isinstance(value, dict):
        if set(value) == {"$array"}:
            return [value["$array"]]
        return [key for item in value.values() for key in array_references(item)]
    if isinstance(value, list):
        return [key for item in value for key in array_references(item)]
    return []


# ------------------------------------------------------------------------- adapters

class LibraryAdapter:
    """The protocol over reptile_np itself, as thin as the inputs allow."""

    def layer_forward_backward(self, layer, params, x, dy):
        layer = spec.layer_from_spec(layer)
        values = tuple(params[name] for name in layer.param_shapes)
        y, cache = layer.forward(values, x)
        dx, dparams = layer.backward(values, cache, dy)
        return {"y": y, "dx": dx, "dparams": dict(zip(layer.param_shapes, dparams))}

    def loss_forward_backward(self, loss, reduction, output, target):
        value, doutput = models.LOSSES[loss](output, target, reduction)
        return {"loss": value, "doutput": doutput}

    def network_forward_backward(self, network, params, x, y, reduction):
        model = spec.model_from_spec(network)
        theta = model.load_state_dict(params)
        loss, grad = model.loss_and_grad(theta, x, y, reduction)
        return {"output": model.forward(theta, x), "loss": loss, "grads": model.state_dict(grad)}

    def optimizer_steps(self, optimizer, params, grads):
        opt, params = make_optimizer(optimizer, len(params), params.dtype), params.copy()
        history = []
        for grad in grads:
            opt.step(params, grad)
            history.append({"params": params.copy(), **opt.snapshot()})
        return {key: np.array([h[key] for h in history]) for key in history[0]}

    def minibatch_schedule(self, num_samples, batch_size, num_batches, seed, replacement):
        return {"batches": np.array(meta.minibatches(num_samples, batch_size, num_batches,
                                                     np.random.default_rng(seed), replacement))}

    def tail_schedule(self, labels, batch_size, num_batches, seed, replacement, tail_shots):
        batches = meta.task_batches(labels, batch_size, num_batches, np.random.default_rng(seed),
                                    replacement, tail_shots)
        return {"batches": np.array(batches[:-1]), "tail": batches[-1]}

    def epsilon_schedule(self, meta_iters, initial, final):
        return {"epsilon": np.array([meta.meta_step_size(i, meta_iters, initial, final)
                                     for i in range(meta_iters)])}

    def meta_step(self, algorithm, network, theta, optimizer, optimizer_state, tasks, batches,
                  epsilon, reduction):
        model = spec.model_from_spec(network)
        if algorithm["name"] == "maml":
            grads = [meta.maml_gradient(model, theta, t["x"], t["y"], bs, optimizer["lr"],
                                        reduction)[0] for t, bs in zip(tasks, batches)]
            return {"theta": theta - epsilon * optimizer["lr"] * np.mean(grads, axis=0)}
        opt = make_optimizer(optimizer, len(theta), theta.dtype, optimizer_state)
        updates = []
        for task, task_batches in zip(tasks, batches):
            phis = [theta]
            for batch in task_batches:
                phis.append(meta.inner_loop(model, phis[-1], task["x"], task["y"], [batch], opt,
                                            reduction))
            steps = np.diff(phis, axis=0)
            weights = {"reptile": np.ones(len(steps)), "fomaml": np.eye(len(steps))[-1]}.get(
                algorithm["name"], algorithm.get("step_weights"))
            updates.append(np.tensordot(np.asarray(weights, theta.dtype), steps, 1))
        state = opt.snapshot()
        return {"theta": theta + epsilon * np.mean(updates, axis=0),
                **({"optimizer_state": state} if state else {})}

    def evaluate_task(self, network, theta, optimizer, optimizer_state, x, y, num_classes,
                      batches, transductive, reduction):
        model = spec.model_from_spec(network)
        opt = make_optimizer(optimizer, len(theta), theta.dtype, optimizer_state)
        phi, predictions = evaluate.adapt_and_predict(model, theta, opt, (x, y), batches,
                                                      num_classes, transductive, reduction)
        return {"phi": phi, "predictions": predictions, "optimizer_state": opt.snapshot()}


def test_our_own_adapter_passes_every_case(suite):
    results = check(suite, LibraryAdapter())
    assert failed(results) == {}
    assert all(r.status == "pass" for r in results)


def example_adapter(name):
    """The ``Adapter`` class of examples/adapters/<name>.py (its directory on sys.path, as
    `check` puts it for a FILE.py reference)."""
    pytest.importorskip(name.split("_")[0])
    if str(ADAPTERS) not in sys.path:
        sys.path.insert(0, str(ADAPTERS))
    return importlib.import_module(name).Adapter


@pytest.mark.parametrize("name", ["torch_adapter", "jax_adapter"])
def test_example_adapter_passes_every_case(suite, name):
    results = check(suite, f"{ADAPTERS / name}.py:Adapter")
    assert failed(results) == {}
    assert [r.status for r in results] == ["pass"] * len(results)
    assert exit_status(results) == 0


def expected_failures(manifest, mistake):
    """The cases each mistake must fail: those whose result depends on it."""
    if mistake == "MeanInsteadOfSum":     # every case that sums a loss over a batch
        return {c["name"] for c in manifest["cases"]
                if c["inputs"].get("reduction") == "sum"}
    if mistake == "AdamResetPerTask":     # every meta-iteration and evaluation with inner Adam
        return {c["name"] for c in manifest["cases"] if c["kind"] in ("meta_step", "evaluate_task")
                and c["inputs"]["optimizer"]["name"] == "adam"}
    if mistake == "Padding1":             # TF 'same' at stride 2 on an even size
        return names(manifest, "layer/conv2d-k3-s2-same-even/", "network/omniglot/", "meta/",
                     "evaluate/")
    return names(manifest, "meta/fomaml-")


HINTS = {"MeanInsteadOfSum": spec.MEAN_VS_SUM, "AdamResetPerTask": spec.ADAM_RESET,
         "Padding1": spec.PADDING_1, "RawLastGradient": spec.FOMAML_RAW_GRADIENT}


@pytest.mark.parametrize("mistake", list(HINTS))   # examples/adapters/broken_adapters.py
def test_broken_adapter_fails_exactly_its_cases_with_its_hint(suite, mistake):
    example_adapter("torch_adapter")
    adapter = getattr(importlib.import_module("broken_adapters"), mistake)()
    results = check(suite, adapter)
    failures = failed(results)
    assert set(failures) == expected_failures(load_manifest(suite), mistake)
    assert set(failures.values()) == {f"matches: {HINTS[mistake]}"}
    assert exit_status(results) == 1


class LossesOnly:
    """An adapter that implements one kind; the cases of the others are skipped."""

    def loss_forward_backward(self, loss, reduction, output, target):
        return LibraryAdapter().loss_forward_backward(loss, reduction, output, target)


def test_missing_callables_are_skipped_and_reported(suite):
    results = check(suite, LossesOnly())
    statuses = {r.name: r.status for r in results}
    assert {n for n, s in statuses.items() if s == "pass"} == names(load_manifest(suite), "loss/")
    assert {s for n, s in statuses.items() if not n.startswith("loss/")} == {"skip"}
    assert exit_status(results) == 0
    report = format_report(results)
    assert f"8 passed, 0 failed, {len(results) - 8} skipped" in report
    assert "adapter has no meta_step" in report


class RaisesAndMisses(LibraryAdapter):
    def loss_forward_backward(self, *args, **kwargs):
        raise RuntimeError("not implemented yet")

    def epsilon_schedule(self, meta_iters, initial, final):
        return {"eps": np.zeros(meta_iters)}


def test_adapter_errors_and_missing_outputs_fail_their_case_only(suite):
    results = {r.name: r for r in check(suite, RaisesAndMisses())}
    bad = {name: r for name, r in results.items() if r.status == "FAIL"}
    assert set(bad) == names(load_manifest(suite), "loss/", "schedule/epsilon/")
    assert bad["loss/mse-sum/float64"].tensor == "raised RuntimeError: not implemented yet"
    assert bad["schedule/epsilon/float64"].tensor == "epsilon missing"


# ------------------------------------------------------------------------- command line

ADAPTER_FILE = '''
import numpy as np

class Flat:
    def epsilon_schedule(self, meta_iters, initial, final):
        return {"epsilon": np.full(meta_iters, %s)}
'''


def run_cli(capsys, *argv):
    status = cli.main(["conformance", *map(str, argv)])
    out, err = capsys.readouterr()
    return status, out, err


def test_cli_exit_status_pass_fail_and_bad_input(suite, tmp_path, capsys):
    right = tmp_path / "right.py"
    right.write_text(ADAPTER_FILE % "[1.0 - i / 10 for i in range(meta_iters)]")
    wrong = tmp_path / "wrong.py"
    wrong.write_text(ADAPTER_FILE % "initial")
    status, out, _ = run_cli(capsys, "--check", suite, "--adapter", f"{right}:Flat")
    assert status == 0 and "pass    schedule/epsilon/float64" in out
    status, out, _ = run_cli(capsys, "--check", suite, "--adapter", f"{wrong}:Flat")
    assert status == 1 and "FAIL    schedule/epsilon/float64" in out
    assert spec.EPSILON_SCHEDULE in out
    for argv, flag in ((("--check", tmp_path, "--adapter", f"{right}:Flat"), "--check"),
                       (("--check", suite, "--adapter", "nowhere.py:Flat"), "--adapter"),
                       (("--check", suite, "--adapter", f"{right}:Missing"), "--adapter"),
                       (("--check", suite, "--adapter", "no_such_module_x:Flat"), "--adapter"),
                       (("--check", suite), "--adapter"),
                       (("--out", tmp_path / "o", "--adapter", f"{right}:Flat"), "--adapter"),
                       (("--out", right / "suite"), "--out")):
        status, out, err = run_cli(capsys, *argv)
        assert status == 2 and out == "", argv
        assert err.startswith(f"reptile-np conformance: error: {flag}:") and err.count("\n") == 1


def test_cli_writes_the_suite(written):
    directory, printed, status = written
    manifest = load_manifest(directory)
    assert status == 0 and printed == f"{len(manifest['cases'])} cases written to {directory}\n"
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        [c["file"] for c in manifest["cases"]] + ["manifest.json"])
