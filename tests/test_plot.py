"""Learning curves: the log's epsilon and update_norm fields, `reptile-np plot` on real
training logs, its running mean, its bad-input messages, and matplotlib missing."""
import json
import struct
import subprocess
import sys

import numpy as np
import pytest

from reptile_np import models, train
from reptile_np.data.synthetic import make_synthetic
from reptile_np.plot import running_mean
from test_train_cli import SMALL, run_cli


def test_log_records_the_scheduled_epsilon_and_the_update_norm_of_a_replay(tmp_path):
    splits = {"train": make_synthetic(6, 4, seed=1), "test": make_synthetic(6, 4, seed=2)}
    model = models.omniglot_cnn(3)
    config = train.TrainConfig(num_classes=3, num_shots=2, inner_batch_size=4, inner_iters=2,
                               meta_batch_size=2, meta_iters=4, eval_interval=2,
                               meta_step_size=1.0, meta_step_size_final=0.0)
    theta = model.init(np.random.default_rng(0))
    log = tmp_path / "log.jsonl"
    train.meta_train(model, theta, train.make_optimizer(config, model.num_params, theta.dtype),
                     splits, config, log_path=str(log))
    records = [json.loads(line) for line in log.read_text().splitlines()]
    # The linear schedule from 1 to 0 over 4 iterations, at i = 0, 1, 2, 3 (paper notes §4.1).
    assert [r["epsilon"] for r in records] == [1.0, 0.75, 0.5, 0.25]
    assert "train_accuracy" in records[1] and "train_accuracy" not in records[0]

    # Replay: the same iterations from the same start, keeping theta before and after each
    # (the periodic evaluations restore the optimiser's state, so they need no replay).
    # The norm is taken here in float64, in the run in float32: they agree to ~1e-7.
    optimizer = train.make_optimizer(config, model.num_params, theta.dtype)
    for iteration, record in enumerate(records):
        new_theta, _ = train.meta_iteration(model, theta, optimizer, splits["train"], config,
                                            iteration)
        expected = np.linalg.norm(new_theta.astype(np.float64) - theta.astype(np.float64))
        assert expected > 0 and record["update_norm"] == pytest.approx(expected, rel=1e-6)
        theta = new_theta


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    """Two real training logs (seeds 0 and 1) of 12 synthetic iterations, accuracies every 5."""
    directory = tmp_path_factory.mktemp("logs")
    paths = []
    for seed in (0, 1):
        path = directory / f"seed{seed}.jsonl"
        done = run_cli("train", *SMALL, "--meta-iters", "12", "--eval-samples", "0", "--seed",
                       str(seed), "--checkpoint", str(directory / f"run{seed}"), "--log", str(path))
        assert done.returncode == 0, done.stderr
        paths.append(path)
    return paths


def png_size(path):
    """(width, height) of a PNG, from its signature and IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_of_two_training_logs_writes_the_png(logs, tmp_path):
    out = tmp_path / "curves.png"
    done = run_cli("plot", *map(str, logs), "--out", str(out), "--smooth", "2")
    assert done.returncode == 0, done.stderr
    assert png_size(out) == (800, 800)


def test_plot_draws_an_old_log_without_update_norm(logs, tmp_path):
    old = tmp_path / "old.jsonl"
    old.write_text("".join(json.dumps({k: v for k, v in json.loads(line).items()
                                       if k not in ("update_norm", "epsilon")}) + "\n"
                           for line in logs[0].read_text().splitlines()))
    out = tmp_path / "curves.png"
    done = run_cli("plot", str(old), str(logs[1]), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert png_size(out) == (800, 800)


def test_running_mean_by_hand():
    np.testing.assert_array_equal(running_mean([1, 3, 5, 7], 2), [1, 2, 4, 6])
    np.testing.assert_array_equal(running_mean([3, 0, 6, 3], 3), [3, 1.5, 3, 3])
    np.testing.assert_array_equal(running_mean([2, 4], 100), [2, 3])
    np.testing.assert_array_equal(running_mean([5, 6], 1), [5, 6])
    assert running_mean([], 5).shape == (0,)
    with pytest.raises(ValueError, match="window"):
        running_mean([1.0], 0)


def _one_line_error(done, *fragments):
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0], done.stderr
    for fragment in fragments:
        assert fragment in lines[0], done.stderr


def test_missing_log_is_named(tmp_path):
    missing = tmp_path / "nope.jsonl"
    _one_line_error(run_cli("plot", str(missing), "--out", str(tmp_path / "c.png")),
                    f"LOG {missing}", "cannot be read")


def test_log_that_is_not_json_lines_is_named(tmp_path, logs):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(logs[0].read_text() + "not json\n")
    _one_line_error(run_cli("plot", str(bad), "--out", str(tmp_path / "c.png")),
                    f"LOG {bad}: line 13", "not a training log record")
    scalars = tmp_path / "scalars.jsonl"
    scalars.write_text("1\n2\n")
    _one_line_error(run_cli("plot", str(scalars), "--out", str(tmp_path / "c.png")),
                    f"LOG {scalars}: line 1")


def test_torn_last_line_is_skipped(tmp_path, logs):
    torn = tmp_path / "torn.jsonl"
    torn.write_text(logs[0].read_text() + '{"iteration": 13, "ti')
    done = run_cli("plot", str(torn), "--out", str(tmp_path / "c.png"))
    assert done.returncode == 0, done.stderr


def test_empty_log_is_named(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    _one_line_error(run_cli("plot", str(empty), "--out", str(tmp_path / "c.png")),
                    f"LOG {empty}", "no records")


def test_out_into_a_missing_directory_is_named(tmp_path, logs):
    out = tmp_path / "absent" / "c.png"
    _one_line_error(run_cli("plot", str(logs[0]), "--out", str(out)), f"--out {out}",
                    "does not exist")
    _one_line_error(run_cli("plot", str(logs[0]), "--out", str(tmp_path / "c.xyz")),
                    "--out", "image format")


def test_smooth_zero_is_refused(tmp_path, logs):
    _one_line_error(run_cli("plot", str(logs[0]), "--out", str(tmp_path / "c.png"),
                            "--smooth", "0"), "--smooth", "positive integer")


def test_matplotlib_missing_is_one_line(tmp_path, logs):
    # None in sys.modules makes "import matplotlib" raise ImportError, as if not installed.
    code = ("import sys; sys.modules['matplotlib'] = None; from reptile_np import cli; "
            "sys.exit(cli.main(sys.argv[1:]))")
    out = tmp_path / "c.png"
    done = subprocess.run([sys.executable, "-c", code, "plot", str(logs[0]), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    _one_line_error(done, "the plot command needs matplotlib: pip install 'reptile-np[plot]'")
    assert not out.exists()
