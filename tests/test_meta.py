"""Meta-learning updates against docs/paper-notes.md §1 (algorithms) and §7 (theory identities).

Everything here is float64 on tiny networks, so identities that hold exactly in real
arithmetic are checked to a rounding bound derived from the magnitudes involved
(``(number of rounded operations) * machine epsilon * scale``), not to a loose tolerance.
"""
import numpy as np
import pytest

from reptile_np import meta, models, optim
from reptile_np.data import sine
from reptile_np.layers import Linear, Tanh

EPS64 = np.finfo(np.float64).eps
HVP_STEP = 1e-5  # meta.finite_difference_hvp's default central-difference step


# Tiny MLPs use no convolution kernels; pin the NumPy ones anyway (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("numpy_backend")


def make_rng(seed):
    return np.random.default_rng(seed)


def regression_task(generator, n):
    """n random points of a random sine task, x ~ U[-5, 5]: (x, y), both (n, 1) float64."""
    x = generator.uniform(-5, 5, size=(n, 1))
    amplitude, phase = sine.sample_sine_task(generator)
    return x, sine.sine_values(x, amplitude, phase)


def tiny_classifier():
    return models.Sequential([Linear(4, 6), Tanh(), Linear(6, 3)], input_shape=(4,))


def classification_task(generator, shots, classes=3):
    """classes * shots examples in 4-D with labels in shuffled order."""
    x = generator.normal(size=(classes * shots, 4))
    y = generator.permutation(np.repeat(np.arange(classes), shots))
    return x, y


def sgd_trajectory(model, theta, x, y, batches, lr, reduction="sum"):
    """phi_1 = theta, g_i = L_i'(phi_i), phi_{i+1} = phi_i - lr g_i (paper notes §7).

    Returns (phi_{k+1}, [g_1, ..., g_k]).
    """
    phi, grads = theta.copy(), []
    for batch in batches:
        _, grad = model.loss_and_grad(phi, x[batch], y[batch], reduction)
        grads.append(grad)
        phi = phi - lr * grad
    return phi, grads


def grad_at(model, phi, x, y, batch, reduction="sum"):
    return model.loss_and_grad(phi, x[batch], y[batch], reduction)[1]


def rel_error(actual, expected):
    return np.linalg.norm(actual - expected) / np.linalg.norm(expected)


# --------------------------------------------------------------------------------------
# Mini-batches (paper notes §1.4)

@pytest.mark.parametrize("num_samples, batch_size, num_batches",
                         [(50, 10, 5), (200, 20, 10)])
def test_minibatches_exact_epoch(num_samples, batch_size, num_batches):
    """Omniglot 5-way (50/10/5) and 20-way (200/20/10): exactly one epoch, every sample once."""
    for seed in range(5):
        batches = meta.minibatches(num_samples, batch_size, num_batches, make_rng(seed))
        assert len(batches) == num_batches
        assert all(len(batch) == batch_size for batch in batches)
        np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(num_samples))


def test_minibatches_straddle_two_epochs():
    """Mini-ImageNet 75/10/8: 7 batches + 5 of the 8th are one permutation; the 8th straddles."""
    duplicates_seen = 0
    for seed in range(30):
        batches = meta.minibatches(75, 10, 8, make_rng(seed))
        assert [len(batch) for batch in batches] == [10] * 8
        stream = np.concatenate(batches)
        np.testing.assert_array_equal(np.sort(stream[:75]), np.arange(75))
        # The last 5 are the start of a fresh pass: distinct among themselves...
        assert len(set(stream[75:].tolist())) == 5
        # ...but free to repeat what the first half of the 8th batch holds.
        duplicates_seen += len(set(batches[7].tolist())) < 10
    assert duplicates_seen > 0
    # Shuffle, deal, reshuffle: the stream is one permutation then the start of the next.
    generator = make_rng(3)
    first, second = generator.permutation(75), generator.permutation(75)
    np.testing.assert_array_equal(np.concatenate(meta.minibatches(75, 10, 8, make_rng(3))),
                                  np.concatenate([first, second[:5]]))


@pytest.mark.parametrize("k", [1, 2, 4])
def test_minibatches_gradient_combination_settings(k):
    """25k samples, b = 25, k batches (paper notes §4.3): k disjoint batches, one epoch."""
    batches = meta.minibatches(25 * k, 25, k, make_rng(k))
    np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(25 * k))
    # 25 samples, b = 25, k batches: every batch is a whole pass over the 25.
    for batch in meta.minibatches(25, 25, k, make_rng(k)):
        np.testing.assert_array_equal(np.sort(batch), np.arange(25))


def test_minibatches_with_replacement():
    batches = meta.minibatches(10, 5, 50, make_rng(0), replacement=True)
    assert len(batches) == 50
    for batch in batches:
        assert len(batch) == 5 and len(set(batch.tolist())) == 5
        assert batch.min() >= 0 and batch.max() < 10
    # Independent draws: batches 2j and 2j+1 overlap somewhere (without replacement
    # they would be the two disjoint halves of one pass).
    assert any(set(batches[2 * j].tolist()) & set(batches[2 * j + 1].tolist()) for j in range(25))


@pytest.mark.parametrize("replacement", [False, True])
def test_minibatches_same_seed_same_batches(replacement):
    a = meta.minibatches(75, 10, 8, make_rng(7), replacement)
    b = meta.minibatches(75, 10, 8, make_rng(7), replacement)
    c = meta.minibatches(75, 10, 8, make_rng(8), replacement)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not all(np.array_equal(u, v) for u, v in zip(a, c))


@pytest.mark.parametrize("args", [(0, 5, 1, False), (10, 0, 1, False), (10, 5, -1, False),
                                  (10, 11, 1, True)])
def test_minibatches_validates(args):
    num_samples, batch_size, num_batches, replacement = args
    with pytest.raises(ValueError):
        meta.minibatches(num_samples, batch_size, num_batches, make_rng(0), replacement)


def test_task_batches_separate_tail():
    """--foml-tail s: the last batch is the first s examples of each label; the others exclude them."""
    classes, shots, tail_shots = 3, 5, 2
    y = make_rng(0).permutation(np.repeat(np.arange(classes), shots))
    tail = []
    for label in range(classes):
        tail += [i for i in range(len(y)) if y[i] == label][:tail_shots]
    rest = sorted(set(range(len(y))) - set(tail))
    for seed in range(5):
        batches = meta.task_batches(y, 3, 4, make_rng(seed), tail_shots=tail_shots)
        assert len(batches) == 4
        assert sorted(batches[-1].tolist()) == sorted(tail)
        head = np.concatenate(batches[:-1])
        assert all(len(batch) == 3 for batch in batches[:-1])
        assert not set(head.tolist()) & set(tail)
        # 9 remaining examples, 3 batches of 3: exactly one pass over the rest.
        assert sorted(head.tolist()) == rest
    # Without a tail, the batches are minibatches' (shared tail).
    shared = meta.task_batches(y, 3, 4, make_rng(5))
    assert all(np.array_equal(u, v) for u, v in zip(shared, meta.minibatches(15, 3, 4, make_rng(5))))


# --------------------------------------------------------------------------------------
# The meta step size schedule (paper notes §1.1)

def test_meta_step_size_schedule():
    M = 8
    schedule = [meta.meta_step_size(i, M, 1.0, 0.0) for i in range(M)]
    np.testing.assert_allclose(schedule, 1 - np.arange(M) / M, rtol=0, atol=EPS64)
    assert schedule[0] == 1.0
    assert abs(schedule[-1] - 1 / M) <= EPS64  # never quite reaches 0
    assert np.all(np.diff(schedule) < 0)
    # The blog demo: 0.1 (1 - i/M); and a nonzero final value that is never reached.
    assert meta.meta_step_size(15000, 30000, 0.1, 0.0) == pytest.approx(0.05, rel=1e-15)
    assert abs(meta.meta_step_size(29999, 30000, 0.1, 0.0) - 0.1 / 30000) <= EPS64 * 0.1
    assert meta.meta_step_size(M - 1, M, 1.0, 0.5) == pytest.approx(0.5 + 0.5 / M, rel=1e-15)


# --------------------------------------------------------------------------------------
# Outer updates: interpolation, Adam state, identities with SGD (paper notes §1.1, §1.3, §7)

def _reproduce_reptile_phis(model, theta, tasks, optimizer, seed, inner_batch, inner_iters,
                            replacement=False, reset=False, reduction="sum"):
    generator, phis = make_rng(seed), []
    for x, y in tasks:
        if reset:
            optimizer.reset()
        batches = meta.minibatches(len(y), inner_batch, inner_iters, generator, replacement)
        phi = theta.copy()
        for batch in batches:
            _, grad = model.loss_and_grad(phi, x[batch], y[batch], reduction)
            optimizer.step(phi, grad)
        phis.append(phi)
    return phis


@pytest.mark.parametrize("replacement", [False, True])
def test_reptile_epsilon_one_is_mean_of_phis_and_zero_is_identity(replacement):
    model = models.sine_mlp(hidden=(8, 8))
    generator = make_rng(0)
    theta = model.init(generator, np.float64)
    theta_before = theta.copy()
    tasks = [regression_task(generator, 10) for _ in range(3)]
    adam = optim.Adam(model.num_params, lr=0.01, dtype=np.float64)
    new = meta.reptile_step(model, theta, tasks, adam, make_rng(1), 5, 4, 1.0, replacement)
    np.testing.assert_array_equal(theta, theta_before)  # theta is not modified

    phis = _reproduce_reptile_phis(model, theta, tasks,
                                   optim.Adam(model.num_params, lr=0.01, dtype=np.float64),
                                   1, 5, 4, replacement)
    mean = np.mean(phis, axis=0)
    assert min(rel_error(phi, mean) for phi in phis) > 1e-3  # the tasks really differ
    # theta + 1 * (mean - theta): two roundings at the scale of theta and mean.
    scale = max(np.abs(theta).max(), np.abs(mean).max())
    np.testing.assert_allclose(new, mean, rtol=0, atol=2 * EPS64 * scale)

    unchanged = meta.reptile_step(model, theta, tasks, adam, make_rng(1), 5, 4, 0.0, replacement)
    np.testing.assert_array_equal(unchanged, theta)


def _sine_meta_batch(num_tasks):
    """A small sine MLP, its float64 theta and ``num_tasks`` regression tasks of 10 points."""
    model = models.sine_mlp(hidden=(8, 8))
    generator = make_rng(2)
    theta = model.init(generator, np.float64)
    return model, theta, [regression_task(generator, 10) for _ in range(num_tasks)]


def test_adam_state_flows_across_tasks_and_iterations():
    """One persistent Adam state: t counts every inner step of every task (paper notes §1.1)."""
    B, k = 3, 4
    model, theta, tasks = _sine_meta_batch(B)
    adam = optim.Adam(model.num_params, lr=0.01, dtype=np.float64)
    new = meta.reptile_step(model, theta, tasks, adam, make_rng(3), 5, k, 0.5)
    assert adam.t == B * k
    persistent = optim.Adam(model.num_params, lr=0.01, dtype=np.float64)
    phis = _reproduce_reptile_phis(model, theta, tasks, persistent, 3, 5, k)
    expected = theta + 0.5 * (np.mean(phis, axis=0) - theta)
    np.testing.assert_array_equal(adam.m, persistent.m)
    np.testing.assert_array_equal(adam.v, persistent.v)
    scale = max(np.abs(theta).max(), np.abs(expected).max())
    np.testing.assert_allclose(new, expected, rtol=0, atol=4 * EPS64 * scale)
    # Resetting the state per task (the other policy) gives a different update.
    fresh = _reproduce_reptile_phis(model, theta, tasks,
                                    optim.Adam(model.num_params, lr=0.01, dtype=np.float64),
                                    3, 5, k, reset=True)
    reset_theta = theta + 0.5 * (np.mean(fresh, axis=0) - theta)
    assert rel_error(reset_theta - theta, new - theta) > 1e-3

    meta.reptile_step(model, new, tasks, adam, make_rng(4), 5, k, 0.5)
    assert adam.t == 2 * B * k
    meta.fomaml_step(model, new, tasks, adam, make_rng(5), 5, k, 0.5)
    assert adam.t == 3 * B * k
    meta.combination_step(model, new, tasks, adam, make_rng(6), 5, k, 0.5, [1.0] * k)
    assert adam.t == 4 * B * k


def test_independent_tasks_start_from_one_snapshot_and_carry_the_mean_state():
    """`independent_reptile_step` (--parallel-tasks): every task adapts from the state at
    the start of the meta-iteration, the mean of the tasks' end states is carried on, and
    with one task it is the paper's `reptile_step`, bit for bit."""
    k = 4
    model, theta, tasks = _sine_meta_batch(3)
    warm = optim.Adam(model.num_params, lr=0.01, dtype=np.float64)
    meta.reptile_step(model, theta, tasks, warm, make_rng(1), 5, k, 0.5)  # a non-fresh state
    start = warm.snapshot()

    def adam_at_start():
        adam = optim.Adam(model.num_params, lr=0.01, dtype=np.float64)
        adam.restore(start)
        return adam

    adam = adam_at_start()
    new = meta.independent_reptile_step(model, theta, tasks, adam, make_rng(3), 5, k, 0.5)
    # By hand: each task from its own copy of the start state, batches drawn task by task.
    rng, phis, ends = make_rng(3), [], []
    for x, y in tasks:
        own = adam_at_start()
        phis.append(meta.inner_loop(model, theta, x, y, meta.minibatches(len(y), 5, k, rng), own))
        ends.append(own.snapshot())
    np.testing.assert_array_equal(new, theta + 0.5 * (np.mean(phis, axis=0) - theta))
    assert adam.t == start["t"] + k
    for key in ("m", "v"):
        np.testing.assert_array_equal(getattr(adam, key), np.mean([e[key] for e in ends], axis=0))
    # The paper's chained state gives another update ...
    chained = meta.reptile_step(model, theta, tasks, adam_at_start(), make_rng(3), 5, k, 0.5)
    assert rel_error(new - theta, chained - theta) > 1e-6

    # ... except with one task: then theta and the state carried on are the same bits.
    def one_task(step):
        adam = adam_at_start()
        return step(model, theta, tasks[:1], adam, make_rng(4), 5, k, 0.5), adam.snapshot()

    (paper_theta, paper_state), (ours_theta, ours_state) = (
        one_task(meta.reptile_step), one_task(meta.independent_reptile_step))
    np.testing.assert_array_equal(ours_theta, paper_theta)
    for key in ("m", "v", "t"):
        np.testing.assert_array_equal(ours_state[key], paper_state[key])


def _classification_setup(k, B, seed):
    """Tiny classifier and B tasks of 3 classes x 2k shots: b = 6, k batches = one epoch."""
    model = tiny_classifier()
    generator = make_rng(seed)
    theta = model.init(generator, np.float64)
    tasks = [classification_task(generator, 2 * k) for _ in range(B)]
    return model, theta, tasks


def _trajectories(model, theta, tasks, seed, inner_batch, inner_iters, lr):
    """SGD trajectories of every task with the batches reptile_step would draw from make_rng(seed)."""
    generator, results = make_rng(seed), []
    for x, y in tasks:
        batches = meta.minibatches(len(y), inner_batch, inner_iters, generator)
        results.append(sgd_trajectory(model, theta, x, y, batches, lr) + (batches,))
    return results


def _rounding_bound(theta, phis, operations):
    return operations * EPS64 * max(np.abs(theta).max(), max(np.abs(phi).max() for phi in phis))


@pytest.mark.parametrize("k", [1, 2, 4])
def test_reptile_outer_delta_with_sgd_is_sum_of_inner_gradients(k):
    """θ_new − θ = −ε α mean_j Σ_i g_ij (paper notes §7), the g_i taken along each trajectory."""
    B, lr, epsilon = 3, 0.05, 0.7
    model, theta, tasks = _classification_setup(k, B, seed=k)
    new = meta.reptile_step(model, theta, tasks, optim.SGD(lr), make_rng(10), 6, k, epsilon)
    runs = _trajectories(model, theta, tasks, 10, 6, k, lr)
    for (x, y), (_, _, batches) in zip(tasks, runs):  # disjoint batches covering the task
        np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(len(y)))
    expected = -epsilon * lr * np.mean([np.sum(grads, axis=0) for _, grads, _ in runs], axis=0)
    assert np.abs(expected).max() > 1e-3
    np.testing.assert_allclose(new - theta, expected, rtol=0,
                               atol=_rounding_bound(theta, [phi for phi, _, _ in runs], k + B + 4))


@pytest.mark.parametrize("k", [1, 2, 4])
def test_fomaml_outer_delta_with_sgd_is_last_gradient(k):
    """θ_new − θ = −ε α mean_j g_kj (the last step's change, paper notes §1.3)."""
    B, lr, epsilon = 3, 0.05, 0.7
    model, theta, tasks = _classification_setup(k, B, seed=20 + k)
    new = meta.fomaml_step(model, theta, tasks, optim.SGD(lr), make_rng(11), 6, k, epsilon)
    runs = _trajectories(model, theta, tasks, 11, 6, k, lr)
    expected = -epsilon * lr * np.mean([grads[-1] for _, grads, _ in runs], axis=0)
    assert np.abs(expected).max() > 1e-3
    np.testing.assert_allclose(new - theta, expected, rtol=0,
                               atol=_rounding_bound(theta, [phi for phi, _, _ in runs], B + 6))


def test_combination_step_with_sgd_is_weighted_sum_of_inner_gradients():
    k, B, lr, epsilon = 3, 2, 0.05, 0.25
    weights = [0.5, -1.0, 2.0]
    model, theta, tasks = _classification_setup(k, B, seed=30)
    new = meta.combination_step(model, theta, tasks, optim.SGD(lr), make_rng(12), 6, k, epsilon,
                                weights)
    runs = _trajectories(model, theta, tasks, 12, 6, k, lr)
    expected = -epsilon * lr * np.mean(
        [sum(w * g for w, g in zip(weights, grads)) for _, grads, _ in runs], axis=0)
    np.testing.assert_allclose(new - theta, expected, rtol=0,
                               atol=_rounding_bound(theta, [phi for phi, _, _ in runs],
                                                    4 * (k + B + 4)))
    with pytest.raises(ValueError):
        meta.combination_step(model, theta, tasks, optim.SGD(lr), make_rng(12), 6, k, epsilon, [1, 1])


def test_reptile_k1_is_a_joint_training_sgd_step():
    """k = 1: θ_new = θ − ε α mean_j ∇L_j(θ) (paper notes §6, §7; supervised-reptile issue #20)."""
    model = models.sine_mlp(hidden=(8, 8))
    generator = make_rng(40)
    theta = model.init(generator, np.float64)
    tasks = [regression_task(generator, 30) for _ in range(4)]
    lr, epsilon = 0.02, 0.3
    new = meta.reptile_step(model, theta, tasks, optim.SGD(lr), make_rng(13), 10, 1, epsilon,
                            reduction="mean")
    draw, grads = make_rng(13), []
    for x, y in tasks:
        (batch,) = meta.minibatches(len(y), 10, 1, draw)
        grads.append(grad_at(model, theta, x, y, batch, "mean"))
    expected = theta - epsilon * lr * np.mean(grads, axis=0)
    np.testing.assert_allclose(new, expected, rtol=0, atol=8 * EPS64 * np.abs(theta).max())
    assert not np.allclose(new, theta, rtol=0, atol=1e-4)


@pytest.mark.parametrize("make_optimizer", [lambda n: optim.SGD(0.05),
                                            lambda n: optim.Adam(n, lr=0.01, dtype=np.float64)],
                         ids=["sgd", "adam"])
def test_combination_step_special_cases_are_reptile_and_fomaml(make_optimizer):
    k, B, epsilon = 3, 3, 0.6
    model, theta, tasks = _classification_setup(k, B, seed=50)
    reptile = meta.reptile_step(model, theta, tasks, make_optimizer(model.num_params), make_rng(14),
                                6, k, epsilon)
    ones = meta.combination_step(model, theta, tasks, make_optimizer(model.num_params),
                                 make_rng(14), 6, k, epsilon, [1.0] * k)
    fomaml = meta.fomaml_step(model, theta, tasks, make_optimizer(model.num_params), make_rng(15),
                              6, k, epsilon)
    last = meta.combination_step(model, theta, tasks, make_optimizer(model.num_params),
                                 make_rng(15), 6, k, epsilon, [0.0] * (k - 1) + [1.0])
    # Telescoping sums of k steps, B tasks: rounding at the scale of the parameters.
    bound = (2 * k + B + 6) * EPS64 * max(np.abs(theta).max(), np.abs(reptile).max())
    assert np.abs(reptile - theta).max() > 1e-3 and np.abs(fomaml - theta).max() > 1e-4
    np.testing.assert_allclose(ones, reptile, rtol=0, atol=bound)
    np.testing.assert_allclose(last, fomaml, rtol=0, atol=bound)


def test_fomaml_separate_tail_uses_the_tail_batch_last():
    k, lr, epsilon, tail_shots = 3, 0.05, 0.5, 2
    model = tiny_classifier()
    generator = make_rng(60)
    theta = model.init(generator, np.float64)
    x, y = classification_task(generator, 5)  # 15 examples: 6 in the tail, 2 batches of 3 from the other 9
    new = meta.fomaml_step(model, theta, [(x, y)], optim.SGD(lr), make_rng(16), 3, k, epsilon,
                           tail_shots=tail_shots)
    batches = meta.task_batches(y, 3, k, make_rng(16), tail_shots=tail_shots)
    assert len(batches[-1]) == 3 * tail_shots
    phi, grads = sgd_trajectory(model, theta, x, y, batches, lr)
    np.testing.assert_allclose(new - theta, -epsilon * lr * grads[-1], rtol=0,
                               atol=_rounding_bound(theta, [phi], 6))
    # A shared tail (same seed) is a different update.
    shared = meta.fomaml_step(model, theta, [(x, y)], optim.SGD(lr), make_rng(16), 3, k, epsilon)
    assert rel_error(shared - theta, new - theta) > 1e-3


def test_maml_step_uses_exact_meta_gradients():
    model = models.sine_mlp(hidden=(4,))
    generator = make_rng(70)
    theta = model.init(generator, np.float64)
    tasks = [regression_task(generator, 9) for _ in range(2)]
    lr, epsilon = 0.02, 0.5
    new = meta.maml_step(model, theta, tasks, make_rng(17), 3, 3, lr, epsilon)
    draw, grads = make_rng(17), []
    for x, y in tasks:
        batches = meta.minibatches(len(y), 3, 3, draw)
        grads.append(meta.maml_gradient(model, theta, x, y, batches, lr)[0])
    expected = theta - epsilon * lr * np.mean(grads, axis=0)
    np.testing.assert_allclose(new, expected, rtol=0, atol=4 * EPS64 * np.abs(theta).max())


# --------------------------------------------------------------------------------------
# Weight decay (paper notes §1.1: multiply all parameters by r before every inner step)

def test_weight_decay_multiplies_before_each_step():
    model = models.sine_mlp(hidden=(8, 8))
    generator = make_rng(80)
    theta = model.init(generator, np.float64)
    x, y = regression_task(generator, 20)
    batches = meta.minibatches(20, 5, 4, generator)
    decay, lr = 0.9, 0.02
    phi = meta.inner_loop(model, theta, x, y, batches, optim.SGD(lr), "mean", weight_decay=decay)
    manual = theta.copy()
    for batch in batches:
        manual = decay * manual
        manual = manual - lr * grad_at(model, manual, x, y, batch, "mean")
    np.testing.assert_array_equal(phi, manual)

    # Targets that the decayed parameters fit exactly: zero gradient at r*theta, so one
    # step lands exactly on r*theta (decaying after the step would not).
    fitted = model.forward(decay * theta, x)
    one = meta.inner_loop(model, theta, x, fitted, [np.arange(20)], optim.SGD(lr), "mean",
                          weight_decay=decay)
    np.testing.assert_array_equal(one, decay * theta)
    # reptile_step passes it through: epsilon = 1, one task gives that phi.
    new = meta.reptile_step(model, theta, [(x, fitted)], optim.SGD(lr), make_rng(0), 20, 1, 1.0,
                            reduction="mean", weight_decay=decay)
    np.testing.assert_allclose(new, decay * theta, rtol=0, atol=2 * EPS64 * np.abs(theta).max())
    # weight_decay = 1 is a no-op.
    plain = meta.inner_loop(model, theta, x, y, batches, optim.SGD(lr), "mean")
    np.testing.assert_array_equal(plain, sgd_trajectory(model, theta, x, y, batches, lr, "mean")[0])


# --------------------------------------------------------------------------------------
# Theory (paper notes §7): the quadratic fixture

A1 = np.array([[2.0, 0.5], [0.5, 1.0]])
B1 = np.array([0.3, -0.1])
A2 = np.array([[1.0, -0.2], [-0.2, 3.0]])
B2 = np.array([-0.5, 0.4])
PHI1 = np.array([1.0, -2.0])
ALPHA = 0.01


def test_quadratic_fixture_numbers():
    """L_i(φ) = ½ φᵀA_iφ + b_iᵀφ, k = 2: the numbers listed in paper notes §7."""
    grad1 = lambda phi: A1 @ phi + B1
    grad2 = lambda phi: A2 @ phi + B2
    gbar1, gbar2 = grad1(PHI1), grad2(PHI1)
    g1 = grad1(PHI1)
    g2 = grad2(PHI1 - ALPHA * g1)
    atol = 1e-14  # values below 10, a handful of float64 operations each
    np.testing.assert_allclose(gbar1, [1.3, -1.6], rtol=0, atol=atol)
    np.testing.assert_allclose(gbar2, [0.9, -5.8], rtol=0, atol=atol)
    np.testing.assert_allclose(g2, [0.8838, -5.7494], rtol=0, atol=atol)

    g_reptile, g_fomaml = g1 + g2, g2
    g_maml = (np.eye(2) - ALPHA * A1) @ g2
    np.testing.assert_allclose(g_reptile, [2.1838, -7.3494], rtol=0, atol=atol)
    np.testing.assert_allclose(g_fomaml, [0.8838, -5.7494], rtol=0, atol=atol)
    np.testing.assert_allclose(g_maml, [0.894871, -5.696325], rtol=0, atol=atol)

    # First-order formulas: exact for Reptile and FOMAML on quadratics.
    reptile_fo = gbar1 + gbar2 - ALPHA * A2 @ gbar1
    fomaml_fo = gbar2 - ALPHA * A2 @ gbar1
    maml_fo = gbar2 - ALPHA * A2 @ gbar1 - ALPHA * A1 @ gbar2
    np.testing.assert_allclose(reptile_fo, g_reptile, rtol=0, atol=atol)
    np.testing.assert_allclose(fomaml_fo, g_fomaml, rtol=0, atol=atol)
    np.testing.assert_allclose(maml_fo, [0.8948, -5.6959], rtol=0, atol=atol)
    residual = g_maml - maml_fo
    np.testing.assert_allclose(residual, [7.1e-5, -4.25e-4], rtol=0, atol=atol)
    np.testing.assert_allclose(residual, ALPHA ** 2 * A1 @ A2 @ gbar1, rtol=0, atol=atol)


def quadratic_as_regression(A, b):
    """Four (x, y) pairs whose summed squared error under Linear(2, 1) is ½wᵀAw + bᵀw + const.

    With rows R, −R (RᵀR = A/4) and targets z, −z (Rᵀz = −b/4): ∇_w = A w + b + 0·c and
    ∂/∂c = 8c, so the bias starts and stays at 0 and w follows the quadratic exactly.
    """
    R = np.linalg.cholesky(A / 4).T
    z = -np.linalg.solve(R.T, b) / 4
    return np.concatenate([R, -R]), np.concatenate([z, -z])[:, None]


def test_quadratic_fixture_through_the_model():
    """The same numbers from model.loss_and_grad, inner_loop, maml_gradient and the HVP."""
    model = models.Sequential([Linear(2, 1)], input_shape=(2,), loss="mse")
    x1, y1 = quadratic_as_regression(A1, B1)
    x2, y2 = quadratic_as_regression(A2, B2)
    x, y = np.concatenate([x1, x2]), np.concatenate([y1, y2])
    batches = [np.arange(4), np.arange(4, 8)]
    theta = np.array([PHI1[0], PHI1[1], 0.0])  # layout: 0.weight (1, 2), 0.bias (1,)

    np.testing.assert_allclose(grad_at(model, theta, x, y, batches[0]), [1.3, -1.6, 0.0],
                               rtol=0, atol=1e-14)
    np.testing.assert_allclose(grad_at(model, theta, x, y, batches[1]), [0.9, -5.8, 0.0],
                               rtol=0, atol=1e-14)
    phi = meta.inner_loop(model, theta, x, y, batches, optim.SGD(ALPHA))
    # (θ − φ_3)/α: rounding at the scale of θ, divided by α.
    np.testing.assert_allclose((theta - phi) / ALPHA, [2.1838, -7.3494, 0.0], rtol=0,
                               atol=8 * EPS64 * 2 / ALPHA)

    v = np.array([0.7, -1.1, 0.4])
    for x_batch, y_batch, hessian in ((x1, y1, A1), (x2, y2, A2)):
        expected = np.append(hessian @ v[:2], 8 * v[2])
        # The R-operator is exact: rounding at the gradient's scale only.
        np.testing.assert_allclose(meta.hessian_vector_product(model, theta, x_batch, y_batch, v),
                                   expected, rtol=0, atol=1e-13)
        # The central difference of an affine gradient is exact up to gradient rounding
        # (~1e-15 at these magnitudes) divided by 2r = 2e-5/|v|.
        np.testing.assert_allclose(meta.finite_difference_hvp(model, theta, x_batch, y_batch, v),
                                   expected, rtol=0,
                                   atol=1e-14 * np.linalg.norm(v) / (2 * HVP_STEP))

    g_maml, g_fomaml = meta.maml_gradient(model, theta, x, y, batches, ALPHA)
    np.testing.assert_allclose(g_fomaml, [0.8838, -5.7494, 0.0], rtol=0, atol=1e-14)
    np.testing.assert_allclose(g_maml, [0.894871, -5.696325, 0.0], rtol=0, atol=1e-13)


# --------------------------------------------------------------------------------------
# Theory (paper notes §7): second-order tools on a small non-quadratic network

def _sine_setup(hidden, n, seed):
    model = models.sine_mlp(hidden=hidden)
    generator = make_rng(seed)
    theta = model.init(generator, np.float64)
    return model, theta, regression_task(generator, n)


def test_maml_gradient_matches_finite_differences_of_the_unrolled_inner_loop():
    model, theta, (x, y) = _sine_setup((4,), 15, 90)
    batches = [np.arange(0, 5), np.arange(5, 10), np.arange(10, 15)]
    lr = 0.05

    def meta_loss(t):
        phi = t.copy()
        for batch in batches[:-1]:
            phi = phi - lr * grad_at(model, phi, x, y, batch, "mean")
        return model.loss(phi, x[batches[-1]], y[batches[-1]], "mean")

    h = 1e-5
    numeric = np.empty_like(theta)
    for i in range(len(theta)):
        step = np.zeros_like(theta)
        step[i] = h
        numeric[i] = (meta_loss(theta + step) - meta_loss(theta - step)) / (2 * h)
    g_maml, g_fomaml = meta.maml_gradient(model, theta, x, y, batches, lr, "mean")
    assert rel_error(g_maml, numeric) <= 1e-6
    # The check can tell MAML from its first-order part.
    assert rel_error(g_fomaml, numeric) > 1e-2


def _full_hessian(model, phi, x, y, reduction, h=1e-5):
    columns = []
    for j in range(len(phi)):
        step = np.zeros_like(phi)
        step[j] = h
        columns.append((model.loss_and_grad(phi + step, x, y, reduction)[1]
                        - model.loss_and_grad(phi - step, x, y, reduction)[1]) / (2 * h))
    return np.array(columns).T


@pytest.mark.parametrize("which", ["regression", "classifier"])
def test_hessian_vector_product_matches_full_finite_difference_hessian(which):
    if which == "regression":
        model, phi, (x, y) = _sine_setup((4,), 8, 100)
    else:
        model, (x, y) = tiny_classifier(), classification_task(make_rng(101), 3)
        phi = model.init(make_rng(102), np.float64)
    H = _full_hessian(model, phi, x, y, "sum")
    assert np.linalg.norm(H - H.T) <= 1e-6 * np.linalg.norm(H)
    generator = make_rng(103)
    for _ in range(3):
        v = generator.normal(size=len(phi))
        assert rel_error(meta.hessian_vector_product(model, phi, x, y, v), H @ v) <= 1e-6
    np.testing.assert_array_equal(meta.hessian_vector_product(model, phi, x, y, np.zeros_like(phi)),
                                  np.zeros_like(phi))


def test_gradient_inner_product_derivative():
    """∂(ḡ1·ḡ2)/∂φ = H̄1ḡ2 + H̄2ḡ1 (paper notes §7), against central differences."""
    model, phi, (x, y) = _sine_setup((4,), 10, 110)
    b1, b2 = np.arange(5), np.arange(5, 10)

    def inner_product(p):
        return grad_at(model, p, x, y, b1) @ grad_at(model, p, x, y, b2)

    h = 1e-5
    numeric = np.empty_like(phi)
    for i in range(len(phi)):
        step = np.zeros_like(phi)
        step[i] = h
        numeric[i] = (inner_product(phi + step) - inner_product(phi - step)) / (2 * h)
    gbar1, gbar2 = grad_at(model, phi, x, y, b1), grad_at(model, phi, x, y, b2)
    analytic = (meta.hessian_vector_product(model, phi, x[b1], y[b1], gbar2)
                + meta.hessian_vector_product(model, phi, x[b2], y[b2], gbar1))
    assert rel_error(analytic, numeric) <= 1e-6


def test_first_order_expansions_have_second_order_residuals():
    """k = 2 on a tanh MLP: |exact − first-order formula| shrinks ~4x when α halves (paper notes §7)."""
    model, theta, (x, y) = _sine_setup((8, 8), 10, 120)
    b1, b2 = np.arange(5), np.arange(5, 10)
    gbar1, gbar2 = grad_at(model, theta, x, y, b1), grad_at(model, theta, x, y, b2)
    H2g1 = meta.hessian_vector_product(model, theta, x[b2], y[b2], gbar1)
    H1g2 = meta.hessian_vector_product(model, theta, x[b1], y[b1], gbar2)

    def residuals(alpha):
        g_maml, g2 = meta.maml_gradient(model, theta, x, y, [b1, b2], alpha)
        _, (g1, g2_traj) = sgd_trajectory(model, theta, x, y, [b1, b2], alpha)
        np.testing.assert_array_equal(g2, g2_traj)
        return np.array([
            np.linalg.norm(g_maml - (gbar2 - alpha * H2g1 - alpha * H1g2)),
            np.linalg.norm(g2 - (gbar2 - alpha * H2g1)),
            np.linalg.norm(g1 + g2 - (gbar1 + gbar2 - alpha * H2g1)),
        ])

    alpha = 4e-3
    r = [residuals(alpha / 2 ** i) for i in range(3)]
    for big, small in zip(r[:-1], r[1:]):
        ratio = big / small
        assert np.all((3 < ratio) & (ratio < 5)), ratio
    # The residuals are far above the rounding of the HVPs (~alpha * 1e-10).
    assert np.all(r[-1] > 1e-7)


# --------------------------------------------------------------------------------------
# Learning: Reptile beats random init and joint training on sine tasks (paper notes §6)

def _train_sine(model, theta, inner_iters, meta_iters, seed):
    generator, sgd = make_rng(seed), optim.SGD(0.02)
    for i in range(meta_iters):
        task = sine.sine_task(generator, np.float64)
        epsilon = meta.meta_step_size(i, meta_iters, 0.1, 0.0)
        theta = meta.reptile_step(model, theta, [task], sgd, generator, 10, inner_iters, epsilon,
                                  reduction="mean")
    return theta


def _post_adaptation_mse(model, theta, num_tasks=25, seed=12345):
    """32 full-batch SGD steps on 10 of the 50 grid points, MSE on the whole grid."""
    generator, sgd, errors = make_rng(seed), optim.SGD(0.02), []
    for _ in range(num_tasks):
        x, y = sine.sine_task(generator, np.float64)
        points = generator.choice(sine.GRID_POINTS, 10, replace=False)
        phi = meta.inner_loop(model, theta, x[points], y[points], [np.arange(10)] * 32, sgd,
                              reduction="mean")
        errors.append(model.loss(phi, x, y, reduction="mean"))
    return float(np.mean(errors))


def test_reptile_learns_a_sine_initialisation():
    model = models.sine_mlp()
    theta0 = model.init(make_rng(0), np.float64)
    meta_iters = 6000
    reptile = _train_sine(model, theta0, 5, meta_iters, seed=1)
    joint = _train_sine(model, theta0, 1, meta_iters, seed=1)
    mse = {name: _post_adaptation_mse(model, theta)
           for name, theta in [("random", theta0), ("joint", joint), ("reptile", reptile)]}
    assert mse["reptile"] < 0.5 * mse["random"], mse
    assert mse["reptile"] < 0.5 * mse["joint"], mse
