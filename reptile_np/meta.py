"""First-order meta-learning: the inner loop and the outer updates, in plain sight.

One meta-iteration of batched Reptile (paper Algorithm 2, paper notes §1.1)::

    phis = []
    for x, y in tasks:                                  # B tasks, one after another
        batches = minibatches(len(y), inner_batch, inner_iters, rng)
        phis.append(inner_loop(model, theta, x, y, batches, optimizer))
    theta = theta + epsilon * (mean(phis) - theta)      # the outer interpolation

The interpolation is SGD with learning rate ``epsilon`` on the "gradient"
``theta - mean(phis)``; no outer optimiser is involved. The inner ``optimizer`` keeps
its state across tasks when the caller does not reset it (the paper's policy).

Also here: first-order MAML (the last inner step's parameter change, with a shared
or a separate tail batch), the general family of the paper's section 6.2 (any
weighted sum of the inner steps), and exact second-order MAML through inner SGD
steps (Hessian-vector products by the R-operator, see
`models.Sequential.hessian_vector_product`).
"""
import numpy as np

from . import checks


def minibatches(num_samples, batch_size, num_batches, rng, replacement=False):
    """Index arrays of the inner loop's mini-batches, as the paper's code draws them.

    Without replacement: shuffle the samples, deal them out into batches of
    ``batch_size``, reshuffle when the pass runs out -- a partial batch is carried into
    the next pass, so a batch can straddle two passes (and then repeat a sample).
    With replacement: every batch is an independent draw of distinct samples.

    Args:
        num_samples: how many samples the task has.
        batch_size: samples per batch.
        num_batches: how many batches to return.
        rng: numpy Generator.
        replacement: draw each batch independently.

    Returns:
        A list of ``num_batches`` int arrays of length ``batch_size``.

    Raises:
        ValueError: naming the argument, unless num_samples and batch_size are integers
            >= 1, num_batches an integer >= 0 and rng a Generator (and, with replacement,
            batch_size <= num_samples).
    """
    checks.integer("num_samples", num_samples)
    checks.integer("batch_size", batch_size)
    checks.integer("num_batches", num_batches, low=0)
    checks.generator("rng", rng)
    if replacement:
        if batch_size > num_samples:
            raise ValueError(f"batch_size must be at most num_samples ({num_samples}) when "
                             f"drawing with replacement, got {batch_size}.")
        return [rng.choice(num_samples, batch_size, replace=False) for _ in range(num_batches)]
    # Dealing shuffled passes out into batches, a partial batch carried into the next
    # pass, is the same as cutting the concatenated passes into consecutive batches.
    passes = -(-batch_size * num_batches // num_samples)
    if passes == 0:
        return []
    order = np.concatenate([rng.permutation(num_samples) for _ in range(passes)])
    return list(order[:batch_size * num_batches].reshape(num_batches, batch_size))


def inner_loop(model, theta, x, y, batches, optimizer, reduction="sum", weight_decay=1.0):
    """Adapt ``theta`` to one task: one optimiser step per mini-batch.

    Args:
        model: a `reptile_np.models.Sequential`.
        theta: flat parameters to start from (not modified).
        x, y: the task's examples and targets.
        batches: index arrays (see `minibatches`).
        optimizer: `optim.SGD` or `optim.Adam`; its state advances.
        reduction: "sum" (the paper's) or "mean" over each batch.
        weight_decay: multiply the parameters by this before every step (1 = off).

    Returns:
        phi, the adapted parameters.

    Raises:
        ValueError: naming ``y`` when it has not one entry per example of ``x`` (the
            model checks theta, shapes and labels).

    The meta-steps below take any function with this signature as their ``inner_loop``;
    `reptile_np.fused.mlp_sgd_inner_loop` is one that runs a small MLP's SGD steps in
    one compiled call.
    """
    checks.same_length("y", x, y)
    phi = theta.copy()
    for batch in batches:
        if weight_decay != 1.0:
            phi *= phi.dtype.type(weight_decay)
        _, grad = model.loss_and_grad(phi, x[batch], y[batch], reduction)
        optimizer.step(phi, grad)
    return phi


def meta_step_size(iteration, meta_iters, initial, final):
    """The paper's linear schedule: ``epsilon_i = (i/M) * final + (1 - i/M) * initial``.

    It never quite reaches ``final``: the last iteration (i = M - 1) uses
    ``initial + (final - initial) * (M - 1) / M``.

    Raises:
        ValueError: naming ``meta_iters`` (an integer >= 1), ``iteration`` (an integer
            from 0 to meta_iters - 1), ``initial`` or ``final`` (finite numbers).
    """
    checks.integer("meta_iters", meta_iters)
    checks.integer("iteration", iteration, 0, meta_iters - 1, "meta_iters - 1")
    checks.number("initial", initial)
    checks.number("final", final)
    fraction = iteration / meta_iters
    return fraction * final + (1 - fraction) * initial


def task_batches(y, inner_batch, inner_iters, rng, replacement=False, tail_shots=None):
    """The inner loop's mini-batches for one task.

    With ``tail_shots`` (FOMAML's "separate tail", paper notes §1.3): the first
    ``tail_shots`` examples of every label are set aside; ``inner_iters - 1`` batches are
    drawn from the rest, and the last batch is exactly the set-aside examples.

    Raises:
        ValueError: naming ``tail_shots`` (an integer >= 1 that leaves examples for the
            other batches), ``inner_iters`` (>= 1 with a tail) or, via `minibatches`,
            the others.
    """
    if tail_shots is None:
        return minibatches(len(y), inner_batch, inner_iters, rng, replacement)
    checks.integer("tail_shots", tail_shots)
    checks.integer("inner_iters", inner_iters)
    tail = np.concatenate([np.flatnonzero(y == label)[:tail_shots] for label in np.unique(y)])
    rest = np.setdiff1d(np.arange(len(y)), tail)
    if len(rest) == 0:
        raise ValueError(f"tail_shots: expected fewer than the shots of every label, got "
                         f"{tail_shots}, which leaves no examples for the other batches.")
    head = minibatches(len(rest), inner_batch, inner_iters - 1, rng, replacement)
    return [rest[batch] for batch in head] + [tail]


def _check_step_arguments(model, theta, tasks, rng, inner_batch, inner_iters, epsilon):
    """The checks the meta-steps share, once per meta-iteration.

    Raises:
        ValueError: naming ``theta`` (not the model's flat float vector), ``tasks`` (not
            a non-empty list of ``(x, y)`` pairs of equal lengths), ``rng`` (not a
            Generator), ``inner_batch`` or ``inner_iters`` (not integers >= 1) or
            ``epsilon`` (not a finite number).
    """
    model.layout.check(theta)
    checks.tasks("tasks", tasks)
    checks.generator("rng", rng)
    checks.integer("inner_batch", inner_batch)
    checks.integer("inner_iters", inner_iters)
    checks.number("epsilon", epsilon)


def reptile_step(model, theta, tasks, optimizer, rng, inner_batch, inner_iters, epsilon,
                 replacement=False, reduction="sum", weight_decay=1.0,
                 inner_loop=inner_loop):
    """One meta-iteration of Reptile; serial Reptile is the case of one task.

    Args:
        tasks: list of ``(x, y)``, one per task of the meta-batch.
        epsilon: the outer step size (see `meta_step_size`).
        inner_loop: the function that adapts theta to one task, with the signature of
            this module's `inner_loop` (the default).
        Others: as `inner_loop` and `minibatches`.

    Returns:
        The new theta, ``theta + epsilon * (mean_j phi_j - theta)``.

    Raises:
        ValueError: see `_check_step_arguments`.
    """
    _check_step_arguments(model, theta, tasks, rng, inner_batch, inner_iters, epsilon)
    phis = []
    for x, y in tasks:
        batches = minibatches(len(y), inner_batch, inner_iters, rng, replacement)
        phis.append(inner_loop(model, theta, x, y, batches, optimizer, reduction, weight_decay))
    return interpolate(theta, phis, epsilon)


def interpolate(theta, phis, epsilon):
    """Reptile's outer update ``theta + epsilon * (mean_j phi_j - theta)``."""
    # One task (serial Reptile): the mean is that phi (np.mean would only copy it).
    mean_phi = phis[0] if len(phis) == 1 else np.mean(phis, axis=0)
    return theta + theta.dtype.type(epsilon) * (mean_phi - theta)


def independent_reptile_step(model, theta, tasks, optimizer, rng, inner_batch, inner_iters,
                             epsilon, replacement=False, reduction="sum", weight_decay=1.0,
                             executor=None):
    """One meta-iteration of Reptile whose tasks are independent (``--parallel-tasks``).

    A deviation from the paper's code, where the inner Adam state is a chain: task j+1
    starts from the state task j ended with. Here every task starts from a snapshot of
    the state at the start of the meta-iteration, S = (m, v, t), so the tasks can run at
    once (``executor``). Task j ends with S_j = (m_j, v_j, t + inner_iters), and the state
    carried into the next meta-iteration is their mean,
    ``(mean_j m_j, mean_j v_j, t + inner_iters)`` (`reptile_np.optim.mean_state`):

    * like the outer update (the mean of the phi_j), it takes every task of the
      meta-batch into account and does not depend on their order, which is what makes
      the tasks independent -- any other choice (the last task's state) would privilege
      one task of a meta-batch that has no order any more;
    * v is Adam's running estimate of the squared gradient; the mean of the tasks'
      estimates is the estimate over the meta-batch, which is what the chain estimates
      too, with every task weighted alike instead of the later ones more;
    * ``t`` advances by ``inner_iters`` per meta-iteration, not ``B * inner_iters``: the
      bias correction of a state that saw ``inner_iters`` steps of each task;
    * with one task per meta-batch (the paper's Omniglot and Mini-ImageNet runs use 5,
      its defaults 1) it is exactly `reptile_step`, bit for bit; with ``--sgd`` (no
      state) it is `reptile_step` for any meta-batch.

    The mini-batches are drawn from ``rng`` in this process, task after task, as
    `reptile_step` draws them, so the result does not depend on where the tasks run.

    Args:
        executor: where the tasks adapt (`reptile_np.workers.executor`): None runs them
            here, one after another -- the serial twin that a
            `reptile_np.dist.DaskExecutor` reproduces bit for bit.
        Others: as `reptile_step`.

    Returns:
        The new theta, as `reptile_step`; ``optimizer`` then holds the mean state.

    Raises:
        ValueError: see `_check_step_arguments`.
    """
    from .optim import mean_state
    from .workers import executor as as_executor
    _check_step_arguments(model, theta, tasks, rng, inner_batch, inner_iters, epsilon)
    items = [(x, y, minibatches(len(y), inner_batch, inner_iters, rng, replacement))
             for x, y in tasks]
    context = (model, theta, optimizer, optimizer.snapshot(), reduction, weight_decay)
    phis, states = zip(*as_executor(executor or 1).map(adapt_from_snapshot, items, context))
    optimizer.restore(mean_state(states))
    return interpolate(theta, phis, epsilon)


def adapt_from_snapshot(context, task):
    """`inner_loop` for one task of `independent_reptile_step`, from the snapshot state.

    Args:
        context: ``(model, theta, optimizer, state, reduction, weight_decay)``.
        task: ``(x, y, batches)``.

    Returns:
        ``(phi, the optimiser's state after the task)``.
    """
    model, theta, optimizer, state, reduction, weight_decay = context
    x, y, batches = task
    optimizer.restore(state)
    phi = inner_loop(model, theta, x, y, batches, optimizer, reduction, weight_decay)
    return phi, optimizer.snapshot()


def fomaml_step(model, theta, tasks, optimizer, rng, inner_batch, inner_iters, epsilon,
                replacement=False, reduction="sum", weight_decay=1.0, tail_shots=None,
                inner_loop=inner_loop):
    """One meta-iteration of first-order MAML as the paper's code does it (``--foml``).

    Each task runs the inner loop; the outer update is the mean over tasks of the
    LAST inner step's parameter change (``-lr * g_k`` under SGD), not an interpolation
    toward phi. ``tail_shots`` selects the "separate tail" last batch (see `task_batches`).

    Returns:
        ``theta + epsilon * mean_j (phi_j - phi_j_before_last_step)``.

    Raises:
        ValueError: see `_check_step_arguments` and `task_batches`.
    """
    _check_step_arguments(model, theta, tasks, rng, inner_batch, inner_iters, epsilon)
    deltas = []
    for x, y in tasks:
        batches = task_batches(y, inner_batch, inner_iters, rng, replacement, tail_shots)
        before_last = inner_loop(model, theta, x, y, batches[:-1], optimizer, reduction, weight_decay)
        last = inner_loop(model, before_last, x, y, batches[-1:], optimizer, reduction, weight_decay)
        deltas.append(last - before_last)
    return theta + theta.dtype.type(epsilon) * np.mean(deltas, axis=0)


def combination_step(model, theta, tasks, optimizer, rng, inner_batch, inner_iters, epsilon,
                     step_weights, replacement=False, reduction="sum", weight_decay=1.0,
                     inner_loop=inner_loop):
    """The paper's section 6.2 family: the outer update is a weighted sum of inner steps.

    With inner SGD the i-th step changes the parameters by ``-lr * g_i``, so
    ``step_weights`` picks the gradient combination: ``(1,)`` with one step is joint
    training (g1), ``(0, ..., 0, 1)`` is FOMAML (gk), all ones is Reptile (g1+...+gk),
    ``1/k`` each is their average.

    Returns:
        ``theta + epsilon * mean_j sum_i step_weights[i] * (phi_j,i+1 - phi_j,i)``.

    Raises:
        ValueError: see `_check_step_arguments`; naming ``step_weights`` unless it has
            ``inner_iters`` entries.
    """
    _check_step_arguments(model, theta, tasks, rng, inner_batch, inner_iters, epsilon)
    if len(step_weights) != inner_iters:
        raise ValueError(f"step_weights: expected inner_iters = {inner_iters} weights, "
                         f"got {len(step_weights)}.")
    combined = np.zeros_like(theta)
    for x, y in tasks:
        phi = theta
        for weight, batch in zip(step_weights, minibatches(len(y), inner_batch, inner_iters,
                                                           rng, replacement)):
            next_phi = inner_loop(model, phi, x, y, [batch], optimizer, reduction, weight_decay)
            combined += theta.dtype.type(weight) * (next_phi - phi)
            phi = next_phi
    return theta + theta.dtype.type(epsilon / len(tasks)) * combined


def hessian_vector_product(model, phi, x, y, vector, reduction="sum"):
    """H v for the loss on (x, y) at ``phi``, exactly: `models.Sequential.hessian_vector_product`
    (Pearlmutter's R-operator through every layer; see there for what exact means with
    ReLU and max-pool)."""
    return model.hessian_vector_product(phi, x, y, vector, reduction)


def finite_difference_hvp(model, phi, x, y, vector, reduction="sum", step=1e-5):
    """H v by central differences of our gradient, an independent check of the exact one.

    ``(grad(phi + r v) - grad(phi - r v)) / (2 r)`` with ``r = step / |v|``: exact up to
    O(r^2) for smooth losses. Use float64. On ReLU or max-pool networks the difference is
    meaningless when the segment crosses a switch (a ReLU input changing sign, a pool
    window changing winner): the gradient jumps there, and dividing the jump by 2r gives
    errors of 1e2..1e4. So the switch patterns at phi - r v, phi and phi + r v must agree.

    Raises:
        ValueError: if they differ in some layer (named in the message).
    """
    norm = np.linalg.norm(vector)
    if norm == 0:
        return np.zeros_like(vector)
    r = step / norm
    plus, minus = phi + r * vector, phi - r * vector
    centre = model.switch_pattern(phi, x)
    for end in (model.switch_pattern(minus, x), model.switch_pattern(plus, x)):
        for index, pattern in centre.items():
            changed = int(np.count_nonzero(end[index] != pattern))
            if changed:
                raise ValueError(
                    f"step {step} makes the finite-difference HVP cross a switch of layer "
                    f"{index} ({type(model.layers[index]).__name__}): {changed} of its "
                    f"{pattern.size} switches differ between phi and phi +- r v (r = {r:.3g}), "
                    f"so the difference quotient is wrong; use the exact hessian_vector_product.")
    _, grad_plus = model.loss_and_grad(plus, x, y, reduction)
    _, grad_minus = model.loss_and_grad(minus, x, y, reduction)
    return (grad_plus - grad_minus) / (2 * r)


def maml_gradient(model, theta, x, y, batches, lr, reduction="sum"):
    """Exact MAML meta-gradient through ``len(batches) - 1`` inner SGD steps.

    The inner loop takes SGD steps on batches 1..k-1 (phi_1 = theta,
    phi_{j+1} = phi_j - lr g_j); the meta-loss is batch k's loss at phi_k. Its
    gradient with respect to theta is ``prod_{j<k} (I - lr H_j(phi_j)) g_k``,
    evaluated from the last factor back with exact Hessian-vector products
    (`hessian_vector_product`): equal to PyTorch's double backward up to rounding on
    every network here, ReLU, max-pool and BatchNorm included.

    Returns:
        (g_maml, g_fomaml): the exact meta-gradient and its first-order part g_k.
    """
    phis = [theta]
    for batch in batches[:-1]:
        _, grad = model.loss_and_grad(phis[-1], x[batch], y[batch], reduction)
        phis.append(phis[-1] - lr * grad)
    _, last_grad = model.loss_and_grad(phis[-1], x[batches[-1]], y[batches[-1]], reduction)
    meta_grad = last_grad
    for phi, batch in zip(phis[-2::-1], batches[-2::-1]):
        meta_grad = meta_grad - lr * hessian_vector_product(model, phi, x[batch], y[batch],
                                                            meta_grad, reduction)
    return meta_grad, last_grad


def maml_step(model, theta, tasks, rng, inner_batch, inner_iters, lr, epsilon,
              replacement=False, reduction="sum"):
    """One meta-iteration of second-order MAML with inner SGD (exact; see `maml_gradient`).

    ``inner_iters`` counts all batches: ``inner_iters - 1`` inner SGD steps, then the
    meta-loss batch -- the same batches FOMAML's shared tail would use, so the two
    differ only by the second-order term. The outer step matches FOMAML's scale:
    ``theta - epsilon * lr * mean_j g_maml_j``.
    """
    meta_grads = []
    for x, y in tasks:
        batches = minibatches(len(y), inner_batch, inner_iters, rng, replacement)
        meta_grads.append(maml_gradient(model, theta, x, y, batches, lr, reduction)[0])
    return theta - theta.dtype.type(epsilon * lr) * np.mean(meta_grads, axis=0)
