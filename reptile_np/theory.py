"""The paper's section 5 measured: the Taylor expansion of the Reptile, FOMAML and MAML updates.

One task, k mini-batch losses L_1 ... L_k, inner SGD with step alpha (paper notes §7):
phi_1 = theta, g_i = L_i'(phi_i), phi_{i+1} = phi_i - alpha g_i; gbar_i = L_i'(theta) and
Hbar_i = L_i''(theta) at the start. The updates, in the paper's gradient form:

    g_Reptile = (theta - phi_{k+1}) / alpha = g_1 + ... + g_k       (k SGD steps)
    g_FOMAML  = g_k                                                  (k - 1 steps, then batch k)
    g_MAML    = prod_{j<k} (I - alpha L_j''(phi_j)) g_k              (the exact meta-gradient)

Expanding g_i = gbar_i - alpha Hbar_i sum_{j<i} gbar_j + O(alpha^2) gives each update as
a constant term plus an alpha term plus O(alpha^2). Averaged over the k! orders in which
the k batches can be taken, the expansions become the paper's:

    AvgGrad      = mean_i gbar_i
    AvgGradInner = mean_{i != j} Hbar_i gbar_j     (= 1/2 d/dtheta mean_{i != j} gbar_i . gbar_j)

    E[g_Reptile] = k AvgGrad - k (k - 1) / 2 alpha AvgGradInner + O(alpha^2)
    E[g_FOMAML]  =   AvgGrad -     (k - 1)   alpha AvgGradInner + O(alpha^2)
    E[g_MAML]    =   AvgGrad -   2 (k - 1)   alpha AvgGradInner + O(alpha^2)

(over orders, an ordered pair (i, j) has i after j in half of them, which gives Reptile's
k (k - 1) / 2; batch i is last, with j among the earlier, in (k - 1)! of the k! orders for
each of the k (k - 1) pairs, which gives FOMAML's k - 1, and MAML's product adds as much
again). The expectation here is exact: the mean over all orders of a fixed set of
batches, of a fixed set of tasks. So the residual |exact - expansion| must shrink as
alpha^2: a log-log slope of 2. Dropping the AvgGradInner term leaves an O(alpha)
residual, slope 1; adding the alpha^2 term (`second_order_terms`, with the loss's third
derivatives) leaves O(alpha^3), slope 3. The paper's "to leading order O(alpha^2)" counts
powers of alpha in the parameter change phi - theta = -alpha g, whose residual is alpha
times the gradient form's; docs/theory.md says more.

`measure` computes every exact update (inner SGD by `meta.inner_loop`, MAML by
`meta.maml_gradient`, which uses exact Hessian-vector products) and every term (exact
Hessian-vector products by `meta.hessian_vector_product`) on a small tanh MLP in float64,
a network with a Hessian everywhere and non-zero third derivatives, so nothing is
accidentally exact. ``reptile-np theory`` prints it and draws the log-log figure.
"""
import argparse
import itertools
import os
from typing import NamedTuple

import numpy as np

from . import meta, models, optim
from .argtypes import numbers
from .data.sine import sine_task
from .files import ensure_writable_dir
from .plot import pyplot, save_figure

ALGORITHMS = ("reptile", "fomaml", "maml")

EXPANSION_COEFFICIENTS = {
    "reptile": (lambda k: k, lambda k: k * (k - 1) / 2),
    "fomaml": (lambda k: 1, lambda k: k - 1),
    "maml": (lambda k: 1, lambda k: 2 * (k - 1)),
}
"""``(a(k), b(k))`` of each expected update ``a AvgGrad - b alpha AvgGradInner`` (paper
section 5.1; paper notes §7)."""

DEFAULT_ALPHAS = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2)
DEFAULT_STEPS = (2, 3, 4)
HIDDEN = (8, 8)
"""The measured network: 1 -> 8 -> 8 -> 1 with tanh (97 parameters), mean squared error."""
REDUCTION = "mean"


class Problem(NamedTuple):
    """What the measurement runs on: a model, its float64 theta, and tasks with batches."""
    model: models.Sequential
    theta: np.ndarray
    tasks: list          # [(x, y, batches)], batches: k disjoint index arrays per task


def make_problem(steps, num_tasks=4, inner_batch=10, seed=0):
    """The tanh MLP at a random float64 initialisation and ``num_tasks`` sine tasks, each
    cut into ``steps`` disjoint batches of ``inner_batch`` of its 50 points.

    Raises:
        ValueError: naming ``steps`` or ``inner_batch`` when the batches do not fit in 50
            points, or ``num_tasks`` below 1.
    """
    if steps < 1 or inner_batch < 1 or steps * inner_batch > 50:
        raise ValueError(f"--steps {steps} x --inner-batch {inner_batch}: the batches must be "
                         f"disjoint, so at most 50 points (a sine task's grid) in all.")
    if num_tasks < 1:
        raise ValueError(f"--tasks: expected at least 1, got {num_tasks}.")
    rng = np.random.default_rng(seed)
    model = models.sine_mlp(hidden=HIDDEN)
    theta = model.init(rng, np.float64)
    tasks = []
    for _ in range(num_tasks):
        x, y = sine_task(rng, np.float64)
        order = rng.permutation(len(y))
        tasks.append((x, y, list(order[:steps * inner_batch].reshape(steps, inner_batch))))
    return Problem(model, theta, tasks)


class SummingSGD(optim.SGD):
    """SGD that also adds up the gradients it steps along, in ``total``.

    Under SGD the Reptile update (theta - phi) / alpha is exactly g_1 + ... + g_k; summing
    the g_i gives it without the cancellation of theta - phi, which at alpha = 1e-4 would
    cost the last four of float64's sixteen digits -- digits the alpha^3 remainder needs.
    """

    def __init__(self, lr, like):
        super().__init__(lr)
        self.total = np.zeros_like(like)

    def step(self, params, grad):
        self.total += grad
        super().step(params, grad)


def mean_over_orders(problem, task_updates):
    """The mean, over the tasks and over every order of their batches, of some updates.

    Args:
        task_updates: ``task_updates(x, y, batches)`` returns a function of an order (a
            permutation of the batch indices) giving ``{algorithm: flat vector}``.

    Returns:
        ``{algorithm: flat vector}`` for `ALGORITHMS`.
    """
    totals = {name: np.zeros_like(problem.theta) for name in ALGORITHMS}
    count = 0
    for x, y, batches in problem.tasks:
        updates = task_updates(x, y, batches)
        for order in itertools.permutations(range(len(batches))):
            for name, value in updates(order).items():
                totals[name] += value
            count += 1
    return {name: total / count for name, total in totals.items()}


def exact_updates(problem, alpha):
    """The three updates in gradient form, averaged over tasks and all orders of their batches.

    Returns:
        ``{algorithm: flat vector}`` for `ALGORITHMS`.
    """
    model, theta = problem.model, problem.theta

    def task_updates(x, y, batches):
        def updates(order):
            ordered = [batches[index] for index in order]
            summing = SummingSGD(alpha, theta)
            meta.inner_loop(model, theta, x, y, ordered, summing, REDUCTION)
            g_maml, g_fomaml = meta.maml_gradient(model, theta, x, y, ordered, alpha, REDUCTION)
            return {"reptile": summing.total, "fomaml": g_fomaml, "maml": g_maml}
        return updates

    return mean_over_orders(problem, task_updates)


def expansion_terms(problem):
    """AvgGrad and AvgGradInner at theta, averaged over tasks (see the module docstring).

    Returns:
        ``(avg_grad, avg_grad_inner)``, flat vectors.
    """
    model, theta = problem.model, problem.theta
    avg_grad, avg_grad_inner = np.zeros_like(theta), np.zeros_like(theta)
    for x, y, batches in problem.tasks:
        grads = [model.loss_and_grad(theta, x[b], y[b], REDUCTION)[1] for b in batches]
        avg_grad += np.mean(grads, axis=0)
        if len(batches) > 1:
            avg_grad_inner += np.mean(
                [meta.hessian_vector_product(model, theta, x[bi], y[bi], grads[j], REDUCTION)
                 for i, bi in enumerate(batches) for j in range(len(batches)) if j != i], axis=0)
    return avg_grad / len(problem.tasks), avg_grad_inner / len(problem.tasks)


THIRD_DERIVATIVE_STEP = 1e-4
"""The step (relative to |a|) of the central difference of exact Hessian-vector products
that gives third-derivative contractions: its error, O(step^2) ~ 1e-8 relative, enters the
alpha^2 term, far below the O(alpha^3) remainder that is measured."""


def second_order_terms(problem):
    """The alpha^2 coefficient of each update, averaged over tasks and batch orders.

    With s_i = sum_{j<i} gbar_j, q_i = sum_{j<i} Hbar_j s_j and T_i[a, b] the third
    derivative of L_i at theta contracted with a and b (how Hbar_i b changes along a), the
    inner steps give phi_i - theta = -alpha s_i + alpha^2 q_i + O(alpha^3), so

        g_i      = gbar_i - alpha Hbar_i s_i + alpha^2 X_i + O(alpha^3),
                   X_i = Hbar_i q_i + 1/2 T_i[s_i, s_i]
        Reptile:  sum_i X_i;   FOMAML: X_k
        MAML:     X_k + sum_{j<k} (T_j[s_j, gbar_k] + Hbar_j Hbar_k s_k)
                      + sum_{j<l<k} Hbar_j Hbar_l gbar_k

    (MAML's product of (I - alpha L_j''(phi_j)) with L_j''(phi_j) = Hbar_j - alpha T_j[s_j]
    + O(alpha^2)). T_i[a, b] is a central difference of exact Hessian-vector products along
    a (`THIRD_DERIVATIVE_STEP`); everything else is exact.

    Returns:
        ``{algorithm: flat vector}`` for `ALGORITHMS`.
    """
    model, theta = problem.model, problem.theta

    def task_updates(x, y, batches):
        def hvp(index, vector, at=theta):
            batch = batches[index]
            return meta.hessian_vector_product(model, at, x[batch], y[batch], vector, REDUCTION)

        def third(index, a, b):
            norm = np.linalg.norm(a)
            if norm == 0:
                return np.zeros_like(theta)
            h = THIRD_DERIVATIVE_STEP / norm
            return (hvp(index, b, theta + h * a) - hvp(index, b, theta - h * a)) / (2 * h)

        grads = [model.loss_and_grad(theta, x[b], y[b], REDUCTION)[1] for b in batches]

        def updates(order):
            k = len(order)
            s, q, x_terms = [np.zeros_like(theta)], [np.zeros_like(theta)], []
            for index in order:
                x_terms.append(hvp(index, q[-1]) + third(index, s[-1], s[-1]) / 2)
                q.append(q[-1] + hvp(index, s[-1]))
                s.append(s[-1] + grads[index])
            last = order[-1]
            maml = x_terms[-1].copy()
            h_last_s = hvp(last, s[k - 1])
            for j in range(k - 1):
                maml += third(order[j], s[j], grads[last]) + hvp(order[j], h_last_s)
                for l in range(j + 1, k - 1):
                    maml += hvp(order[j], hvp(order[l], grads[last]))
            return {"reptile": sum(x_terms), "fomaml": x_terms[-1], "maml": maml}
        return updates

    return mean_over_orders(problem, task_updates)


def expansion(avg_grad, avg_grad_inner, steps, alpha, with_inner=True):
    """The expected updates to first order in alpha (``with_inner=False``: only the
    AvgGrad term, the zeroth order).

    Returns:
        ``{algorithm: flat vector}`` for `ALGORITHMS`.
    """
    result = {}
    for name, (a, b) in EXPANSION_COEFFICIENTS.items():
        result[name] = a(steps) * avg_grad
        if with_inner:
            result[name] = result[name] - b(steps) * alpha * avg_grad_inner
    return result


class Measurement(NamedTuple):
    """One k's measurement: the terms' norms and the residuals for each alpha."""
    steps: int
    avg_grad_norm: float
    avg_grad_inner_norm: float
    alphas: tuple
    residuals: dict          # {algorithm: [|exact - first-order expansion| per alpha]}
    zeroth_residuals: dict   # {algorithm: [|exact - AvgGrad term| per alpha]}
    second_residuals: dict   # {algorithm: [|exact - expansion with the alpha^2 term| per alpha]}


def log_log_slope(alphas, values):
    """The least-squares slope of log(values) against log(alphas)."""
    return float(np.polyfit(np.log(alphas), np.log(values), 1)[0])


def measure(steps=DEFAULT_STEPS, alphas=DEFAULT_ALPHAS, num_tasks=4, inner_batch=10, seed=0):
    """The residual of each algorithm's expansion, for every k in ``steps`` and alpha:
    to zeroth, first (the paper's) and second order in alpha.

    Returns:
        A list of `Measurement`, one per k.
    """
    results = []
    for k in steps:
        problem = make_problem(k, num_tasks, inner_batch, seed)
        avg_grad, avg_grad_inner = expansion_terms(problem)
        second = second_order_terms(problem)
        residuals = {order: {name: [] for name in ALGORITHMS} for order in range(3)}
        for alpha in alphas:
            exact = exact_updates(problem, alpha)
            first = expansion(avg_grad, avg_grad_inner, k, alpha)
            expansions = (expansion(avg_grad, avg_grad_inner, k, alpha, with_inner=False), first,
                          {name: first[name] + alpha * alpha * second[name] for name in ALGORITHMS})
            for order, expanded in enumerate(expansions):
                for name in ALGORITHMS:
                    residuals[order][name].append(float(np.linalg.norm(exact[name] - expanded[name])))
        results.append(Measurement(k, float(np.linalg.norm(avg_grad)),
                                   float(np.linalg.norm(avg_grad_inner)), tuple(alphas),
                                   residuals[1], residuals[0], residuals[2]))
    return results


def format_report(results):
    """The terms, the residual table and the fitted slopes, as text."""
    lines = []
    for m in results:
        lines.append(f"k = {m.steps}: |AvgGrad| = {m.avg_grad_norm:.4g}, "
                     f"|AvgGradInner| = {m.avg_grad_inner_norm:.4g}; expected updates "
                     + ", ".join(f"{name} {a(m.steps):g}·AvgGrad − {b(m.steps):g}·α·AvgGradInner"
                                 for name, (a, b) in EXPANSION_COEFFICIENTS.items()))
        header = f"{'alpha':>9}" + "".join(f"{name + ' 1st':>13}{'2nd':>10}" for name in ALGORITHMS)
        lines += [header, "-" * len(header)]
        for index, alpha in enumerate(m.alphas):
            lines.append(f"{alpha:>9.0e}" + "".join(
                f"{m.residuals[name][index]:>13.3e}{m.second_residuals[name][index]:>10.3e}"
                for name in ALGORITHMS))
        lines.append(f"{'slope':>9}" + "".join(
            f"{log_log_slope(m.alphas, m.residuals[name]):>13.3f}"
            f"{log_log_slope(m.alphas, m.second_residuals[name]):>10.3f}" for name in ALGORITHMS))
        lines.append(f"{'no α term':>9}" + "".join(
            f"{log_log_slope(m.alphas, m.zeroth_residuals[name]):>13.3f}{'':>10}"
            for name in ALGORITHMS))
        lines.append("")
    lines += ["1st: |exact update − (a·AvgGrad − b·α·AvgGradInner)|, O(α²), slope 2; 'no α term' "
              "drops AvgGradInner: O(α), slope 1;",
              "2nd: the α² term added too (third derivatives of the loss enter it): O(α³), slope 3."]
    return "\n".join(lines)


def plot_residuals(path, results):
    """The log-log figure: residual against alpha, one panel per algorithm, one colour per k,
    one line style per order of the expansion; dashed: slopes 2 and 3 through the first
    k's smallest-alpha points."""
    plt = pyplot("the theory figure")
    figure, axes = plt.subplots(1, len(ALGORITHMS), figsize=(11, 3.8), sharey=True)
    orders = (("zeroth_residuals", "", ":", "AvgGrad term only: slope 1"),
              ("residuals", "o", "-", "first order (the paper's): slope 2"),
              ("second_residuals", "x", "-.", "with the α² term: slope 3"))
    for axis, name in zip(axes, ALGORITHMS):
        for m in results:
            colour = None
            for field, marker, linestyle, _ in orders:
                line, = axis.loglog(m.alphas, getattr(m, field)[name], marker=marker,
                                    linestyle=linestyle, color=colour, markersize=4)
                colour = line.get_color()
        alphas = np.array(results[0].alphas)
        for slope, field in ((2, "residuals"), (3, "second_residuals")):
            start = getattr(results[0], field)[name][0]
            axis.loglog(alphas, start * (alphas / alphas[0]) ** slope, "k--", linewidth=0.6)
        axis.set_title(f"{name}: |exact − expansion|", fontsize=10)
        axis.set_xlabel("inner step α")
    axes[0].set_ylabel("residual norm")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    handles = [plt.Line2D([], [], color=colours[i], label=f"k = {m.steps}")
               for i, m in enumerate(results)]
    handles += [plt.Line2D([], [], color="k", marker=marker, linestyle=linestyle, label=label)
                for _, marker, linestyle, label in orders]
    axes[-1].legend(handles=handles, fontsize=7, loc="lower right")
    save_figure(figure, path)


# --------------------------------------------------------------------------- command line

def add_theory_parser(subparsers):
    parser = subparsers.add_parser(
        "theory", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="measure the paper's section-5 Taylor expansion of the Reptile, FOMAML, MAML updates",
        description="On a 1-8-8-1 tanh MLP in float64 and sine tasks, compute the exact "
                    "Reptile, FOMAML and MAML updates (inner SGD, averaged over tasks and "
                    "orders of k disjoint batches) and their expansions k·AvgGrad − "
                    "b·α·AvgGradInner (exact Hessian-vector products), and print the "
                    "residual for each α with its fitted log-log slope (2 expected).")
    parser.add_argument("--steps", type=numbers(int, 1), default=",".join(map(str, DEFAULT_STEPS)),
                        help="comma-separated k values (batches per task)")
    parser.add_argument("--alphas", type=numbers(float, 0, strict=True),
                        default=",".join(f"{a:g}" for a in DEFAULT_ALPHAS),
                        help="comma-separated inner step sizes α")
    parser.add_argument("--tasks", type=int, default=4, help="sine tasks averaged over")
    parser.add_argument("--inner-batch", type=int, default=10,
                        help="points per batch (k times this at most 50)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--plot", metavar="FILE", help="also write the log-log figure here")
    parser.set_defaults(run=run_theory)


def run_theory(args):
    if args.plot:
        pyplot("the theory figure")   # a missing extra or a bad directory fails before the measurement
        ensure_writable_dir(os.path.dirname(os.path.abspath(args.plot)), "--plot")
    results = measure(args.steps, args.alphas, args.tasks, args.inner_batch, args.seed)
    print(format_report(results))
    if args.plot:
        plot_residuals(args.plot, results)
        print(f"figure written to {args.plot}")
    return 0
