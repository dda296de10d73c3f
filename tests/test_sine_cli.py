"""`reptile-np sine`, the main job: table, figure, and a clear line without matplotlib."""
import builtins
import json

import numpy as np
import pytest

from reptile_np import cli, sine_demo

QUICK = ["sine", "--meta-iters", "150", "--eval-tasks", "5"]


def test_sine_prints_the_table_and_writes_json_and_figure(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    figure, table = tmp_path / "sine.png", tmp_path / "sine.json"
    assert cli.main(QUICK + ["--plot", str(figure), "--json", str(table)]) == 0
    out = capsys.readouterr().out
    for row in ("reptile (meta-learned)", "joint training (k=1)", "random initialisation"):
        assert row in out
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads(table.read_text())
    assert set(results["reptile (meta-learned)"]) == {"0", "1", "8", "32"}


def test_sine_without_matplotlib_says_which_extra(tmp_path, capsys, monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert cli.main(QUICK + ["--no-baselines", "--plot", str(tmp_path / "x.png")]) == 0
    out = capsys.readouterr().out
    assert "pip install 'reptile-np[plot]'" in out and "after 32 steps" in out
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("algorithm", ["fomaml", "maml"])
def test_other_algorithms_run_from_the_command_line(algorithm, capsys):
    assert cli.main(["sine", "--algorithm", algorithm, "--meta-iters", "20", "--eval-tasks", "2",
                     "--no-baselines", "--no-plot"]) == 0
    assert f"{algorithm} (meta-learned)" in capsys.readouterr().out


def test_evaluation_tasks_are_reproducible_and_held_out():
    first, again = sine_demo.evaluation_tasks(4, seed=0), sine_demo.evaluation_tasks(4, seed=0)
    for (a1, p1, i1), (a2, p2, i2) in zip(first, again):
        assert (a1, p1) == (a2, p2) and np.array_equal(i1, i2)
    assert all(0.1 <= a < 5 and 0 <= p < 2 * np.pi and len(i) == 10 for a, p, i in first)


def test_adaptation_curve_records_the_requested_steps():
    model = sine_demo.sine_mlp()
    theta = model.init(np.random.default_rng(0), np.float64)
    x = np.linspace(-5, 5, 50)[:, None]
    y = np.sin(x)
    curves = sine_demo.adaptation_curve(model, theta, x[:10], y[:10], x, y, 0.02, (0, 1, 3))
    assert sorted(curves) == [0, 1, 3]
    np.testing.assert_array_equal(curves[0], model.forward(theta, x))
    _, grad = model.loss_and_grad(theta, x[:10], y[:10], reduction="mean")
    np.testing.assert_allclose(curves[1], model.forward(theta - 0.02 * grad, x), rtol=1e-12)


def test_bad_sine_flags_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["sine", "--meta-iters", "0"])
    assert exit_info.value.code == 2
    assert "--meta-iters" in capsys.readouterr().err
