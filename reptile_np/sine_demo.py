"""The sine-wave demo: meta-train on random sine waves, then adapt to new ones in 32 steps.

The defaults are those of the OpenAI blog's demo (paper notes §6): a tanh MLP
1-64-64-1; each meta-iteration one task, one pass over its 50 grid points in 5 SGD
steps of 10 points (lr 0.02, mean squared error); the outer step size 0.1 annealed
linearly to 0 over 30,000 iterations.

Evaluation: on held-out tasks, sample 10 of the 50 grid points (with replacement, as
the blog), take full-batch SGD steps on them, and measure the mean squared error on
all 50 points after 0, 1, 8 and 32 steps. Joint training (Reptile with one inner step,
i.e. SGD on the average task loss) learns f = 0, the mean of all tasks, and cannot
adapt in so few steps; the Reptile initialisation can.
"""
import numpy as np

from . import fused, meta
from .data.sine import GRID_POINTS, sample_sine_task, sine_grid, sine_task, sine_values
from .evaluate import mean_confidence_interval
from .models import sine_mlp
from .optim import SGD
from .plot import pyplot
from .progress import Progress

ALGORITHMS = ("reptile", "fomaml", "maml", "joint")
EVAL_STEPS = (0, 1, 8, 32)
EVAL_POINTS = 10
DIVERGENCE_CHECK_EVERY = 100


def train_sine(algorithm="reptile", meta_iters=30000, inner_iters=5, inner_batch=10, lr=0.02,
               meta_step=0.1, meta_step_final=0.0, seed=0, hidden=(64, 64), activation="tanh",
               dtype=np.float32, progress_stream=None):
    """Meta-train the sine MLP.

    Args:
        algorithm: "reptile"; "fomaml" (outer step along the last inner step);
            "maml" (exact second-order meta-gradient, float64 Hessian-vector products:
            slow, for comparison); "joint" (Reptile with one inner step).
        meta_iters: outer iterations, one task each.
        inner_iters, inner_batch, lr: the inner SGD loop (5 steps of 10 points, 0.02).
        meta_step, meta_step_final: the outer step size, annealed linearly.
        seed: seeds both the initialisation and the task stream.

    Returns:
        ``(model, theta_initial, theta_trained)``.

    Raises:
        FloatingPointError: the weights became non-finite (``lr`` or ``meta_step`` too large).
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}.")
    if algorithm == "maml":
        dtype = np.float64  # MAML is a reference computation here: float64, as the tests check it
    model = sine_mlp(hidden, activation)
    rng = np.random.default_rng(seed)
    theta_initial = model.init(rng, dtype)
    theta = theta_initial
    optimizer = SGD(lr)
    # An MLP under SGD: its whole inner loop runs in one kernel call (same result up to
    # rounding as meta.inner_loop; see reptile_np.fused).
    inner_loop = fused.mlp_sgd_inner_loop
    steps = 1 if algorithm == "joint" else inner_iters
    progress = Progress(meta_iters, f"sine {algorithm}", progress_stream)
    # Overflow is caught below, by testing theta, rather than warned about once per array.
    with np.errstate(over="ignore", invalid="ignore"):
        for iteration in range(meta_iters):
            epsilon = meta.meta_step_size(iteration, meta_iters, meta_step, meta_step_final)
            tasks = [sine_task(rng, dtype)]
            if algorithm in ("reptile", "joint"):
                theta = meta.reptile_step(model, theta, tasks, optimizer, rng, inner_batch, steps,
                                          epsilon, reduction="mean", inner_loop=inner_loop)
            elif algorithm == "fomaml":
                theta = meta.fomaml_step(model, theta, tasks, optimizer, rng, inner_batch, steps,
                                         epsilon, reduction="mean", inner_loop=inner_loop)
            else:
                theta = meta.maml_step(model, theta, tasks, rng, inner_batch, steps, lr, epsilon,
                                       reduction="mean")
            # Non-finite weights stay non-finite, so testing now and then finds them.
            if (iteration % DIVERGENCE_CHECK_EVERY == 0 or iteration + 1 == meta_iters) \
                    and not np.all(np.isfinite(theta)):
                raise FloatingPointError(
                    f"the {algorithm} training diverged (non-finite weights by meta-iteration "
                    f"{iteration + 1}); lower --learning-rate (now {lr:g}) or --meta-step "
                    f"(now {meta_step:g}).")
            progress.update(iteration + 1)
    return model, theta_initial, theta


def adaptation_curve(model, theta, x_train, y_train, x_grid, y_grid, lr, steps):
    """Full-batch SGD on the training points; grid predictions after each step count in ``steps``.

    Returns:
        ``{step: predictions on x_grid}`` for every step in ``steps``.
    """
    phi, curves = theta.copy(), {}
    for step in range(max(steps) + 1):
        if step in steps:
            curves[step] = model.forward(phi, x_grid)
        if step < max(steps):
            _, grad = model.loss_and_grad(phi, x_train, y_train, reduction="mean")
            phi -= phi.dtype.type(lr) * grad
    return curves


def evaluation_tasks(num_tasks, seed):
    """Held-out tasks: (amplitude, phase, indices of the 10 training points), reproducible."""
    rng = np.random.default_rng([seed, 1])
    return [(*sample_sine_task(rng), rng.choice(GRID_POINTS, EVAL_POINTS))
            for _ in range(num_tasks)]


def evaluate_sine(model, theta, tasks, lr=0.02, steps=EVAL_STEPS):
    """Grid MSE after each step count, mean and 95% CI over tasks: ``{step: (mean, ci)}``."""
    x_grid = sine_grid(theta.dtype)
    errors = {step: [] for step in steps}
    for amplitude, phase, points in tasks:
        y_grid = sine_values(x_grid, amplitude, phase)
        curves = adaptation_curve(model, theta, x_grid[points], y_grid[points], x_grid, y_grid,
                                  lr, steps)
        for step, prediction in curves.items():
            errors[step].append(np.mean((prediction - y_grid) ** 2))
    return {step: mean_confidence_interval(values) for step, values in errors.items()}


def format_sine_table(results, steps=EVAL_STEPS):
    """Text table: one row per initialisation, one column per step count (MSE +- 95% CI)."""
    header = f"{'initialisation':<22}" + "".join(f"{f'after {s} steps':>18}" for s in steps)
    rows = [header, "-" * len(header)]
    for name, by_step in results.items():
        rows.append(f"{name:<22}" + "".join(f"{f'{by_step[s][0]:.3f} ± {by_step[s][1]:.3f}':>18}"
                                            for s in steps))
    return "\n".join(rows)


def plot_sine(path, model, thetas, task, lr=0.02, steps=(0, 8, 16, 32)):
    """Write a PNG like the paper's Figure 1: one panel per initialisation in ``thetas``.

    Args:
        thetas: ``{title: theta}``.
        task: ``(amplitude, phase, training point indices)``.

    Raises:
        ImportError: matplotlib (the ``plot`` extra) is not installed.
    """
    plt = pyplot("Drawing the figure")
    amplitude, phase, points = task
    figure, axes = plt.subplots(1, len(thetas), figsize=(5 * len(thetas), 4), sharey=True)
    for axis, (title, theta) in zip(np.atleast_1d(axes), thetas.items()):
        x_grid = sine_grid(theta.dtype)
        y_grid = sine_values(x_grid, amplitude, phase)
        curves = adaptation_curve(model, theta, x_grid[points], y_grid[points], x_grid, y_grid,
                                  lr, steps)
        axis.plot(x_grid, y_grid, "k-", linewidth=2, label="true function")
        axis.plot(x_grid[points], y_grid[points], "k^", markersize=8, label="10 training points")
        for step, prediction in curves.items():
            axis.plot(x_grid, prediction, label=f"after {step} steps")
        axis.set_title(title)
        axis.set_xlabel("x")
    np.atleast_1d(axes)[0].legend(loc="lower left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
