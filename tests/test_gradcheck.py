"""The gradient checker itself: its definitions, that it passes, that it can fail,
and the golden files built on the same example problems."""
import json
import os
import sys

import numpy as np
import pytest

from reptile_np import golden, gradcheck, interop, models
from reptile_np.data import sine
from reptile_np.gradcheck import (ZERO_GRAD_NOTE, check_layer, check_model, format_table,
                                  numerical_gradient, rel_error, run_gradcheck)
from reptile_np.layers import BatchNorm2d, Conv2d, Flatten, Linear, ReLU, Tanh


def test_rel_error_definition():
    assert rel_error([1.0, 2.0], [1.0, 2.0]) == 0.0
    assert rel_error(np.zeros(3), np.zeros(3)) == 0.0
    assert rel_error([1.0], [1.1]) == pytest.approx(0.1 / 2.1, rel=1e-12)
    # Maxima over the tensor: a tiny entry's own relative error does not dominate.
    assert rel_error([1e-12, 1.0], [2e-12, 1.0]) == pytest.approx(1e-12 / 2.0, rel=1e-9)
    # The 1e-8 floor: two tiny tensors compare in absolute terms.
    assert rel_error([1e-12], [3e-12]) == pytest.approx(2e-12 / 1e-8, rel=1e-9)
    with pytest.raises(ValueError, match="same shape"):
        rel_error(np.zeros(2), np.zeros(3))


def test_numerical_gradient_of_a_cubic_restores_x(rng):
    x = rng.standard_normal((3, 4))
    before = x.copy()
    numerical = numerical_gradient(lambda v: np.sum(v ** 3), x)
    assert rel_error(3 * before ** 2, numerical) < 1e-9
    assert x.tobytes() == before.tobytes()  # every entry restored bit for bit
    picked = numerical_gradient(lambda v: np.sum(v ** 3), x, indices=[0, 5])
    np.testing.assert_array_equal(picked, numerical.ravel()[[0, 5]])


def test_numerical_gradient_refuses_float32():
    with pytest.raises(ValueError, match="^x must be a float64 array"):
        numerical_gradient(np.sum, np.zeros(3, dtype=np.float32))
    model = models.sine_mlp()
    theta = model.init(np.random.default_rng(0))  # float32
    with pytest.raises(ValueError, match="^theta must be a float64 array"):
        check_model(model, theta, np.zeros((2, 1)), np.zeros((2, 1)), np.random.default_rng(0))


def test_check_layer_rows(rng):
    rows = check_layer(Conv2d(2, 3, 3, stride=2, padding="same"), rng.standard_normal((2, 2, 5, 4)),
                       rng, max_entries=7)
    assert [(r.name, r.shape, r.checked) for r in rows] == [
        ("x", (2, 2, 5, 4), 7), ("weight", (3, 2, 3, 3), 7), ("bias", (3,), 3)]
    assert all(r.passed for r in rows), format_table(rows)


@pytest.mark.parametrize("name", ["omniglot", "miniimagenet", "sine"])
def test_run_gradcheck_passes(numpy_backend, name):
    rows, passed = run_gradcheck(name, seed=0)
    table = format_table(rows)
    assert passed, table
    model = models.MODELS[name]()
    assert [row.name for row in rows] == list(model.layout.names)
    for tensor in model.layout.names:
        assert tensor in table
    assert table.splitlines()[-1].startswith("passed: all")
    zero = [row.name for row in rows if row.note.startswith(ZERO_GRAD_NOTE)]
    assert zero == gradcheck.zero_gradient_tensors(model)
    assert len(zero) == (0 if name == "sine" else 4)


def _scaled_backward(cls, monkeypatch, scale_param=None, scale_dx=False):
    """Monkeypatch ``cls.backward`` to scale one parameter gradient (or dx) by 1.01."""
    original = cls.backward

    def backward(self, params, cache, dy, input_grad=True):
        dx, dparams = original(self, params, cache, dy, input_grad)
        if scale_dx and dx is not None:
            dx = dx * 1.01
        if scale_param is not None:
            dparams = tuple(d * 1.01 if i == scale_param else d for i, d in enumerate(dparams))
        return dx, dparams

    monkeypatch.setattr(cls, "backward", backward)


def test_a_one_percent_error_in_conv_weight_gradients_fails(numpy_backend, monkeypatch):
    _scaled_backward(Conv2d, monkeypatch, scale_param=0)  # dW *= 1.01
    rows, passed = run_gradcheck("omniglot", seed=0, max_entries=4)
    assert not passed
    failed = [row.name for row in rows if not row.passed]
    assert failed == ["0.weight", "3.weight", "6.weight", "9.weight"], format_table(rows)
    assert "FAIL" in format_table(rows) and "FAILED: 4 of 18" in format_table(rows)


@pytest.mark.parametrize("cls, kwargs, failed", [
    (Linear, {"scale_param": 1}, ["0.bias", "2.bias", "4.bias"]),
    (Tanh, {"scale_dx": True}, ["0.weight", "0.bias", "2.weight", "2.bias"]),
])
def test_other_one_percent_errors_fail(cls, kwargs, failed, monkeypatch):
    _scaled_backward(cls, monkeypatch, **kwargs)
    rows, passed = run_gradcheck("sine", seed=0)
    assert not passed and [row.name for row in rows if not row.passed] == failed, format_table(rows)


def _conv_bn_model():
    return models.Sequential([Conv2d(1, 2, 3, padding="same"), BatchNorm2d(2), ReLU(), Flatten(),
                              Linear(2 * 4 * 4, 3)], input_shape=(1, 4, 4))


def test_zero_gradient_tensor_check_can_fail(numpy_backend, rng, monkeypatch):
    model = _conv_bn_model()
    theta = gradcheck.example_theta(model, rng)
    x, y = rng.random((3, 1, 4, 4)), np.array([0, 1, 2])
    rows = check_model(model, theta, x, y, rng)
    assert all(row.passed for row in rows), format_table(rows)
    assert rows[1].name == "0.bias" and rows[1].note == ZERO_GRAD_NOTE

    original = Conv2d.backward
    monkeypatch.setattr(Conv2d, "backward", lambda self, params, cache, dy, input_grad=True: (
        lambda dx, dp: (dx, (dp[0], dp[1] + 1e-6)))(*original(self, params, cache, dy, input_grad)))
    rows = check_model(model, theta, x, y, rng)
    assert [row.name for row in rows if not row.passed] == ["0.bias"], format_table(rows)


def test_kinks_within_h_are_re_stepped_or_skipped(rng):
    # y = w2 * relu(w1 * x + b1) + b2 with the pre-activation of x = 1 put 3e-6
    # above the kink: a step of h = 1e-5 on b1 crosses it, h / 10 does not.
    model = models.Sequential([Linear(1, 1), ReLU(), Linear(1, 1)], input_shape=(1,), loss="mse")
    x, y = np.array([[1.0]]), np.array([[2.0]])
    theta = np.array([0.5, -0.5 + 3e-6, 1.5, 0.1])
    naive = numerical_gradient(lambda t: model.loss(t, x, y), theta.copy(), indices=[1])
    analytic = model.loss_and_grad(theta, x, y)[1][[1]]
    assert rel_error(analytic, naive) > 0.1  # a plain centred difference is wrong here
    rows = check_model(model, theta, x, y, rng)
    assert all(row.passed for row in rows), format_table(rows)
    assert "re-stepped" in rows[1].note and rows[1].checked == 1

    theta[1] = -0.5  # exactly on the kink: no derivative, the entry is left out
    rows = check_model(model, theta, x, y, rng)
    assert all(row.passed for row in rows), format_table(rows)
    assert "1 on a kink, skipped" in rows[0].note and rows[0].checked == 0


def test_the_sine_example_is_a_task_of_the_sine_data_module():
    # y = a sin(x + b) = (a cos b) sin x + (a sin b) cos x: recover (a, b) by least squares.
    model, tasks = models.sine_mlp(), []
    for seed in range(200):
        x, y = gradcheck.example_batch(model, np.random.default_rng(seed), 10)
        assert x.shape == y.shape == (10, 1) and np.all(np.abs(x) <= 5.0)
        (c, s), *_ = np.linalg.lstsq(np.hstack([np.sin(x), np.cos(x)]), y[:, 0], rcond=None)
        np.testing.assert_allclose(y[:, 0], c * np.sin(x[:, 0]) + s * np.cos(x[:, 0]), atol=1e-12)
        tasks.append((np.hypot(c, s), np.arctan2(s, c) % (2 * np.pi)))
    amplitudes, phases = np.array(tasks).T
    low, high = sine.AMPLITUDE_RANGE
    assert np.all((amplitudes >= low) & (amplitudes < high))
    # Phases fill [0, 2 pi) as the data module draws them: about half lie above pi.
    assert 0.35 < np.mean(phases > np.pi) < 0.65


# ---------------------------------------------------------------- golden files

@pytest.mark.parametrize("name", ["omniglot", "sine"])
def test_golden_file_round_trip(numpy_backend, tmp_path, name):
    path = tmp_path / f"{name}.npz"
    meta = golden.export_golden(name, path, seed=3)
    assert sorted(os.listdir(tmp_path)) == [f"{name}.npz"]  # no temporary file left behind
    data = golden.load_golden(path)
    assert data["meta"] == meta == json.loads(json.dumps(meta))
    assert meta["reduction"] == "sum" and meta["dtype"] == "float64" and meta["model"] == name
    assert meta["padding"] == "TF same: extra row/col at bottom/right"
    assert meta["batchnorm"] == "batch statistics, biased variance, eps 1e-3, no running averages"

    model = models.MODELS[name]()
    assert list(data["params"]) == list(data["grads"]) == list(model.layout.names)
    with np.load(path, allow_pickle=False) as archive:  # loads without pickle
        assert len(archive.files) == 2 * len(model.layout.names) + 4
    theta = model.load_state_dict(data["params"])
    loss, grad = model.loss_and_grad(theta, data["x"], data["y"], reduction="sum")
    assert loss == data["loss"]
    for tensor, value in model.layout.state_dict(grad).items():
        np.testing.assert_array_equal(value, data["grads"][tensor], err_msg=tensor)
    # Weights are not trivially 0 or 1 anywhere (a swapped BN weight/bias would show).
    for value in data["params"].values():
        assert not np.all(value == 0) and not np.all(value == 1)


def test_golden_file_refuses_foreign_archives(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, x=np.zeros(2))
    with pytest.raises(ValueError, match="^path .* is not a reptile-np golden file"):
        golden.load_golden(path)
    with pytest.raises(ValueError, match="^model_name"):
        golden.export_golden("resnet", tmp_path / "g.npz")


def test_interop_without_torch_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'reptile-np\[torch\]'"):
        interop.torch_module(models.sine_mlp())
