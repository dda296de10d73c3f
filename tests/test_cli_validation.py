"""Everything checkable is checked before any work, in one line naming the flag, exit status 2."""
import errno
import os
import subprocess
import sys

import numpy as np
import pytest

from reptile_np import cli, models, optim, threads, train
from reptile_np.checkpoint import save_checkpoint
from test_train_cli import SMALL, run_cli

UNWRITABLE = "/proc/no-such-directory"  # cannot be created, even by root


def assert_one_line_error(done, fragment):
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and len(lines[0]) < 300, done.stderr
    assert "Traceback" not in done.stderr and "_positive_int" not in done.stderr


@pytest.mark.parametrize("flags, fragment", [
    (["--eval-iters", "-1"], "--eval-iters"),
    (["--eval-samples", "-1"], "--eval-samples"),
    (["--foml", "--foml-tail", "0"], "--foml-tail"),
    (["--foml", "--foml-tail", "-1"], "--foml-tail"),
    (["--foml-tail", "1"], "--foml-tail 1 needs --foml"),
    (["--weight-decay", "nan"], "--weight-decay"),
    (["--learning-rate", "inf"], "--learning-rate"),
    (["--learning-rate", "nan"], "--learning-rate"),
    (["--learning-rate", "0"], "--learning-rate"),
    (["--learning-rate", "-1"], "--learning-rate"),
    (["--meta-step", "nan"], "--meta-step"),
    (["--step-weights", ",".join(["x"] * 400)], "--step-weights"),
    (["--replacement", "--inner-batch", "7"], "--inner-batch 7"),
    (["--results", f"{UNWRITABLE}/r.json"], "--results"),
    (["--log", f"{UNWRITABLE}/log.jsonl"], "--log"),
    (["--eval-workers", "x"], "--eval-workers"),
])
def test_bad_flag_values_fail_before_any_work(tmp_path, flags, fragment):
    done = run_cli("train", *SMALL, "--meta-iters", "2", "--eval-samples", "1",
                   "--checkpoint", str(tmp_path / "c"), *flags)
    assert_one_line_error(done, fragment)
    assert not (tmp_path / "c" / "checkpoint.npz").exists()


def test_a_checkpoint_that_is_a_file_or_unwritable_is_refused(tmp_path):
    file = tmp_path / "file"
    file.write_text("")
    assert_one_line_error(run_cli("train", *SMALL, "--checkpoint", str(file)), "is not a directory")
    assert_one_line_error(run_cli("train", *SMALL, "--checkpoint", UNWRITABLE), "--checkpoint")


@pytest.mark.parametrize("flag, name", [("--json", "x.json"), ("--plot", "x.png")])
def test_sine_output_into_a_missing_directory_fails_before_training(tmp_path, flag, name):
    done = run_cli("sine", "--meta-iters", "100000", flag, str(tmp_path / "missing" / name))
    assert_one_line_error(done, f"{flag} ")
    assert "does not exist" in done.stderr and "sine reptile" not in done.stderr


def test_a_divergent_sine_run_says_which_flag_to_lower():
    done = run_cli("sine", "--meta-iters", "300", "--learning-rate", "10", "--no-plot",
                   "--eval-tasks", "2")
    assert_one_line_error(done, "diverged")
    assert "lower --learning-rate" in done.stderr


@pytest.fixture
def keep_threads(numpy_backend):
    """cli.main sets the BLAS threads and the backend of this process: restore both."""
    before = threads.blas_info()["threads"]
    yield
    if before is not None:
        threads.set_threads(before)


@pytest.mark.usefixtures("keep_threads")
def test_a_full_disk_at_checkpoint_time_is_one_line_naming_what_is_kept(tmp_path, monkeypatch,
                                                                          capsys):
    saves = []
    real_savez = np.savez

    def savez_on_a_disk_that_fills_up(file, **arrays):
        saves.append(file)
        if len(saves) == 2:
            file.write(b"PK partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_savez(file, **arrays)

    monkeypatch.setattr(np, "savez", savez_on_a_disk_that_fills_up)
    status = cli.main(["train", *SMALL, "--meta-iters", "4", "--checkpoint-every", "2",
                       "--eval-samples", "0", "--backend", "numpy", "--checkpoint",
                       str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert status == 2 and "No space left on device" in err
    assert f"checkpoint {tmp_path / 'checkpoint.npz'} could not be written" in err
    assert "the previous checkpoint there is untouched. It holds meta-iteration 2." in err


def test_resuming_adam_state_with_sgd_is_refused(tmp_path):
    model = models.omniglot_cnn(3)
    path = str(tmp_path / "checkpoint.npz")
    adam = optim.Adam(model.num_params)
    save_checkpoint(path, model, model.init(np.random.default_rng(0)), adam.snapshot(), 1, {})
    with pytest.raises(ValueError, match="holds Adam state, but the run uses SGD"):
        train.resume(path, model, optim.SGD(0.1))


@pytest.mark.parametrize("command", [["sine"], ["train"], ["eval"], ["gradcheck"],
                                     ["export-golden"], ["fetch-data", "omniglot"], ["--help"]])
def test_an_unknown_backend_variable_is_one_line_for_every_command(command):
    done = run_cli(*command, env_backend="bogus")
    assert_one_line_error(done, "REPTILE_NP_BACKEND=bogus is not one of numpy, numba")


def test_python_dash_m_reptile_np_runs_the_command():
    done = subprocess.run([sys.executable, "-m", "reptile_np", "--version"], capture_output=True,
                          text=True, env=dict(os.environ, REPTILE_NP_BACKEND="numpy"))
    assert done.returncode == 0 and done.stdout.startswith("reptile-np ")
