"""The geometry of Reptile (paper section 5.2) on a plane you can draw.

Each task's solutions form a set S_t in the plane -- a line or a circle -- and its loss is
``L_t(theta) = w_t / 2 * dist(theta, S_t)^2``: zero on S_t, growing with the distance,
steeper for a larger weight w_t. Gradient descent on L_t moves straight towards the
nearest point P_t(theta) of S_t (``grad L_t = w_t (theta - P_t(theta))``), so k inner SGD
steps of size alpha give ``phi_t = P_t + (1 - alpha w_t)^k (theta - P_t)``.

Where each algorithm ends, with the mean over tasks:

* Reptile moves theta towards mean_t phi_t, i.e. along
  ``mean_t (1 - (1 - alpha w_t)^k) (P_t - theta)``. Once the inner loop has converged
  (``(1 - alpha w_t)^k ~ 0``) the weights drop out: Reptile is gradient descent on
  ``1/2 mean_t dist(theta, S_t)^2`` and ends near the point closest to all solution sets
  together (the paper's claim), whatever the tasks' weights.
* Joint training (Reptile with k = 1) descends on mean_t L_t: the steep tasks pull harder.
* FOMAML follows the last step's gradient ``w_t (1 - alpha w_t)^(k-1) (theta - P_t)``
  and MAML's meta-gradient weighs it again by the inner loop's Jacobian: tasks the inner
  loop already solves from anywhere nearby stop mattering to them.

The algorithms are the library's own (`meta.reptile_step`, `meta.fomaml_step`,
`meta.maml_step`) run on `PlaneModel`, a two-parameter model with the interface they use:
``layout``, ``loss_and_grad`` and ``hessian_vector_product``. The point closest to the
solution sets is found independently, by a grid search refined by zooming in
(`closest_point`), not by any of the algorithms.
"""
from typing import NamedTuple

import numpy as np

from . import meta, optim
from .params import ParameterLayout
from .plot import pyplot, save_figure

KINDS = ("line", "circle")


class SolutionSet(NamedTuple):
    """A task's solutions: a line ``{theta: normal . theta = offset}`` (``centre`` is the
    unit normal, ``size`` the offset) or a circle around ``centre`` of radius ``size``;
    ``weight`` is the steepness w of the task's loss."""
    kind: str
    centre: tuple
    size: float
    weight: float


def projection(theta, solution_set):
    """The point of the set nearest to ``theta`` (2,), and the Hessian of 1/2 dist^2 there.

    Line with unit normal n: P = theta - (n . theta - offset) n, Hessian n n^T. Circle of
    centre m and radius r, d = |theta - m|, u = (theta - m) / d: P = m + r u, Hessian
    u u^T + (1 - r / d)(I - u u^T) (the tangential part curves with the circle).
    """
    centre = np.asarray(solution_set.centre, dtype=theta.dtype)
    if solution_set.kind == "line":
        return (theta - (centre @ theta - solution_set.size) * centre, np.outer(centre, centre))
    offset = theta - centre
    radius = np.linalg.norm(offset)
    if radius == 0:
        raise ValueError(f"theta {theta} is the centre of a circle: every point of it is nearest.")
    u = offset / radius
    radial = np.outer(u, u)
    return (centre + solution_set.size * u,
            radial + (1 - solution_set.size / radius) * (np.eye(2) - radial))


def signed_distances(points, solution_set):
    """The signed distance to the set for each row p of ``points`` (..., 2): n . p - offset
    for a line, |p - m| - r for a circle (negative inside); zero exactly on the set."""
    centre = np.asarray(solution_set.centre)
    if solution_set.kind == "line":
        return points @ centre - solution_set.size
    return np.linalg.norm(points - centre, axis=-1) - solution_set.size


def distances(points, solution_set):
    """dist(p, S) for each row p of ``points`` (..., 2)."""
    return np.abs(signed_distances(points, solution_set))


class PlaneModel:
    """theta is a point of the plane; an example is a solution set, encoded as one row
    ``(kind index, centre x, centre y, size, weight)`` (`encode`); the target is unused
    (0): the loss of a row is ``weight / 2 * dist(theta, set)^2``."""

    layout = ParameterLayout([("theta", (2,))])

    @staticmethod
    def encode(solution_set):
        """One task, ``(x, y)``: the set as a (1, 5) row and a zero target."""
        if solution_set.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {solution_set.kind!r}.")
        x = np.array([[KINDS.index(solution_set.kind), *solution_set.centre,
                       solution_set.size, solution_set.weight]])
        return x, np.zeros(1)

    @staticmethod
    def decode(row):
        return SolutionSet(KINDS[int(row[0])], (row[1], row[2]), row[3], row[4])

    def _terms(self, theta, x, reduction):
        for row in x:
            solution_set = self.decode(row)
            nearest, hessian = projection(theta, solution_set)
            yield solution_set.weight / (len(x) if reduction == "mean" else 1), nearest, hessian

    def loss_and_grad(self, theta, x, y, reduction="sum"):
        """Sum (or mean) of w / 2 |theta - P|^2 and its gradient, sum of w (theta - P)."""
        loss, grad = 0.0, np.zeros_like(theta)
        for weight, nearest, _ in self._terms(theta, x, reduction):
            loss += weight / 2 * np.sum((theta - nearest) ** 2)
            grad += weight * (theta - nearest)
        return loss, grad

    def hessian_vector_product(self, theta, x, y, vector, reduction="sum"):
        """Sum of w H v, with the Hessians of `projection`."""
        return sum(weight * hessian @ vector for weight, _, hessian in self._terms(theta, x, reduction))


DEFAULT_SETS = (
    SolutionSet("line", (1.0, 0.0), 2.0, 4.0),                          # x = 2, steep
    SolutionSet("line", (0.0, 1.0), 2.0, 1.0),                          # y = 2
    SolutionSet("line", (-np.sqrt(0.5), np.sqrt(0.5)), -1.0, 1.0),      # y = x - sqrt(2)
    SolutionSet("circle", (-1.0, -1.0), 1.5, 2.0),
)
"""The figure's four tasks: three lines and a circle, of steepness 1 to 4."""


def closest_point(sets, weights=None, centre=(0.0, 0.0), half_width=5.0, points=201, zooms=8):
    """The point minimising the (weighted) summed squared distance to ``sets``, by grid search.

    A ``points`` x ``points`` grid over the square ``centre +- half_width``, then
    ``zooms`` times the same grid over four cells around the best point so far: the
    global minimiser within the square (the objective is not convex with circles), to
    about half_width * (4 / points)^zooms.

    Returns:
        ``(point, sum_t weights[t] * dist(point, S_t)^2)``; weights default to 1.
    """
    best = np.asarray(centre, dtype=np.float64)
    width = half_width
    for _ in range(zooms + 1):
        axis = np.linspace(-width, width, points)
        grid = np.stack(np.meshgrid(best[0] + axis, best[1] + axis), axis=-1).reshape(-1, 2)
        best = grid[np.argmin(summed_squared_distance(grid, sets, weights))]
        width = 4 * width / (points - 1)
    return best, float(summed_squared_distance(best, sets, weights))


def summed_squared_distance(points, sets, weights=None):
    """sum_t weights[t] dist(p, S_t)^2 for each row p of ``points`` (..., 2); weights default to 1."""
    weights = np.ones(len(sets)) if weights is None else weights
    return sum(w * distances(points, s) ** 2 for w, s in zip(weights, sets))


def reptile_weights(sets, inner_iters, lr):
    """c_t = 1 - (1 - lr w_t)^k: how much of the way to P_t(theta) k inner steps go. Reptile
    with k steps is gradient descent on 1/2 mean_t c_t dist(theta, S_t)^2, so it ends at the
    minimiser of that sum: joint training's (c_t = lr w_t) at k = 1, and the unweighted one
    as the inner loop converges (c_t -> 1)."""
    return [1 - (1 - lr * s.weight) ** inner_iters for s in sets]


def fomaml_weights(sets, inner_iters, lr):
    """w_t (1 - lr w_t)^(k - 1): FOMAML's last inner gradient is that times (theta - P_t), so
    FOMAML minimises sum_t of these times dist(theta, S_t)^2; a task the inner loop solves
    quickly (lr w_t near 1) drops out of it."""
    return [s.weight * (1 - lr * s.weight) ** (inner_iters - 1) for s in sets]


ALGORITHMS = ("reptile", "fomaml", "maml", "joint")


def trajectories(sets=DEFAULT_SETS, start=(3.0, -2.5), inner_iters=10, lr=0.2, epsilon=0.5,
                 meta_iters=2000, algorithms=ALGORITHMS):
    """theta after each meta-iteration of each of ``algorithms``, every task in every
    meta-batch (so the runs are deterministic); k = ``inner_iters`` counts the batches, as
    in the paper: Reptile takes k SGD steps, FOMAML and MAML k - 1 and then batch k's
    gradient; joint training is Reptile with k = 1.

    Returns:
        ``{algorithm: (meta_iters + 1, 2) array}``, the start first.
    """
    model = PlaneModel()
    tasks = [model.encode(s) for s in sets]
    rng = np.random.default_rng(0)   # every task has one example: the batches are all [0]
    steps = {
        "reptile": lambda theta: meta.reptile_step(model, theta, tasks, optim.SGD(lr), rng, 1,
                                                   inner_iters, epsilon),
        "fomaml": lambda theta: meta.fomaml_step(model, theta, tasks, optim.SGD(lr), rng, 1,
                                                 inner_iters, epsilon),
        "maml": lambda theta: meta.maml_step(model, theta, tasks, rng, 1, inner_iters, lr,
                                             epsilon),
        "joint": lambda theta: meta.reptile_step(model, theta, tasks, optim.SGD(lr), rng, 1, 1,
                                                 epsilon),
    }
    paths = {}
    for name in algorithms:
        step = steps[name]
        theta = np.array(start, dtype=np.float64)
        path = [theta]
        for _ in range(meta_iters):
            theta = step(theta)
            path.append(theta)
        paths[name] = np.array(path)
    return paths


def reptile_by_steps(sets=DEFAULT_SETS, steps=(1, 2, 5, 10, 20, 40), meta_iters=300, **settings):
    """Reptile's trajectory for each number of inner steps k (k = 1 is joint training);
    300 meta-iterations settle every k here (k = 1, the slowest, to steps below 1e-10).

    Returns:
        ``{k: (meta_iters + 1, 2) array}``.
    """
    return {k: trajectories(sets, inner_iters=k, meta_iters=meta_iters, algorithms=("reptile",),
                            **settings)["reptile"]
            for k in steps}


def format_report(sets, star, star_total, paths, sweep):
    """The closest point; each algorithm's end, its distance to that point and its last
    step (how far from settled it is); Reptile's distance for each k. As text."""
    lines = [f"point closest to the solution sets (grid search): ({star[0]:.4f}, {star[1]:.4f}), "
             f"summed squared distance {star_total:.4f}", "",
             f"{'algorithm':<10}{'end':>20}{'distance to it':>16}{'summed sq. dist.':>18}"
             f"{'last step':>11}"]
    for name, path in paths.items():
        end = path[-1]
        lines.append(f"{name:<10}{f'({end[0]:.4f}, {end[1]:.4f})':>20}"
                     f"{np.linalg.norm(end - star):>16.4f}{summed_squared_distance(end, sets):>18.4f}"
                     f"{np.linalg.norm(end - path[-2]):>11.1e}")
    lines += ["", "Reptile's end against the number of inner steps k (k = 1: joint training):",
              f"{'k':>4}{'distance to the closest point':>32}{'last step':>11}"]
    lines += [f"{k:>4}{np.linalg.norm(path[-1] - star):>32.4g}"
              f"{np.linalg.norm(path[-1] - path[-2]):>11.1e}" for k, path in sweep.items()]
    return "\n".join(lines)


def plot_geometry(path, sets, star, paths, sweep, half_width=4.5):
    """(a) the solution sets, the closest point and every algorithm's trajectory on the
    plane; (b) Reptile's distance to the closest point against k."""
    plt = pyplot("the geometry figure")
    figure, (plane, sweep_axis) = plt.subplots(1, 2, figsize=(11, 5), width_ratios=(1.3, 1))
    axis = np.linspace(-half_width, half_width, 400)
    grid = np.stack(np.meshgrid(axis, axis), axis=-1)
    for index, s in enumerate(sets):
        plane.contour(axis, axis, signed_distances(grid, s), levels=[0.0], colors="0.5",
                      linewidths=0.8 + 0.6 * s.weight)
        plane.plot([], [], color="0.5", linewidth=0.8 + 0.6 * s.weight,
                   label=f"task {index + 1}: {s.kind}, weight {s.weight:g}")
    for name, trajectory in paths.items():
        plane.plot(trajectory[:, 0], trajectory[:, 1], ".-", markersize=2, linewidth=1,
                   label=f"{name} (end {np.linalg.norm(trajectory[-1] - star):.3f} from ★)")
    start = next(iter(paths.values()))[0]
    plane.plot(*start, "ks", label="start")
    plane.plot(*star, "k*", markersize=14, label="★ min of summed squared distance")
    plane.set_xlim(-half_width, half_width)
    plane.set_ylim(-half_width, half_width)
    plane.set_aspect("equal")
    plane.set_title("(a) theta's trajectories; grey: each task's solution set", fontsize=10)
    plane.legend(fontsize=7, loc="upper left")
    sweep_axis.semilogy(list(sweep), [np.linalg.norm(p[-1] - star) for p in sweep.values()], "o-")
    sweep_axis.set_xlabel("inner steps k (k = 1: joint training)")
    sweep_axis.set_ylabel("|Reptile's end − ★|")
    sweep_axis.set_title("(b) Reptile ends at ★ as the inner loop converges", fontsize=10)
    save_figure(figure, path)
