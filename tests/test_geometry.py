"""Section 5.2's picture (`reptile_np.geometry`, ``reptile-np experiment geometry``).

The claim checked: Reptile ends at the point closest (in summed squared distance) to the
tasks' solution sets once its inner loop converges, and joint training does not; the
closest point is found by grid search, independently of every algorithm.
"""
import numpy as np
import pytest

from reptile_np import cli, geometry
from reptile_np.geometry import PlaneModel, SolutionSet

SETS = geometry.DEFAULT_SETS


@pytest.mark.parametrize("solution_set", [
    SolutionSet("line", (0.6, 0.8), 1.5, 3.0), SolutionSet("circle", (-1.0, 0.5), 1.2, 2.0)],
    ids=["line", "circle"])
@pytest.mark.parametrize("theta", [(2.0, -1.0), (-0.8, 0.9)], ids=["outside", "near"])
def test_plane_model_gradient_and_hvp_match_central_differences(solution_set, theta):
    model, theta = PlaneModel(), np.array(theta)
    x, y = model.encode(solution_set)
    loss, grad = model.loss_and_grad(theta, x, y)
    assert loss == pytest.approx(solution_set.weight / 2 * geometry.distances(theta, solution_set) ** 2)
    h, v = 1e-6, np.array([0.3, -0.7])
    numeric = [(model.loss_and_grad(theta + h * e, x, y)[0]
                - model.loss_and_grad(theta - h * e, x, y)[0]) / (2 * h) for e in np.eye(2)]
    np.testing.assert_allclose(grad, numeric, rtol=1e-8)
    numeric_hvp = (model.loss_and_grad(theta + h * v, x, y)[1]
                   - model.loss_and_grad(theta - h * v, x, y)[1]) / (2 * h)
    np.testing.assert_allclose(model.hessian_vector_product(theta, x, y, v), numeric_hvp, rtol=1e-7)


def test_the_closest_point_is_a_stationary_point_and_beats_random_points():
    star, total = geometry.closest_point(SETS)
    # d/dtheta 1/2 sum dist^2 = sum (theta - P_t(theta)) vanishes there.
    residual = sum(star - geometry.projection(star, s)[0] for s in SETS)
    assert np.linalg.norm(residual) < 1e-6
    points = np.random.default_rng(0).uniform(-5, 5, (20000, 2))
    assert total <= geometry.summed_squared_distance(points, SETS).min()


def test_reptile_ends_at_the_closest_point_and_joint_training_does_not():
    star, _ = geometry.closest_point(SETS)
    sweep = geometry.reptile_by_steps(SETS, steps=(1, 5, 20, 40), meta_iters=100)
    gaps = {k: np.linalg.norm(path[-1] - star) for k, path in sweep.items()}
    assert gaps[40] < 1e-3          # the converged inner loop: Reptile is at the point
    assert gaps[1] > 0.3            # k = 1 is joint training: the steep tasks pull it off
    assert gaps[1] > gaps[5] > gaps[20] > gaps[40]
    joint = geometry.trajectories(SETS, meta_iters=100, algorithms=("joint",))["joint"][-1]
    np.testing.assert_allclose(joint, sweep[1][-1], rtol=1e-12)


def test_the_command_prints_the_distances_and_writes_the_figure(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    figure = tmp_path / "geometry.png"
    assert cli.main(["experiment", "geometry", "--out", str(figure), "--meta-iters", "20",
                     "--steps", "1,3"]) == 0
    out = capsys.readouterr().out
    assert "point closest to the solution sets (grid search): (1.3101, 0.7402)" in out
    for name in geometry.ALGORITHMS:
        assert f"\n{name} " in out
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv, flag", [(["--inner-iters", "0"], "--inner-iters"),
                                        (["--meta-step", "-1"], "--meta-step"),
                                        (["--steps", "2,0"], "--steps"),
                                        (["--out", "{file}/g.png"], "--out")])
def test_bad_flags_give_one_line_and_status_2(capsys, tmp_path, argv, flag):
    (tmp_path / "file").write_text("not a directory")
    argv = [arg.format(file=tmp_path / "file") for arg in argv]
    try:
        code = cli.main(["experiment", "geometry", *argv])
    except SystemExit as exit_info:
        code = exit_info.code
    assert code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and flag in err


@pytest.mark.parametrize("steps", [2, 5])
def test_reptile_with_k_steps_ends_at_the_minimiser_of_its_weighted_distances(steps):
    """Each task's k inner steps go c_t = 1 - (1 - lr w_t)^k of the way to the set, so
    Reptile minimises sum_t c_t dist^2: its end is that sum's grid-search minimiser."""
    lr = 0.2
    end = geometry.reptile_by_steps(SETS, steps=(steps,), meta_iters=300, lr=lr)[steps][-1]
    weighted, _ = geometry.closest_point(SETS, geometry.reptile_weights(SETS, steps, lr))
    unweighted, _ = geometry.closest_point(SETS)
    assert np.linalg.norm(end - weighted) < 1e-6
    assert np.linalg.norm(end - unweighted) > 0.1   # the weights matter at these k


def test_fomaml_ends_at_the_minimiser_of_its_last_step_weights():
    """FOMAML's update is the last inner gradient, w_t (1 - lr w_t)^(k-1) (theta - P_t): it
    ends where that weighted sum of squared distances is least (a large outer step, so it
    gets there in few meta-iterations)."""
    end = geometry.trajectories(SETS, inner_iters=10, epsilon=20.0, meta_iters=600,
                                algorithms=("fomaml",))["fomaml"][-1]
    weighted, _ = geometry.closest_point(SETS, geometry.fomaml_weights(SETS, 10, lr=0.2))
    assert np.linalg.norm(end - weighted) < 1e-6
    assert np.linalg.norm(end - geometry.closest_point(SETS)[0]) > 0.5
