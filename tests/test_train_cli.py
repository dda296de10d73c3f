"""Few-shot training end to end from the CLI: runs, exact resume after SIGKILL, an existing
checkpoint kept, bad input. (The checkpoint format and its damage handling: test_checkpoint.py.)"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from reptile_np import cli, models
from reptile_np.checkpoint import load_checkpoint, save_checkpoint
from reptile_np.data.synthetic import make_synthetic
from reptile_np.train import TrainConfig, checkpoint_file, make_optimizer, meta_train

SMALL = ["--dataset", "synthetic", "--classes", "3", "--shots", "2", "--inner-batch", "4",
         "--inner-iters", "2", "--meta-batch", "2", "--meta-step", "1", "--meta-step-final", "0",
         "--eval-batch", "3", "--eval-iters", "3", "--eval-interval", "5"]


def run_cli(*args, env_backend="numpy"):
    """Run ``python -m reptile_np.cli`` in a subprocess; return the CompletedProcess."""
    env = dict(os.environ, REPTILE_NP_BACKEND=env_backend)
    return subprocess.run([sys.executable, "-m", "reptile_np.cli", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def test_train_then_eval_writes_checkpoint_and_results(tmp_path):
    ckpt = tmp_path / "run"
    done = run_cli("train", *SMALL, "--meta-iters", "12", "--eval-samples", "4",
                   "--checkpoint", str(ckpt), "--log", str(tmp_path / "log.jsonl"))
    assert done.returncode == 0, done.stderr
    results = json.loads((ckpt / "results-2shot-nontransductive.json").read_text())
    assert set(results["results"]) == {"train", "test"}
    for split in results["results"].values():
        assert 0.0 <= split["accuracy"] <= 1.0 and split["tasks"] == 4
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == list(range(1, 13))
    assert "test_accuracy" in records[4] and "test_accuracy" not in records[3]
    _, _, metadata = load_checkpoint(checkpoint_file(str(ckpt)))
    assert metadata["iteration"] == 12 and metadata["config"]["train"]["num_classes"] == 3

    # Evaluated again, in two worker processes: same checkpoint, same evaluation seed; the
    # training flags come from the checkpoint.
    evaluated = run_cli("eval", "--eval-samples", "4", "--checkpoint", str(ckpt),
                        "--results", str(tmp_path / "again.json"), "--eval-workers", "2")
    assert evaluated.returncode == 0, evaluated.stderr
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["results"] == results["results"]



def test_eval_both_protocols_writes_each_protocol_as_evaluated_alone(tmp_path):
    ckpt = tmp_path / "run"
    trained = run_cli("train", *SMALL, "--meta-iters", "6", "--eval-samples", "0",
                      "--checkpoint", str(ckpt))
    assert trained.returncode == 0, trained.stderr
    both = run_cli("eval", "--eval-samples", "6", "--checkpoint", str(ckpt), "--both-protocols")
    assert both.returncode == 0, both.stderr
    assert "non-transductive, 6 tasks" in both.stdout and ", transductive, 6 tasks" in both.stdout
    for flag, name in (("--no-transductive", "nontransductive"),
                       ("--transductive", "transductive")):
        alone = run_cli("eval", "--eval-samples", "6", "--checkpoint", str(ckpt), flag,
                        "--results", str(tmp_path / f"{name}.json"))
        assert alone.returncode == 0, alone.stderr
        expected = json.loads((tmp_path / f"{name}.json").read_text())
        written = json.loads((ckpt / f"results-2shot-{name}.json").read_text())
        assert written["protocol"] == expected["protocol"]
        assert written["config"] == expected["config"]
        assert written["results"] == expected["results"]
    for extra in (["--transductive"], ["--results", str(tmp_path / "one.json")]):
        refused = run_cli("eval", "--eval-samples", "6", "--checkpoint", str(ckpt),
                          "--both-protocols", *extra)
        assert refused.returncode == 2 and f"drop {extra[0]}" in refused.stderr
        assert "Traceback" not in refused.stderr

def test_resume_after_sigkill_is_bit_identical(tmp_path):
    args = [*SMALL, "--inner-iters", "1", "--meta-iters", "80", "--eval-samples", "0",
            "--checkpoint-every", "4"]
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    env = dict(os.environ, REPTILE_NP_BACKEND="numpy")
    process = subprocess.Popen([sys.executable, "-m", "reptile_np.cli", "train", *args,
                                "--checkpoint", str(killed)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = checkpoint_file(str(killed))
    deadline = time.time() + 120
    while not os.path.exists(path) and time.time() < deadline and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "training ended before it could be killed"
    reached = load_checkpoint(path)[2]["iteration"]
    assert 0 < reached < 80
    resumed = run_cli("train", *args, "--checkpoint", str(killed), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    uninterrupted = run_cli("train", *args, "--checkpoint", str(whole))
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    theta_resumed, state_resumed, _ = load_checkpoint(path)
    theta_whole, state_whole, _ = load_checkpoint(checkpoint_file(str(whole)))
    np.testing.assert_array_equal(theta_resumed, theta_whole)
    np.testing.assert_array_equal(state_resumed["v"], state_whole["v"])
    assert int(state_resumed["t"]) == int(state_whole["t"]) == 80 * 2 * 1


@pytest.mark.parametrize("flags, fragment", [
    (["--shots", "25"], "--shots 25"),
    (["--train-shots", "30"], "--train-shots"),
    (["--classes", "500"], "--classes 500"),
    (["--dataset", "omniglot", "--data-dir", "/nonexistent/omniglot"], "--data-dir"),
    (["--foml", "--foml-tail", "5", "--train-shots", "4"], "--foml-tail"),
    (["--foml", "--parallel-tasks"], "--parallel-tasks runs Reptile only"),
    (["--scheduler", "local:2", "--eval-workers", "2"], "--scheduler and --eval-workers"),
])
def test_bad_flags_fail_with_one_line(tmp_path, flags, fragment):
    done = run_cli("train", *SMALL, "--meta-iters", "2", "--eval-samples", "0",
                   "--checkpoint", str(tmp_path / "c"), *flags)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0] and fragment in lines[0], done.stderr
    assert not (tmp_path / "c" / "checkpoint.npz").exists()


def test_a_checkpoint_from_before_parallel_tasks_is_evaluated_as_the_paper_s_chain(tmp_path):
    """Checkpoints written before --parallel-tasks existed do not record it; they ran the
    paper's chained Adam state, and resume and evaluate as such."""
    directory = tmp_path / "c"
    assert cli.main(["train", *SMALL, "--meta-iters", "2", "--eval-samples", "0",
                     "--checkpoint", str(directory)]) == 0
    path = checkpoint_file(str(directory))
    theta, state, metadata = load_checkpoint(path)
    del metadata["config"]["train"]["parallel_tasks"]
    save_checkpoint(path, models.omniglot_cnn(3), theta, state, metadata["iteration"],
                    metadata["config"])
    assert cli.main(["train", "--resume", "--meta-iters", "3", "--eval-samples", "1",
                     "--checkpoint", str(directory)]) == 0
    assert load_checkpoint(path)[2]["config"]["train"]["parallel_tasks"] is False


def test_unknown_dataset_is_refused():
    done = run_cli("train", "--dataset", "cifar")
    assert done.returncode == 2 and "invalid choice" in done.stderr


def test_eval_workers_below_one_is_refused():
    done = run_cli("eval", "--eval-workers", "0")
    assert done.returncode == 2
    assert "--eval-workers" in done.stderr and "positive integer" in done.stderr
    assert "_positive_int" not in run_cli("eval", "--eval-workers", "x").stderr


def test_existing_checkpoint_is_not_overwritten_without_resume(tmp_path):
    first = run_cli("train", *SMALL, "--meta-iters", "3", "--eval-samples", "0",
                    "--checkpoint", str(tmp_path))
    assert first.returncode == 0, first.stderr
    before = (tmp_path / "checkpoint.npz").read_bytes()
    second = run_cli("train", *SMALL, "--meta-iters", "3", "--eval-samples", "0",
                     "--checkpoint", str(tmp_path))
    assert second.returncode == 2 and "--resume" in second.stderr
    assert (tmp_path / "checkpoint.npz").read_bytes() == before


def test_non_finite_training_stops_and_keeps_last_checkpoint(tmp_path):
    splits = {"train": make_synthetic(6, 4, seed=1), "test": make_synthetic(6, 4, seed=2)}
    model = models.omniglot_cnn(3)
    config = TrainConfig(num_classes=3, num_shots=2, inner_batch_size=4, inner_iters=2,
                         meta_iters=20, eval_interval=100, sgd=True, learning_rate=1e30)
    optimizer = make_optimizer(config, model.num_params, np.float32)
    theta = model.init(np.random.default_rng(0))
    path = str(tmp_path / "checkpoint.npz")
    save_checkpoint(path, model, theta, optimizer.snapshot(), 0, {})
    before = open(path, "rb").read()
    with np.errstate(all="ignore"), pytest.raises(FloatingPointError, match="non-finite"):
        meta_train(model, theta, optimizer, splits, config, checkpoint_path=path,
                   checkpoint_every=1)
    assert open(path, "rb").read() == before


def test_cli_help_lists_the_paper_flags():
    help_text = cli.build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for flag in ("--pretrained", "--seed", "--checkpoint", "--classes", "--shots", "--train-shots",
                 "--inner-batch", "--inner-iters", "--replacement", "--learning-rate", "--meta-step",
                 "--meta-step-final", "--meta-batch", "--meta-iters", "--eval-batch", "--eval-iters",
                 "--eval-samples", "--eval-interval", "--weight-decay", "--transductive", "--foml",
                 "--foml-tail", "--sgd", "--resume", "--checkpoint-every", "--log", "--backend",
                 "--data-dir"):
        assert flag in help_text


def test_step_weights_all_ones_is_reptile_and_a_mismatch_is_refused(tmp_path):
    """Section 6.2 from the command line: '--step-weights 1,1' with SGD is Reptile exactly."""
    splits = {"train": make_synthetic(6, 4, seed=1), "test": make_synthetic(6, 4, seed=2)}
    model = models.omniglot_cnn(3)
    thetas = []
    for weights in (None, (1.0, 1.0)):
        config = TrainConfig(num_classes=3, num_shots=2, inner_batch_size=3, inner_iters=2,
                             meta_batch_size=2, meta_iters=3, eval_interval=100, sgd=True,
                             learning_rate=0.01, step_weights=weights)
        theta = model.init(np.random.default_rng(0), np.float64)
        optimizer = make_optimizer(config, model.num_params, np.float64)
        thetas.append(meta_train(model, theta, optimizer, splits, config))
    np.testing.assert_allclose(thetas[1], thetas[0], rtol=0, atol=1e-12)
    done = run_cli("train", *SMALL, "--meta-iters", "2", "--eval-samples", "0", "--step-weights",
                   "1", "--checkpoint", str(tmp_path / "c"))
    assert done.returncode == 2 and "--step-weights" in done.stderr
