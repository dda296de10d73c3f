"""The whole-inner-loop MLP kernel (`kernels.mlp_sgd_inner_loop`) and where it is used.

The NumPy twin (`mlp_reference`) and the Numba twin (`mlp_fast`) agree on random MLPs
(widths, activations, reductions, weight decay, batches with repeated examples), and
the Numba twin's loop orders give identical bits. `models.Sequential.mlp_structure`
recognises exactly the models the kernel covers. `fused.mlp_sgd_inner_loop` runs it for
those under SGD and gets the result of `meta.inner_loop`, the per-step loop
(``model.loss_and_grad`` then ``SGD.step``), and `meta.reptile_step` given it the same
theta; it refuses other models, optimisers and batchings by name, and the algorithm's
own loop never calls the kernel. The sine demo trains with it. ``REPTILE_NP_TEST_SEED`` draws
other random MLPs.
"""
import inspect
import os

import numpy as np
import pytest

from reptile_np import fused, kernels, meta, models, optim
from reptile_np.data import sine
from reptile_np.kernels import mlp_reference
from reptile_np.layers import Linear, ReLU, Tanh

SEED = int(os.environ.get("REPTILE_NP_TEST_SEED", "0"))
TOLERANCE = {np.float64: 1e-12, np.float32: 1e-5}


@pytest.fixture
def fast():
    return pytest.importorskip("reptile_np.kernels.mlp_fast")


def assert_close(actual, expected):
    """Equal dtype and shape, max |actual - expected| <= tolerance * max |expected|."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    scale = float(np.max(np.abs(expected)))
    error = float(np.max(np.abs(actual - expected)))
    assert error <= TOLERANCE[expected.dtype.type] * scale, f"relative error {error / scale:.3g}"


def random_problem(widths, dtype, steps, batch, seed):
    """phi drawn like PyTorch's default init, a task of 2 * batch examples, and
    (steps, batch) indices into it whose first batch repeats an example."""
    rng = np.random.default_rng(seed)
    phi = np.concatenate([
        rng.uniform(-1, 1, size=fan_out * (fan_in + 1)) / np.sqrt(fan_in)
        for fan_in, fan_out in zip(widths[:-1], widths[1:])]).astype(dtype)
    x = rng.normal(size=(2 * batch, widths[0])).astype(dtype)
    y = rng.normal(size=(2 * batch, widths[-1])).astype(dtype)
    index = rng.integers(0, 2 * batch, size=(steps, batch))
    index[0, -1] = index[0, 0]
    return phi, x[index], y[index]


# Wide (>= 8) and narrow layers, batches that are odd, even, below and above the
# four-term groups of `mlp_fast._add_products`, and the sine MLP itself.
SHAPES = [  # (widths, steps, batch)
    ((1, 64, 64, 1), 5, 10),
    ((3, 9, 5, 2), 4, 7),
    ((2, 12, 1), 3, 4),
    ((5, 3, 16, 8, 4), 2, 9),
    ((1, 8, 1), 6, 1),
    ((7, 2, 13), 3, 6),
]


@pytest.mark.parametrize("widths, steps, batch", SHAPES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_numba_twin_matches_numpy_reference(fast, widths, steps, batch, dtype, activation):
    for case, (reduction, weight_decay) in enumerate([("mean", 1.0), ("sum", 1.0),
                                                      ("mean", 0.9), ("sum", 0.99)]):
        phi, x_batches, y_batches = random_problem(widths, dtype, steps, batch, SEED + case)
        expected, actual = phi.copy(), phi.copy()
        lr = 0.05 if reduction == "mean" else 0.05 / batch
        mlp_reference.mlp_sgd_inner_loop(expected, widths, activation, x_batches, y_batches,
                                         lr, reduction, weight_decay)
        fast.mlp_sgd_inner_loop(actual, widths, activation, x_batches, y_batches,
                                lr, reduction, weight_decay)
        assert np.max(np.abs(expected - phi)) > 1e-3 * np.max(np.abs(phi))  # it did learn
        assert_close(actual, expected)


def test_twins_share_one_signature(fast):
    assert (inspect.signature(fast.mlp_sgd_inner_loop)
            == inspect.signature(mlp_reference.mlp_sgd_inner_loop))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_vectorised_tanh_is_within_two_units_of_tanh(fast, dtype):
    """`_tanh_in_place`'s own exp: within 2 machine epsilons of float64 tanh everywhere
    (1.5 measured for float64, 0.25 for float32, where it equals libm's exp in the same
    identity), +-inf to +-1, NaN kept, shapes that are no multiple of a vector."""
    grid = np.linspace(-40, 40, 400_003)
    special = [0.0, -0.0, 1e-30, -1e-7, 0.34657359, 9.01, 19.1, 354.0, -354.0, 400.0,
               np.finfo(dtype).max, -np.finfo(dtype).max, np.inf, -np.inf]
    z = np.concatenate([grid, special]).astype(dtype)
    exact = np.tanh(z.astype(np.float64))
    out = z.reshape(-1, 1).copy()               # (N, 1): N is odd
    scratch = [np.full(z.size + 3, np.nan) for _ in range(2)]
    fast._tanh_in_place(out, *scratch)
    assert out.dtype == dtype
    error = np.abs(out[:, 0].astype(np.float64) - exact)
    assert error.max() <= 2 * np.finfo(dtype).eps, f"{error.max() / np.finfo(dtype).eps:.2f} eps"
    nan = np.array([[np.nan, 1.0, np.nan]], dtype=dtype)
    fast._tanh_in_place(nan, *scratch)
    assert np.isnan(nan[0, [0, 2]]).all() and nan[0, 1] == dtype(np.tanh(1.0))


@pytest.mark.parametrize("rows, terms, width", [(10, 64, 64), (7, 10, 9), (1, 3, 16), (4, 6, 8)])
def test_add_products_loop_orders_give_the_same_bits(fast, rows, terms, width):
    """The wide path (pairs of rows, the odd row alone) and the narrow path (W < 8) add
    the same four-term groups in the same order, so any split of the output agrees."""
    rng = np.random.default_rng(SEED)
    coefficients, matrix = rng.normal(size=(rows, terms)), rng.normal(size=(terms, width))
    start = rng.normal(size=(rows, width))
    whole = start.copy()
    fast._add_products(whole, coefficients, matrix)
    np.testing.assert_allclose(whole, start + coefficients @ matrix, rtol=1e-13, atol=1e-13)
    for r in range(rows):           # one row: the "odd row" path
        row = start[r:r + 1].copy()
        fast._add_products(row, coefficients[r:r + 1], matrix)
        np.testing.assert_array_equal(row, whole[r:r + 1])
    for k in range(width):          # one column: the narrow path
        column = start[:, k:k + 1].copy()
        fast._add_products(column, coefficients, np.ascontiguousarray(matrix[:, k:k + 1]))
        np.testing.assert_array_equal(column, whole[:, k:k + 1])


@pytest.mark.parametrize("module_name", ["mlp_reference", "mlp_fast"])
def test_twins_reject_bad_arguments(module_name):
    module = pytest.importorskip(f"reptile_np.kernels.{module_name}")
    phi, x_batches, y_batches = random_problem((2, 5, 1), np.float64, 2, 3, SEED)
    with pytest.raises(ValueError, match="reduction"):
        module.mlp_sgd_inner_loop(phi, (2, 5, 1), "tanh", x_batches, y_batches, 0.1, "max", 1.0)
    with pytest.raises(ValueError):
        module.mlp_sgd_inner_loop(phi, (2, 6, 1), "tanh", x_batches, y_batches, 0.1, "sum", 1.0)


# --------------------------------------------------------------------------------------
# Which models are MLPs for the kernel

def test_mlp_structure_of_the_sine_models():
    assert models.sine_mlp().mlp_structure() == ((1, 64, 64, 1), "tanh")
    assert models.sine_mlp(hidden=(8,), activation="relu").mlp_structure() == ((1, 8, 1), "relu")
    mlp = models.Sequential([Linear(3, 9), Tanh(), Linear(9, 5), Tanh(), Linear(5, 2)],
                            input_shape=(3,), loss="mse")
    assert mlp.mlp_structure() == models.MLPStructure((3, 9, 5, 2), "tanh")


@pytest.mark.parametrize("model", [
    models.omniglot_cnn(),
    models.Sequential([Linear(4, 6), Tanh(), Linear(6, 3)], input_shape=(4,)),  # cross-entropy
    models.Sequential([Linear(2, 1)], input_shape=(2,), loss="mse"),            # no hidden layer
    models.Sequential([Linear(1, 4), Tanh(), Linear(4, 4), ReLU(), Linear(4, 1)],
                      input_shape=(1,), loss="mse"),                            # mixed activations
    models.Sequential([Linear(1, 4), Tanh()], input_shape=(1,), loss="mse"),    # ends in tanh
    models.Sequential([Linear(1, 4), Linear(4, 1)], input_shape=(1,), loss="mse"),
], ids=["cnn", "cross-entropy", "linear", "mixed", "tanh-last", "no-activation"])
def test_mlp_structure_is_none_for_anything_else(model):
    assert model.mlp_structure() is None


# --------------------------------------------------------------------------------------
# fused.mlp_sgd_inner_loop against meta.inner_loop, the per-step loop

@pytest.fixture
def fused_calls(monkeypatch):
    """The calls made to `kernels.mlp_sgd_inner_loop` (which still run)."""
    calls = []
    real = kernels.mlp_sgd_inner_loop

    def recording(*args):
        calls.append(args)
        real(*args)

    monkeypatch.setattr(kernels, "mlp_sgd_inner_loop", recording)
    return calls


MLPS = {
    "sine-tanh": lambda: models.sine_mlp(hidden=(16, 8)),
    "sine-relu": lambda: models.sine_mlp(hidden=(12,), activation="relu"),
    "two-outputs": lambda: models.Sequential([Linear(3, 9), Tanh(), Linear(9, 2)],
                                             input_shape=(3,), loss="mse"),
}


@pytest.mark.parametrize("name", MLPS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction, weight_decay", [("mean", 1.0), ("sum", 1.0), ("mean", 0.9)])
def test_fused_inner_loop_equals_the_per_step_loop(backend, fused_calls, name, dtype, reduction,
                                                   weight_decay):
    model = MLPS[name]()
    rng = np.random.default_rng(SEED)
    theta = model.init(rng, dtype)
    theta_before = theta.copy()
    x = rng.normal(size=(20,) + model.input_shape).astype(dtype)
    y = rng.normal(size=(20,) + model.output_shape).astype(dtype)
    batches = meta.minibatches(20, 6, 7, rng)   # 7 steps over 3 passes: batches straddle them
    lr = 0.05 if reduction == "mean" else 0.01
    expected = meta.inner_loop(model, theta, x, y, batches, optim.SGD(lr), reduction, weight_decay)
    assert fused_calls == []   # the algorithm's loop never takes a fast path by itself
    actual = fused.mlp_sgd_inner_loop(model, theta, x, y, batches, optim.SGD(lr), reduction,
                                      weight_decay)
    assert len(fused_calls) == 1
    np.testing.assert_array_equal(theta, theta_before)
    assert np.max(np.abs(expected - theta)) > 1e-3 * np.max(np.abs(theta))
    assert_close(actual, expected)


@pytest.mark.parametrize("meta_batch", [1, 3])
def test_reptile_step_on_the_sine_model_gives_the_per_step_theta(backend, fused_calls, meta_batch):
    model = models.sine_mlp()
    rng = np.random.default_rng(SEED)
    theta = model.init(rng, np.float64)
    tasks = [sine.sine_task(rng, np.float64) for _ in range(meta_batch)]
    new = meta.reptile_step(model, theta, tasks, optim.SGD(0.02), np.random.default_rng(1),
                            inner_batch=10, inner_iters=5, epsilon=0.1, reduction="mean",
                            inner_loop=fused.mlp_sgd_inner_loop)
    batch_rng = np.random.default_rng(1)
    phis = [meta.inner_loop(model, theta, x, y, meta.minibatches(len(y), 10, 5, batch_rng),
                            optim.SGD(0.02), "mean", 1.0) for x, y in tasks]
    expected = theta + 0.1 * (np.mean(phis, axis=0) - theta)
    assert len(fused_calls) == meta_batch
    if backend == "numpy":
        # The NumPy twin does the per-step loop's arithmetic in its order: the same bits,
        # which also holds reptile_step's shortcut for the mean of one phi to exactness.
        np.testing.assert_array_equal(new, expected)
    else:
        assert_close(new, expected)


def _cnn_case(rng):
    model = models.omniglot_cnn(num_classes=3)
    x = rng.random((6, 1, 28, 28), dtype=np.float32)
    return model, x, np.arange(6) % 3, optim.SGD(0.01)


def _adam_case(rng):
    model = models.sine_mlp(hidden=(8, 8))
    x = rng.uniform(-5, 5, size=(12, 1)).astype(np.float32)
    return model, x, np.sin(x), optim.Adam(model.num_params, lr=0.01)


def _cross_entropy_case(rng):
    model = models.Sequential([Linear(4, 6), Tanh(), Linear(6, 3)], input_shape=(4,))
    x = rng.normal(size=(12, 4)).astype(np.float32)
    return model, x, np.arange(12) % 3, optim.SGD(0.1)


@pytest.mark.parametrize("make_case, argument", [(_cnn_case, "model"), (_adam_case, "optimizer"),
                                                (_cross_entropy_case, "model")],
                         ids=["cnn", "adam", "cross-entropy"])
def test_the_fused_loop_refuses_what_it_does_not_cover(backend, fused_calls, make_case, argument):
    rng = np.random.default_rng(SEED)
    model, x, y, optimizer = make_case(rng)
    theta = model.init(rng, np.float32)
    batches = meta.minibatches(len(y), 3, 2, rng)
    with pytest.raises(ValueError, match=f"^{argument}: expected .*use meta.inner_loop"):
        fused.mlp_sgd_inner_loop(model, theta, x, y, batches, optimizer, "sum", 0.99)
    assert fused_calls == []


def test_the_fused_loop_checks_its_inputs(backend, fused_calls):
    model = models.sine_mlp(hidden=(8,))
    rng = np.random.default_rng(SEED)
    theta = model.init(rng, np.float64)
    x = rng.uniform(-5, 5, size=(10, 1))
    loop = fused.mlp_sgd_inner_loop
    with pytest.raises(ValueError, match="^batches: expected non-empty integer index arrays of one"):
        loop(model, theta, x, np.sin(x), [np.arange(4), np.arange(4, 10)], optim.SGD(0.1))
    with pytest.raises(ValueError, match=r"^batches: expected indices in \[0, 10\), got values from 0 to 10"):
        loop(model, theta, x, np.sin(x), [np.array([0, 10])], optim.SGD(0.1))
    for dtype in (np.int8, np.int32, np.int64):     # negative indices, each integer width
        with pytest.raises(ValueError, match=r"^batches: expected indices in \[0, 10\), got values from -1 to 3"):
            loop(model, theta, x, np.sin(x), [np.array([3, -1], dtype=dtype)], optim.SGD(0.1))
    with pytest.raises(ValueError, match="y must have shape"):
        loop(model, theta, x, np.sin(x)[:, 0], meta.minibatches(10, 5, 2, rng), optim.SGD(0.1))
    assert fused_calls == []
    with pytest.raises(ValueError, match="reduction"):   # refused by the kernel itself
        loop(model, theta, x, np.sin(x), meta.minibatches(10, 5, 2, rng), optim.SGD(0.1),
             reduction="max")
    np.testing.assert_array_equal(loop(model, theta, x, np.sin(x), [], optim.SGD(0.1)), theta)
    np.testing.assert_array_equal(      # unsigned indices are accepted as they are
        loop(model, theta, x, np.sin(x), [np.array([9, 0], dtype=np.uint8)], optim.SGD(0.1)),
        loop(model, theta, x, np.sin(x), [np.array([9, 0])], optim.SGD(0.1)))


def test_the_sine_demo_trains_with_the_fused_loop(backend, fused_calls):
    from reptile_np import sine_demo
    sine_demo.train_sine("reptile", meta_iters=3, inner_iters=2, inner_batch=10, lr=0.02,
                         meta_step=0.1, meta_step_final=0.0, seed=0)
    assert len(fused_calls) == 3


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_reptile_step_of_one_task_interpolates_toward_its_phi_exactly(backend, dtype):
    """Serial Reptile skips np.mean for its one phi: the same bits as taking the mean."""
    model = models.sine_mlp(hidden=(8, 8))
    rng = np.random.default_rng(SEED)
    theta = model.init(rng, dtype)
    x, y = sine.sine_task(rng, dtype)
    new = meta.reptile_step(model, theta, [(x, y)], optim.SGD(0.02), np.random.default_rng(2),
                            inner_batch=10, inner_iters=5, epsilon=0.1, reduction="mean")
    batches = meta.minibatches(len(y), 10, 5, np.random.default_rng(2))
    phi = meta.inner_loop(model, theta, x, y, batches, optim.SGD(0.02), "mean")
    np.testing.assert_array_equal(new, theta + dtype(0.1) * (np.mean([phi], axis=0) - theta))
