"""``reptile-np experiment gradient-combinations`` and ``overlap`` (`reptile_np.experiments`).

Their runs take hours on Omniglot; here the settings are checked against what the paper's
sections 6.2 and 6.3 describe (which step weights, disjoint or overlapping batches), and
the command runs end to end on synthetic glyphs for a meta-iteration or a few.
"""
import json

import numpy as np
import pytest

from reptile_np import cli, experiments, meta, train


def test_gradient_combinations_are_the_papers_ten_runs_on_disjoint_batches():
    settings = experiments.gradient_combination_settings(meta_iters=10)
    weights = {s.label: s.config.step_weights for s in settings}
    assert weights == {
        "g1 (joint training)": (1.0,),
        "g2 (FOMAML)": (0.0, 1.0), "g1+g2 (Reptile)": (1.0, 1.0), "(g1+g2)/2": (0.5, 0.5),
        "g3 (FOMAML)": (0.0, 0.0, 1.0), "g1+g2+g3 (Reptile)": (1.0,) * 3,
        "(g1+g2+g3)/3": (1 / 3,) * 3,
        "g4 (FOMAML)": (0.0, 0.0, 0.0, 1.0), "g1+g2+g3+g4 (Reptile)": (1.0,) * 4,
        "(g1+g2+g3+g4)/4": (0.25,) * 4}
    for s in settings:
        config = s.config
        train.check_config(config)
        assert config.sgd and config.inner_iters == len(config.step_weights)
        # 5 classes x train_shots examples cut into k batches of 25: one pass, disjoint.
        labels = np.repeat(np.arange(5), config.shots_for_training)
        batches = meta.minibatches(len(labels), config.inner_batch_size, config.inner_iters,
                                   np.random.default_rng(0))
        assert len(np.unique(np.concatenate(batches))) == 25 * config.inner_iters


def _overlap_with_the_last_batch(batches):
    earlier = set(np.concatenate(batches[:-1]).tolist())
    return len(earlier & set(batches[-1].tolist()))


def test_overlap_grows_with_the_inner_batch_except_for_the_separate_tail():
    overlaps = {}
    for s in experiments.overlap_settings(meta_iters=10):
        train.check_config(s.config)
        labels = np.repeat(np.arange(5), s.config.shots_for_training)
        batches = meta.task_batches(labels, s.config.inner_batch_size, s.config.inner_iters,
                                    np.random.default_rng(1), tail_shots=s.config.foml_tail)
        overlaps[s.panel, s.label] = _overlap_with_the_last_batch(batches)
    shared = [overlaps[f"inner batch {b}", "FOMAML, shared tail"] for b in (10, 20, 30, 50)]
    # b = 10: five batches of one pass, disjoint; from b = 20 on the batches cycle through
    # the 50 examples, and every example of the last batch was in an earlier one.
    assert shared == [0, 20, 30, 50]
    assert all(overlaps[f"inner batch {b}", "FOMAML, separate tail"] == 0 for b in (10, 20, 30, 50))
    assert all(overlaps[f"inner batch {b}", "Reptile"] == overlaps[f"inner batch {b}", "FOMAML, shared tail"]
               for b in (10, 20, 30, 50))   # Reptile's batches are the shared tail's


def test_gradient_combinations_run_end_to_end_on_synthetic_glyphs(capsys, tmp_path):
    """Ten trainings of one meta-iteration each (with their logged evaluations and a final
    one): about 3 s of CPU, the cost of covering every run of the experiment."""
    pytest.importorskip("matplotlib")
    out = tmp_path / "gc.png"
    code = cli.main(["experiment", "gradient-combinations", "--dataset", "synthetic",
                     "--meta-iters", "1", "--eval-samples", "1", "--smooth", "2",
                     "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "g1+g2+g3+g4 (Reptile)" in printed and "meta-iterations per run: 1" in printed
    table = json.loads((tmp_path / "gc.json").read_text())
    assert len(table["runs"]) == 10
    for run in table["runs"]:
        records = [json.loads(line) for line in open(run["log"], encoding="utf-8")]
        assert [r["iteration"] for r in records] == [1]   # eval_interval 1: logged
        assert run["last_logged_test_accuracy"] == pytest.approx(
            np.mean([r["test_accuracy"] for r in records]))
        assert run["test"]["tasks"] == 1
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv, flag", [
    (["overlap", "--inner-batches", "10,0"], "--inner-batches"),
    (["overlap", "--eval-samples", "-1"], "--eval-samples"),
    (["overlap", "--dataset", "mnist"], "--dataset"),
    (["gradient-combinations", "--meta-iters", "0"], "--meta-iters")])
def test_bad_flags_give_one_line_and_status_2(capsys, argv, flag):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["experiment", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and flag in err
