"""The paper's section-5 expansion measured (`reptile_np.theory`, ``reptile-np theory``).

The slopes are what the expansion claims: each update minus its first-order expansion is
O(alpha^2) (slope 2); without the AvgGradInner term it is O(alpha) (slope 1); with the
alpha^2 term too, O(alpha^3) (slope 3). A wrong coefficient, a dropped term or a wrong exact
update moves a slope by about 1, far outside +-0.1.
"""
import numpy as np
import pytest

from reptile_np import cli, theory

ALPHAS = (1e-4, 3e-4, 1e-3, 3e-3)


@pytest.fixture(scope="module")
def results():
    return theory.measure(steps=(2, 3, 4), alphas=ALPHAS, num_tasks=2)


@pytest.mark.parametrize("name", theory.ALGORITHMS)
def test_the_expansion_residual_shrinks_as_alpha_squared(results, name):
    for m in results:
        assert abs(theory.log_log_slope(m.alphas, m.residuals[name]) - 2) <= 0.1, m.steps
        # The AvgGradInner term is what makes it second order: without it, slope 1.
        assert abs(theory.log_log_slope(m.alphas, m.zeroth_residuals[name]) - 1) <= 0.1, m.steps


@pytest.mark.parametrize("name", theory.ALGORITHMS)
def test_with_the_alpha_squared_term_the_residual_shrinks_as_alpha_cubed(results, name):
    for m in results:
        assert abs(theory.log_log_slope(m.alphas, m.second_residuals[name]) - 3) <= 0.1, m.steps


def test_avg_grad_inner_is_half_the_gradient_of_the_inner_products():
    """AvgGradInner = 1/2 d/dtheta mean_{i != j} gbar_i . gbar_j (paper section 5.1), checked
    along a random direction by a central difference of gradients alone (no Hessian)."""
    problem = theory.make_problem(3, num_tasks=2)
    _, avg_grad_inner = theory.expansion_terms(problem)
    direction = np.random.default_rng(1).standard_normal(problem.theta.shape)

    def mean_inner_product(theta):
        total = 0.0
        for x, y, batches in problem.tasks:
            grads = [problem.model.loss_and_grad(theta, x[b], y[b], theory.REDUCTION)[1]
                     for b in batches]
            total += np.mean([grads[i] @ grads[j] for i in range(3) for j in range(3) if i != j])
        return total / len(problem.tasks)

    h = 1e-5
    numeric = (mean_inner_product(problem.theta + h * direction)
               - mean_inner_product(problem.theta - h * direction)) / (2 * h)
    assert direction @ avg_grad_inner == pytest.approx(numeric / 2, rel=1e-7)


def test_the_command_prints_the_terms_and_slopes(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    figure = tmp_path / "theory.png"
    code = cli.main(["theory", "--steps", "2", "--alphas", "1e-4,1e-3", "--tasks", "1",
                     "--plot", str(figure)])
    out = capsys.readouterr().out
    assert code == 0
    assert "k = 2: |AvgGrad| = " in out and "|AvgGradInner| = " in out
    assert "reptile 2·AvgGrad − 1·α·AvgGradInner" in out
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv, flag", [
    (["--steps", "0"], "--steps"), (["--alphas", "x"], "--alphas"),
    (["--steps", "6"], "--steps"), (["--tasks", "0"], "--tasks")])
def test_bad_flags_give_one_line_and_status_2(capsys, argv, flag):
    # argparse exits for what it parses; the measurement's own checks return 2 from main.
    try:
        code = cli.main(["theory", *argv])
    except SystemExit as exit_info:
        code = exit_info.code
    assert code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and flag in err


def test_the_summed_gradients_are_reptiles_update():
    """SummingSGD's total is (theta - phi) / alpha: the Reptile update, read without the
    cancellation of theta - phi."""
    problem = theory.make_problem(3, num_tasks=1)
    x, y, batches = problem.tasks[0]
    summing = theory.SummingSGD(0.01, problem.theta)
    phi = theory.meta.inner_loop(problem.model, problem.theta, x, y, batches, summing,
                                 theory.REDUCTION)
    np.testing.assert_allclose(summing.total, (problem.theta - phi) / 0.01, rtol=1e-10, atol=1e-12)
    assert np.linalg.norm(summing.total) > 1
