"""A run is never lost or silently changed: threads, --resume, eval, results files, the lock, the log."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from reptile_np import cli, threads
from reptile_np.checkpoint import load_checkpoint
from reptile_np.runlock import lock_run_directory
from reptile_np.train import checkpoint_file
from test_train_cli import SMALL, run_cli


def run_env(*args, **env):
    """`run_cli` with extra environment variables."""
    return subprocess.run([sys.executable, "-m", "reptile_np", *args], capture_output=True,
                          text=True, env=dict(os.environ, REPTILE_NP_BACKEND="numpy", **env),
                          timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 6-iteration synthetic run, evaluated on one task per split."""
    directory = tmp_path_factory.mktemp("trained") / "run"
    done = run_cli("train", *SMALL, "--meta-iters", "6", "--eval-samples", "1",
                   "--checkpoint", str(directory))
    assert done.returncode == 0, done.stderr
    return directory, done.stdout


def copy_run(trained, tmp_path):
    """A copy of the trained run that a test may change."""
    return shutil.copytree(trained[0], tmp_path / "run")


def test_default_threads_give_one_blas_thread_and_the_same_theta(tmp_path):
    thetas = []
    for count in ("1", "2"):
        directory = tmp_path / count
        done = run_env("train", *SMALL, "--meta-iters", "4", "--eval-samples", "0",
                       "--checkpoint", str(directory), OPENBLAS_NUM_THREADS=count)
        assert done.returncode == 0, done.stderr
        if threads.blas_info()["threads"] is not None:
            assert "1 BLAS thread (OpenBLAS" in "".join(done.stdout.splitlines()[:2]), done.stdout
        thetas.append(load_checkpoint(checkpoint_file(str(directory)))[0])
    np.testing.assert_array_equal(thetas[0], thetas[1])


@pytest.mark.skipif(threads.blas_info()["threads"] is None, reason="not an OpenBLAS we can reach")
def test_threads_flag_sets_the_blas_threads_sine_says():
    done = run_env("sine", "--meta-iters", "2", "--eval-tasks", "1", "--no-baselines",
                   "--no-plot", "--threads", "2", OPENBLAS_NUM_THREADS="1")
    assert done.returncode == 0, done.stderr
    assert "2 BLAS threads (OpenBLAS" in done.stdout.splitlines()[0]


def test_checkpoint_records_the_model_name(trained):
    config = load_checkpoint(checkpoint_file(str(trained[0])))[2]["config"]
    assert config["model"] == "omniglot" and config["dataset"] == "synthetic"


@pytest.mark.parametrize("flags, message", [
    (["--seed", "3"], "--seed 3 contradicts the checkpoint's --seed 0; drop it to continue the run."),
    (["--sgd"], "--sgd contradicts the checkpoint's no --sgd;"),
    (["--learning-rate", "0.01"], "--learning-rate 0.01 contradicts the checkpoint's --learning-rate 0.001;"),
    (["--dataset", "omniglot"], "--dataset omniglot contradicts the checkpoint's --dataset synthetic;"),
    (["--step-weights", "1,1"], "--step-weights 1,1 contradicts the checkpoint's no --step-weights;"),
    (["--transductive"], "--transductive contradicts the checkpoint's no --transductive;"),
    (["--classes", "5"], "--classes 5 contradicts the checkpoint's --classes 3;"),  # 5 is the default
    (["--meta-iters", "4"], "--meta-iters 4 is not beyond the checkpoint's meta-iteration 6 of 6"),
    (["--meta-iters", "6"], "already complete (meta-iteration 6 of 6)"),
    ([], "already complete (meta-iteration 6 of 6)"),
])
def test_resume_refuses_what_contradicts_the_checkpoint(trained, flags, message):
    before = (trained[0] / "checkpoint.npz").read_bytes()
    done = run_cli("train", "--resume", "--checkpoint", str(trained[0]), *flags)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
    assert (trained[0] / "checkpoint.npz").read_bytes() == before


def test_resume_with_a_larger_meta_iters_extends_the_run_and_says_so(trained, tmp_path):
    directory = copy_run(trained, tmp_path)
    done = run_cli("train", "--resume", "--checkpoint", str(directory), "--meta-iters", "8",
                   "--eval-samples", "0", "--eval-interval", "3")
    assert done.returncode == 0, done.stderr
    assert "extending the run from --meta-iters 6 to 8" in done.stdout
    metadata = load_checkpoint(checkpoint_file(str(directory)))[2]
    assert metadata["iteration"] == 8 and metadata["config"]["train"]["meta_iters"] == 8
    assert metadata["config"]["train"]["num_classes"] == 3  # the checkpoint's, not the default 5
    assert metadata["config"]["extensions"] == [{"iteration": 6, "meta_iters": [6, 8]}]


@pytest.mark.parametrize("flags, message", [
    (["--split", "vinyals"], "--split vinyals contradicts the checkpoint's --split paper"),
    (["--dataset", "omniglot"], "--dataset omniglot contradicts the checkpoint's --dataset synthetic"),
    (["--classes", "20"], "--classes 20 contradicts the checkpoint's --classes 3"),
    (["--seed", "1"], "--seed 1 contradicts the checkpoint's --seed 0"),
])
@pytest.mark.parametrize("command", [["eval"], ["train", "--pretrained"]])
def test_eval_refuses_what_contradicts_the_checkpoint(trained, command, flags, message):
    done = run_cli(*command, "--checkpoint", str(trained[0]), "--eval-samples", "1", *flags)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1


def test_eval_takes_the_checkpoints_flags_and_keeps_each_protocols_results(trained, tmp_path):
    directory = copy_run(trained, tmp_path)
    own = directory / "results-2shot-nontransductive.json"
    # The copy's results name the original --checkpoint: another run's, so they are kept.
    refused = run_cli("eval", "--checkpoint", str(directory), "--eval-samples", "1")
    assert refused.returncode == 2 and "another evaluation or run" in refused.stderr
    own.unlink()
    done = run_cli("eval", "--checkpoint", str(directory), "--eval-samples", "1")
    assert done.returncode == 0, done.stderr
    before = own.read_text()
    done = run_cli("eval", "--checkpoint", str(directory), "--eval-samples", "2", "--transductive")
    assert done.returncode == 0, done.stderr
    assert f"from {checkpoint_file(str(directory))}: --dataset synthetic --split paper " \
           f"--classes 3 --seed 0" in done.stdout
    assert "3-way 2-shot, transductive" in done.stdout
    transductive = json.loads((directory / "results-2shot-transductive.json").read_text())
    assert transductive["protocol"]["transductive"] is True
    assert transductive["checkpoint"] == str(directory.resolve())
    assert own.read_text() == before  # the other protocol's results are kept

    # An explicit --results holding another protocol's evaluation is refused, not overwritten.
    again = run_cli("eval", "--checkpoint", str(directory), "--eval-samples", "3",
                    "--results", str(own))
    assert again.returncode == 0, again.stderr  # the same protocol of the same run: replaced
    assert json.loads(own.read_text())["results"]["test"]["tasks"] == 3
    other = run_cli("eval", "--checkpoint", str(directory), "--eval-samples", "1", "--shots", "1",
                    "--results", str(own))
    assert other.returncode == 2 and "another evaluation" in other.stderr
    assert json.loads(own.read_text())["protocol"]["shots"] == 2


def test_one_evaluation_task_prints_no_interval(trained):
    assert "n/a (1 task)" in trained[1] and "± 0.00" not in trained[1]


def test_eval_help_lists_only_the_flags_eval_uses():
    help_text = cli.build_parser()._subparsers._group_actions[0].choices["eval"].format_help()
    for flag in ("--checkpoint", "--shots", "--eval-batch", "--eval-iters", "--eval-samples",
                 "--transductive", "--classes", "--split", "--dataset", "--threads"):
        assert flag in help_text
    for flag in ("--inner-iters", "--meta-iters", "--resume", "--log", "--pretrained",
                 "--checkpoint-every", "--foml", "--meta-step"):
        assert flag + " " not in help_text and flag + "\n" not in help_text, flag


def test_a_second_training_on_a_locked_directory_fails_at_once(tmp_path):
    directory = tmp_path / "run"
    directory.mkdir()
    lock = lock_run_directory(str(directory))
    try:
        done = run_cli("train", *SMALL, "--meta-iters", "2", "--eval-samples", "0",
                       "--checkpoint", str(directory))
    finally:
        lock.close()
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert f"in use by pid {os.getpid()} on " in done.stderr and "started 20" in done.stderr
    assert not (directory / "checkpoint.npz").exists()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    directory = tmp_path / "run"
    directory.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from reptile_np.runlock import "
         "lock_run_directory; h = lock_run_directory(sys.argv[1]); print('locked', flush=True); "
         "time.sleep(60)", str(directory)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    blocked = run_cli("train", *SMALL, "--meta-iters", "2", "--eval-samples", "0",
                      "--checkpoint", str(directory))
    assert blocked.returncode == 2 and f"pid {holder.pid}" in blocked.stderr
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    done = run_cli("train", *SMALL, "--meta-iters", "2", "--eval-samples", "0",
                   "--checkpoint", str(directory))
    assert done.returncode == 0, done.stderr


def test_log_after_sigkill_and_resume_holds_each_iteration_once(tmp_path):
    directory, log = tmp_path / "run", tmp_path / "log.jsonl"
    args = ["train", *SMALL, "--inner-iters", "1", "--meta-iters", "60", "--eval-samples", "0",
            "--checkpoint-every", "7", "--checkpoint", str(directory), "--log", str(log)]
    process = subprocess.Popen([sys.executable, "-m", "reptile_np", *args],
                               env=dict(os.environ, REPTILE_NP_BACKEND="numpy"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = checkpoint_file(str(directory))
    deadline = time.time() + 120
    # Kill once the log has gone past the first checkpoint, between two checkpoints.
    while process.poll() is None and time.time() < deadline:
        lines = log.read_text().count("\n") if log.exists() else 0
        if os.path.exists(path) and lines % 7 > 2:
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "training ended before it could be killed"
    reached = load_checkpoint(path)[2]["iteration"]
    logged = [json.loads(line)["iteration"] for line in log.read_text().splitlines()]
    assert logged[-1] > reached, "the kill should leave records past the checkpoint"
    assert logged == list(range(1, logged[-1] + 1)), "every finished iteration is logged"

    resumed = run_cli("train", "--resume", "--checkpoint", str(directory), "--log", str(log),
                      "--eval-samples", "0")
    assert resumed.returncode == 0, resumed.stderr
    logged = [json.loads(line)["iteration"] for line in log.read_text().splitlines()]
    assert logged == list(range(1, 61))


def test_a_fresh_run_does_not_append_to_another_runs_log(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"iteration": 1}\n')
    done = run_cli("train", *SMALL, "--meta-iters", "2", "--eval-samples", "0",
                   "--checkpoint", str(tmp_path / "run"), "--log", str(log))
    assert done.returncode == 2 and "--log" in done.stderr
    assert log.read_text() == '{"iteration": 1}\n'
