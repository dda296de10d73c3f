"""Inner optimisers: SGD and TF1-form Adam (paper notes §1.2), their state and its policies (§1.1)."""
import math

import numpy as np
import pytest

from reptile_np import optim

P0 = (0.5, -1.0, 2.0)
G1 = (0.1, -0.2, 0.3)
G2 = (-0.05, 0.4, 0.0)  # a zero entry: its update comes from m and v alone


def adam_by_hand(params, grads, lr, beta1, beta2, eps):
    """TF1's Adam written out one scalar at a time, step by step (paper notes §1.2).

    t = 1, 2, ...:  lr_t = lr * sqrt(1 - beta2^t) / (1 - beta1^t)
                    m <- beta1 m + (1 - beta1) g;  v <- beta2 v + (1 - beta2) g^2
                    p <- p - lr_t * m / (sqrt(v) + eps)
    Returns the parameters after each step.
    """
    p, m, v = list(params), [0.0] * len(params), [0.0] * len(params)
    history = []
    for t, g in enumerate(grads, start=1):
        lr_t = lr * math.sqrt(1.0 - beta2 ** t) / (1.0 - beta1 ** t)
        for i in range(len(p)):
            m[i] = beta1 * m[i] + (1.0 - beta1) * g[i]
            v[i] = beta2 * v[i] + (1.0 - beta2) * g[i] * g[i]
            p[i] = p[i] - lr_t * m[i] / (math.sqrt(v[i]) + eps)
        history.append(np.array(p))
    return history


def test_adam_beta1_zero_matches_hand_arithmetic():
    lr, b2, eps = 0.01, 0.999, 1e-8
    # Step 1 (t = 1): m = g1, v = 0.001 g1^2, lr_t = lr * sqrt(0.001) / (1 - 0^1) = lr * sqrt(0.001).
    lr_1 = lr * math.sqrt(1 - b2)
    v1 = [(1 - b2) * g * g for g in G1]
    p1 = [p - lr_1 * g / (math.sqrt(v) + eps) for p, g, v in zip(P0, G1, v1)]
    # Step 2 (t = 2): m = g2 (beta1 = 0 forgets g1), v = 0.999 v1 + 0.001 g2^2, lr_t = lr * sqrt(1 - 0.999^2).
    lr_2 = lr * math.sqrt(1 - b2 * b2)
    v2 = [b2 * v + (1 - b2) * g * g for v, g in zip(v1, G2)]
    p2 = [p - lr_2 * g / (math.sqrt(v) + eps) for p, g, v in zip(p1, G2, v2)]
    # The zero-gradient entry does not move at step 2 when beta1 = 0.
    assert p2[2] == p1[2]
    # At step 1 every entry moves by almost exactly lr * sign(g) (eps is tiny next to sqrt(v)).
    np.testing.assert_allclose(np.subtract(P0, p1), lr * np.sign(G1), rtol=1e-5)

    adam = optim.Adam(3, lr=lr, beta1=0.0, beta2=b2, eps=eps, dtype=np.float64)
    params = np.array(P0)
    adam.step(params, np.array(G1))
    np.testing.assert_allclose(params, p1, rtol=1e-15, atol=0)
    np.testing.assert_allclose(adam.m, G1, rtol=1e-15, atol=0)
    np.testing.assert_allclose(adam.v, v1, rtol=1e-15, atol=0)
    adam.step(params, np.array(G2))
    np.testing.assert_allclose(params, p2, rtol=1e-15, atol=0)
    np.testing.assert_allclose(adam.m, G2, rtol=1e-15, atol=0)
    np.testing.assert_allclose(adam.v, v2, rtol=1e-15, atol=0)
    assert adam.t == 2
    np.testing.assert_allclose(params, adam_by_hand(P0, [G1, G2], lr, 0.0, b2, eps)[-1],
                               rtol=1e-15, atol=0)


def test_adam_beta1_nonzero_matches_hand_arithmetic():
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    # Step 1: m = 0.1 g1, v = 0.001 g1^2, lr_t = lr * sqrt(1 - 0.999) / (1 - 0.9).
    lr_1 = lr * math.sqrt(1 - b2) / (1 - b1)
    m1 = [(1 - b1) * g for g in G1]
    v1 = [(1 - b2) * g * g for g in G1]
    p1 = [p - lr_1 * m / (math.sqrt(v) + eps) for p, m, v in zip(P0, m1, v1)]
    # Step 2: m = 0.9 m1 + 0.1 g2, v = 0.999 v1 + 0.001 g2^2, lr_t = lr * sqrt(1 - 0.999^2) / (1 - 0.9^2).
    lr_2 = lr * math.sqrt(1 - b2 * b2) / (1 - b1 * b1)
    m2 = [b1 * m + (1 - b1) * g for m, g in zip(m1, G2)]
    v2 = [b2 * v + (1 - b2) * g * g for v, g in zip(v1, G2)]
    p2 = [p - lr_2 * m / (math.sqrt(v) + eps) for p, m, v in zip(p1, m2, v2)]
    # With momentum the zero-gradient entry keeps moving at step 2.
    assert p2[2] < p1[2]

    adam = optim.Adam(3, lr=lr, beta1=b1, beta2=b2, eps=eps, dtype=np.float64)
    params = np.array(P0)
    adam.step(params, np.array(G1))
    np.testing.assert_allclose(params, p1, rtol=1e-15, atol=0)
    adam.step(params, np.array(G2))
    np.testing.assert_allclose(params, p2, rtol=1e-15, atol=0)
    np.testing.assert_allclose(adam.m, m2, rtol=1e-15, atol=0)
    np.testing.assert_allclose(adam.v, v2, rtol=1e-15, atol=0)
    np.testing.assert_allclose(params, adam_by_hand(P0, [G1, G2], lr, b1, b2, eps)[-1],
                               rtol=1e-15, atol=0)


def test_adam_defaults_are_the_papers():
    adam = optim.Adam(4)
    assert (adam.lr, adam.beta1, adam.beta2, adam.eps) == (1e-3, 0.0, 0.999, 1e-8)
    assert adam.t == 0 and not adam.m.any() and not adam.v.any()


def test_adam_updates_in_place_and_keeps_float32():
    adam = optim.Adam(3, lr=0.01)
    params = np.array(P0, dtype=np.float32)
    same = params
    adam.step(params, np.array(G1, dtype=np.float32))
    assert same is params and params.dtype == np.float32
    np.testing.assert_allclose(params, adam_by_hand(P0, [G1], 0.01, 0.0, 0.999, 1e-8)[0], rtol=1e-6)


def _torch_adam_run(torch, grads, lr, betas, eps, eps_per_step=None):
    p = torch.tensor(P0, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([p], lr=lr, betas=betas, eps=eps, foreach=False)
    history = []
    for t, g in enumerate(grads, start=1):
        if eps_per_step is not None:
            opt.param_groups[0]["eps"] = eps_per_step(t)
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        history.append(p.detach().numpy().copy())
    return history


def _our_adam_run(grads, lr, beta1, beta2, eps):
    adam = optim.Adam(3, lr=lr, beta1=beta1, beta2=beta2, eps=eps, dtype=np.float64)
    params, history = np.array(P0), []
    for g in grads:
        adam.step(params, np.array(g))
        history.append(params.copy())
    return history


@pytest.mark.parametrize("beta1", [0.0, 0.9])
def test_adam_differs_from_pytorch_only_in_where_eps_goes(beta1):
    """TF adds eps to the uncorrected sqrt(v); PyTorch to the bias-corrected one.

    TF's step equals PyTorch's with eps_torch = eps / sqrt(1 - beta2^t), so:
    different for small gradients at early steps, equal with eps = 0, and equal with
    PyTorch's eps rescaled at every step.
    """
    torch = pytest.importorskip("torch")
    lr, b2, eps = 0.01, 0.999, 1e-8
    small = [[1e-7 * g for g in G1], [1e-7 * g for g in G2]]
    ours = _our_adam_run(small, lr, beta1, b2, eps)
    theirs = _torch_adam_run(torch, small, lr, (beta1, b2), eps)
    # At step 1, |g| ~ 1e-8: TF's denominator sqrt(0.001)|g| + eps is eps-dominated, PyTorch's is not.
    step_ours = np.subtract(P0, ours[0])
    step_theirs = np.subtract(P0, theirs[0])
    assert np.all(np.abs(step_ours) < 0.5 * np.abs(step_theirs))

    np.testing.assert_allclose(_our_adam_run(small, lr, beta1, b2, 0.0),
                               _torch_adam_run(torch, small, lr, (beta1, b2), 0.0),
                               rtol=1e-15, atol=0)
    np.testing.assert_allclose(ours, _torch_adam_run(torch, small, lr, (beta1, b2), eps,
                                                     lambda t: eps / math.sqrt(1 - b2 ** t)),
                               rtol=1e-15, atol=0)


def test_adam_state_carries_across_steps():
    lr = 0.01
    adam = optim.Adam(3, lr=lr, dtype=np.float64)
    params = np.array(P0)
    adam.step(params, np.array(G1))
    assert adam.t == 1
    v_after_1 = adam.v.copy()
    adam.step(params, np.array(G2))
    assert adam.t == 2
    np.testing.assert_array_equal(adam.v, 0.999 * v_after_1 + (1 - 0.999) * np.square(G2))
    # A fresh optimiser at step 2 would have taken a different step (state matters).
    fresh, params_fresh = optim.Adam(3, lr=lr, dtype=np.float64), np.array(P0)
    fresh.step(params_fresh, np.array(G1))
    fresh.reset()
    fresh.step(params_fresh, np.array(G2))
    assert not np.allclose(params_fresh, params, rtol=1e-6, atol=0)


def test_adam_snapshot_restore_round_trip():
    rng = np.random.default_rng(0)
    grads = rng.normal(size=(6, 3))
    adam = optim.Adam(3, lr=0.01, beta1=0.9, dtype=np.float64)
    params = np.array(P0)
    for g in grads[:3]:
        adam.step(params, g)
    saved = adam.snapshot()
    saved_params = params.copy()
    assert int(saved["t"]) == 3
    for g in grads[3:]:
        adam.step(params, g)
    after = params.copy(), adam.m.copy(), adam.v.copy(), adam.t
    # The snapshot is a copy: later steps did not change it.
    assert int(saved["t"]) == 3 and not np.array_equal(saved["v"], adam.v)

    adam.restore(saved)
    assert adam.t == 3
    params = saved_params.copy()
    for g in grads[3:]:
        adam.step(params, g)
    np.testing.assert_array_equal(params, after[0])
    np.testing.assert_array_equal(adam.m, after[1])
    np.testing.assert_array_equal(adam.v, after[2])
    assert adam.t == after[3]
    # restore copies: stepping after a restore leaves the snapshot as it was.
    assert int(saved["t"]) == 3 and not np.array_equal(saved["v"], adam.v)


def test_adam_reset_zeroes_state():
    adam = optim.Adam(3, lr=0.01, dtype=np.float64)
    params = np.array(P0)
    adam.step(params, np.array(G1))
    adam.step(params, np.array(G2))
    adam.reset()
    assert adam.t == 0
    np.testing.assert_array_equal(adam.m, np.zeros(3))
    np.testing.assert_array_equal(adam.v, np.zeros(3))
    # After a reset the next step is a first step again.
    params = np.array(P0)
    adam.step(params, np.array(G1))
    np.testing.assert_array_equal(params, _our_adam_run([G1], 0.01, 0.0, 0.999, 1e-8)[0])


@pytest.mark.parametrize("bad", [{"m": np.zeros(2)}, {"v": np.zeros(4)}, {"m": np.zeros((3, 1))}])
def test_adam_restore_validates_shapes(bad):
    adam = optim.Adam(3, dtype=np.float64)
    state = adam.snapshot()
    state.update(bad)
    with pytest.raises(ValueError):
        adam.restore(state)


@pytest.mark.parametrize("kwargs", [{"lr": 0.0}, {"lr": -1e-3}, {"lr": float("nan")},
                                    {"beta1": 1.0}, {"beta1": -0.1}, {"beta2": 1.0}])
def test_adam_validates_hyperparameters(kwargs):
    with pytest.raises(ValueError):
        optim.Adam(3, **kwargs)


def test_sgd_step_is_exact():
    sgd = optim.SGD(0.25)
    params = np.array([0.5, -1.0, 2.0])
    same = params
    sgd.step(params, np.array([1.0, -2.0, 0.5]))
    assert same is params
    np.testing.assert_array_equal(params, [0.25, -0.5, 1.875])  # dyadic: exact in binary
    rng = np.random.default_rng(1)
    p, g = rng.normal(size=7), rng.normal(size=7)
    expected = p - 0.003 * g
    sgd = optim.SGD(0.003)
    sgd.step(p, g)
    np.testing.assert_array_equal(p, expected)
    p32, g32 = p.astype(np.float32), g.astype(np.float32)
    expected32 = p32 - np.float32(0.003) * g32
    sgd.step(p32, g32)
    assert p32.dtype == np.float32
    np.testing.assert_array_equal(p32, expected32)


def test_sgd_has_no_state():
    sgd = optim.SGD(0.1)
    assert sgd.snapshot() == {}
    sgd.restore({})
    sgd.reset()
    a, b = np.ones(2), np.ones(2)
    sgd.step(a, np.ones(2))
    sgd.step(a, np.ones(2))
    optim.SGD(0.1).step(b, np.ones(2))
    optim.SGD(0.1).step(b, np.ones(2))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("lr", [0.0, -0.1, float("nan")])
def test_sgd_validates_lr(lr):
    with pytest.raises(ValueError):
        optim.SGD(lr)


def test_mean_state_averages_the_moments_of_snapshots_of_one_step_count():
    states = [{"m": np.array([1.0, 2.0]), "v": np.array([4.0, 0.0]), "t": np.int64(3)},
              {"m": np.array([3.0, 2.0]), "v": np.array([0.0, 2.0]), "t": np.int64(3)}]
    mean = optim.mean_state(states)
    np.testing.assert_array_equal(mean["m"], [2.0, 2.0])
    np.testing.assert_array_equal(mean["v"], [2.0, 1.0])
    assert mean["t"] == 3
    assert optim.mean_state([{}, {}]) == {}  # SGD's
    with pytest.raises(ValueError, match=r"states: expected snapshots of one step count, got \[3, 4\]"):
        optim.mean_state([states[0], {**states[1], "t": np.int64(4)}])
    with pytest.raises(ValueError, match="states: expected one or more snapshots with the same"):
        optim.mean_state([states[0], {}])
