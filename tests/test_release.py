"""Released checkpoints (`reptile_np.release`): each ``checkpoints/*/release.json`` of the
repository measures, on the shared Omniglot data, the accuracy it documents;
``examples/release_checkpoint.py`` writes a release whose numbers ``reptile-np eval``
reproduces without writing into it; a released file that changed, and a training into a
released directory, are refused in one line."""
import dataclasses
import hashlib
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import OMNIGLOT_DIR
from reptile_np import cli
from reptile_np.data.omniglot import load_omniglot
from reptile_np.evaluate import evaluate_splits
from reptile_np.release import PROTOCOLS, load_trained
from reptile_np.train import TrainConfig
from test_cli_runs import trained  # noqa: F401 (a fixture: a finished 6-iteration run)
from test_train_cli import SMALL

pytestmark = pytest.mark.usefixtures("one_blas_thread")

REPO = Path(__file__).resolve().parents[1]
RELEASES = sorted(path.parent for path in REPO.glob("checkpoints/*/release.json"))
SCRIPT = REPO / "examples" / "release_checkpoint.py"
TASKS = 100
"""Tasks per protocol when a release is checked: 2 x 100 tasks take about 12 s with two
workers on two idle cores, the most a CI check should cost; the 95% half-width of 100
tasks near 99% accuracy is about a point, narrow enough to catch another checkpoint or
a changed evaluation."""


def measure(directory, protocol, tasks, cache_dir):
    """(accuracy, 95% half-width) of a release on the first ``tasks`` tasks its documented
    evaluation draws (the test split, the run's seed), on the shared Omniglot data."""
    release = json.loads((directory / "release.json").read_text())
    evaluation = release["evaluation"]
    assert evaluation["dataset"] == "omniglot", "the tests hold only Omniglot data"
    model, theta, optimizer, config, metadata = load_trained(directory)  # checks the SHA-256
    assert (config.num_classes, config.num_shots, config.eval_batch_size, config.eval_iters,
            config.seed) == (evaluation["classes"], evaluation["shots"], evaluation["eval_batch"],
                             evaluation["eval_iters"], evaluation["seed"])
    splits = load_omniglot(OMNIGLOT_DIR, split=metadata["config"]["split"], seed=config.seed,
                           cache_dir=cache_dir)
    config = dataclasses.replace(config, transductive=protocol == "transductive")
    result = evaluate_splits(model, theta, optimizer, splits, config, tasks, workers=2,
                             only=(evaluation["split"],))[evaluation["split"]]
    return result["accuracy"], half_width(result["accuracy"], result["ci95"], tasks,
                                          config.num_classes)


def half_width(accuracy, ci95, tasks, classes):
    """The 95% half-width of a measurement: the evaluation's (1.96 std / sqrt(tasks)),
    except when every task scored 100%. Then that is 0 (the normal approximation breaks
    down at the boundary), and the "rule of three" bounds the error rate instead: with no
    error in n = tasks * classes queries, the 95% upper bound of the rate is 3 / n. (A
    release near 99.5% scores 100% on its first 100 tasks about once in twelve.)"""
    return 3 / (tasks * classes) if accuracy == 1 else ci95


def agrees(documented, measured):
    """Whether a smaller measurement agrees with the documented one: the difference is
    within the two 95% half-widths added (documented and measured are (mean, half-width))."""
    return abs(measured[0] - documented[0]) <= measured[1] + documented[1]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("directory", RELEASES or [pytest.param(
    None, marks=pytest.mark.skip(reason="no released checkpoint in checkpoints/ yet"))],
    ids=lambda directory: directory.name if directory else "none")
def test_release_measures_its_documented_accuracy(directory, protocol, omniglot_cache):
    documented = json.loads((directory / "release.json").read_text())["results"][protocol]
    measured = measure(directory, protocol, TASKS, omniglot_cache)
    print(f"{directory.name} {protocol}: documented {documented['accuracy']:.4f} ± "
          f"{documented['ci95']:.4f}, on {TASKS} tasks {measured[0]:.4f} ± {measured[1]:.4f}")
    assert agrees((documented["accuracy"], documented["ci95"]), measured)


def test_agreement_is_the_two_half_widths_added():
    # Binary fractions, so the sums are exact and the boundary case is on the boundary.
    assert agrees((0.75, 0.0625), (0.625, 0.0625))
    assert agrees((0.75, 0.0625), (0.875, 0.0625))
    assert not agrees((0.75, 0.0625), (0.6171875, 0.0625))
    assert not agrees((0.75, 0.0625), (1.0, 0.0))


def test_a_perfect_measurement_gets_the_rule_of_three():
    assert half_width(0.98, 0.0118, 100, 5) == 0.0118
    assert half_width(1.0, 0.0, 100, 5) == 3 / 500
    assert agrees((0.995, 0.0014), (1.0, half_width(1.0, 0.0, 100, 5)))
    assert not agrees((0.99, 0.002), (1.0, half_width(1.0, 0.0, 100, 5)))


def tree(directory):
    """Every file under ``directory`` with its size and modification time."""
    return {str(path.relative_to(directory)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in directory.rglob("*")}


@pytest.fixture(scope="module")
def released(tmp_path_factory, trained):
    """A release of a 6-iteration synthetic-glyph run, made by the script (12 tasks each)."""
    dest = tmp_path_factory.mktemp("release") / "checkpoints" / "glyphs-3w2s"
    made = subprocess.run([sys.executable, str(SCRIPT), str(trained[0]), str(dest),
                           "--eval-samples", "12", "--eval-workers", "2"], capture_output=True,
                          text=True, env=dict(os.environ, REPTILE_NP_BACKEND="numpy",
                                              PYTHONPATH=str(REPO)), timeout=300)
    assert made.returncode == 0, made.stderr
    return dest


def test_script_writes_the_release_files(released, trained):
    assert sorted(os.listdir(released)) == ["README.md", "checkpoint.npz", "release.json"]
    release = json.loads((released / "release.json").read_text())
    data = (released / "checkpoint.npz").read_bytes()
    assert release["sha256"] == hashlib.sha256(data).hexdigest()
    assert release["bytes"] == len(data) and release["meta_iterations"] == 6
    assert data == (trained[0] / "checkpoint.npz").read_bytes()
    assert release["evaluation"] == {"dataset": "synthetic", "split": "test", "classes": 3,
                                     "shots": 2, "eval_batch": 3, "eval_iters": 3, "tasks": 12,
                                     "seed": 0}
    readme = (released / "README.md").read_text()
    assert release["sha256"] in readme and release["train_command"] in readme
    for protocol in PROTOCOLS:
        result = release["results"][protocol]
        assert 0 < result["ci95"] and 0 <= result["accuracy"] <= 1
        assert f"{100 * result['accuracy']:.2f}% ± {100 * result['ci95']:.2f}" in readme
        assert f"`{result['command']}`" in readme


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_eval_reproduces_the_release_and_writes_nothing_into_it(released, protocol, tmp_path):
    release = json.loads((released / "release.json").read_text())
    before = tree(released)
    command = shlex.split(release["results"][protocol]["command"])
    assert command[:2] == ["reptile-np", "eval"]
    done = subprocess.run([sys.executable, "-m", "reptile_np", *command[1:]], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, REPTILE_NP_BACKEND="numpy", PYTHONPATH=str(REPO)))
    assert done.returncode == 0, done.stderr
    assert tree(released) == before
    results = json.loads((tmp_path / f"glyphs-3w2s-results-2shot-{protocol}.json").read_text())
    assert results["results"]["test"]["accuracy"] == release["results"][protocol]["accuracy"]
    assert results["results"]["test"]["ci95"] == release["results"][protocol]["ci95"]


def test_training_command_parses_back_to_the_run(released):
    release = json.loads((released / "release.json").read_text())
    words = shlex.split(release["train_command"])
    assert words[:2] == ["reptile-np", "train"]
    args = cli.build_parser().parse_args(words[1:])
    defaults = vars(TrainConfig())
    parsed = {field: getattr(args, dest, defaults[field]) for dest, field in cli.CONFIG_FIELDS.items()}
    assert parsed == vars(load_trained(released)[3])
    assert args.dataset == "synthetic"


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


def test_a_changed_release_is_refused_by_eval_and_predict(released, tmp_path, capsys,
                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)  # where an eval that went ahead would write its results
    copy = tmp_path / "glyphs"
    copy.mkdir()
    for name in os.listdir(released):
        (copy / name).write_bytes((released / name).read_bytes())
    _flip_last_byte(copy / "checkpoint.npz")
    for argv in (["eval", "--checkpoint", str(copy), "--eval-samples", "1"],
                 ["predict", "--checkpoint", str(copy), "--support", str(tmp_path),
                  "--query", str(tmp_path)]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert f"--checkpoint {copy}: checkpoint.npz has SHA-256" in err
        assert "but release.json records" in err


@pytest.mark.parametrize("extra", [[], ["--resume"]])
def test_training_into_a_release_is_refused_before_it_writes(released, extra, capsys,
                                                            monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    before = tree(released)
    assert cli.main(["train", *SMALL, *extra, "--meta-iters", "8", "--eval-samples", "1",
                     "--checkpoint", str(released)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--checkpoint {released} is a released checkpoint" in err
    assert tree(released) == before  # no lock file, no checkpoint, no results


def test_script_refuses_a_directory_with_other_files(released, tmp_path):
    dest = tmp_path / "busy"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    done = subprocess.run([sys.executable, str(SCRIPT), str(released), str(dest),
                           "--eval-samples", "1"], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "holds notes.txt, which is no release file" in done.stderr
    assert os.listdir(dest) == ["notes.txt"]


def test_training_command_of_a_checkpoint_older_than_a_flag(tmp_path):
    """A checkpoint written before a training flag existed (here: before --parallel-tasks)
    gets the command it was trained with, the new flag at the value it had then, as
    ``train --resume`` reads such a checkpoint."""
    from reptile_np import checkpoint as checkpoint_io, release
    src = tmp_path / "old"
    assert cli.main(["train", "--checkpoint", str(src), "--meta-iters", "2", "--eval-samples", "0",
                     *SMALL]) == 0
    _, _, metadata = checkpoint_io.load_checkpoint(src / "checkpoint.npz")
    del metadata["config"]["train"]["parallel_tasks"]
    command = release.training_command(metadata, checkpoint="ckpt")
    assert "--parallel-tasks" not in command and command.startswith("reptile-np train --checkpoint ckpt")
