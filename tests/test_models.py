"""The paper's networks: sizes, names, dtypes, initialisation, gradients, bad input."""
import numpy as np
import pytest

from reptile_np import models
from reptile_np.gradcheck import (MODEL_THRESHOLD, check_model, example_batch, example_theta,
                                  format_table)
from reptile_np.layers import BatchNorm2d, Conv2d, Linear

OMNIGLOT_NAMES = [f"{i}.{p}" for block in range(4) for i in (3 * block, 3 * block + 1)
                  for p in ("weight", "bias")] + ["13.weight", "13.bias"]
MINI_NAMES = [f"{i}.{p}" for block in range(4) for i in (4 * block, 4 * block + 1)
              for p in ("weight", "bias")] + ["17.weight", "17.bias"]
SINE_NAMES = ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]


@pytest.mark.parametrize("build, expected", [
    (lambda: models.omniglot_cnn(5), 113_221), (lambda: models.omniglot_cnn(20), 117_076),
    (lambda: models.miniimagenet_cnn(5), 34_661), (models.sine_mlp, 4_353)])
def test_parameter_counts(build, expected):
    model = build()
    assert model.num_params == expected
    assert model.init(np.random.default_rng(0)).shape == (expected,)


@pytest.mark.parametrize("name, sizes, features", [
    ("omniglot", [28, 14, 7, 4, 2], 64 * 2 * 2), ("miniimagenet", [84, 42, 21, 11, 6], 32 * 6 * 6)])
def test_spatial_sizes_follow_the_paper(name, sizes, features):
    model = models.MODELS[name]()
    shape, seen = model.input_shape, []
    for layer in model.layers[:-2]:  # up to the Flatten
        if isinstance(layer, Conv2d):
            seen.append(shape[1:])
        shape = layer.output_shape(shape)
    assert seen + [shape[1:]] == [(s, s) for s in sizes]
    assert model.layers[-1].in_features == features


@pytest.mark.parametrize("name, n, expected", [("omniglot", 3, (3, 5)), ("miniimagenet", 1, (1, 5)),
                                               ("sine", 4, (4, 1))])
def test_output_shapes(numpy_backend, name, n, expected):
    model = models.MODELS[name]()
    theta = model.init(np.random.default_rng(0))
    x = np.random.default_rng(1).random((n,) + model.input_shape)
    assert model.output_shape == expected[1:]
    assert model.forward(theta, x).shape == expected
    if name != "sine":
        assert model.predict(theta, x).shape == (n,)


@pytest.mark.parametrize("name, names", [("omniglot", OMNIGLOT_NAMES), ("miniimagenet", MINI_NAMES),
                                         ("sine", SINE_NAMES)])
def test_state_dict_names_in_module_order(name, names):
    model = models.MODELS[name]()
    assert list(model.layout.names) == names
    state = model.state_dict(model.init(np.random.default_rng(0)))
    assert list(state) == names
    for key, array in state.items():
        index, param = key.split(".")
        assert array.shape == model.layers[int(index)].param_shapes[param]


@pytest.mark.parametrize("name", ["omniglot", "miniimagenet", "sine"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_state_dict_round_trip_is_bit_identical(name, dtype):
    model = models.MODELS[name]()
    theta = example_theta(model, np.random.default_rng(0), dtype)
    state = model.state_dict(theta)
    back = model.load_state_dict(state)
    assert back.dtype == dtype and np.array_equal(back, theta)
    assert back.tobytes() == theta.tobytes()
    # The dict holds copies: editing it leaves theta alone.
    next(iter(state.values()))[...] = 123.0
    assert np.array_equal(model.load_state_dict(model.state_dict(theta)), theta)


GRADCHECK_CASES = [  # model, seed, reduction, entries per tensor
    (lambda: models.omniglot_cnn(20), "omniglot", 1, "mean", 8),
    (models.miniimagenet_cnn, "miniimagenet", 1, "mean", 4),
    (lambda: models.sine_mlp(activation="relu"), "sine", 1, "sum", 40),
    (models.sine_mlp, "sine", 2, "mean", None),
]


@pytest.mark.parametrize("build, name, seed, reduction, entries", GRADCHECK_CASES,
                         ids=["omniglot20-mean", "miniimagenet-mean", "sine-relu-sum",
                              "sine-tanh-mean-full"])
def test_model_gradients_match_finite_differences(backend, build, name, seed, reduction, entries):
    # run_gradcheck (tests/test_gradcheck.py) covers the default networks with sum
    # reduction; these cover 20 classes, mean reduction and the ReLU sine MLP.
    rng = np.random.default_rng(seed)
    model = build()
    theta = example_theta(model, rng)
    x, y = example_batch(model, rng, {"omniglot": 4, "miniimagenet": 2, "sine": 10}[name])
    if name == "omniglot":
        y = np.array([0, 7, 19, 3])
    rows = check_model(model, theta, x, y, rng, max_entries=entries, reduction=reduction)
    assert [row.name for row in rows] == list(model.layout.names)
    assert all(row.passed for row in rows), format_table(rows)
    assert all(row.threshold == MODEL_THRESHOLD for row in rows if not row.note.startswith("zero"))


@pytest.mark.parametrize("name", ["omniglot", "miniimagenet", "sine"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_follows_theta(numpy_backend, name, dtype):
    model = models.MODELS[name]()
    rng = np.random.default_rng(0)
    theta = model.init(rng, dtype)
    other = np.float64 if dtype == np.float32 else np.float32
    x, y = example_batch(model, rng, 2, dtype=other)
    loss, grad = model.loss_and_grad(theta, x, y)
    assert grad.dtype == dtype and np.asarray(loss).dtype == dtype
    assert model.forward(theta, x).dtype == dtype
    assert np.all(np.isfinite(grad))


def test_init_statistics_of_the_cnns():
    model = models.omniglot_cnn(5)
    state = model.state_dict(model.init(np.random.default_rng(0)))
    for index, layer in enumerate(model.layers):
        weight, bias = state.get(f"{index}.weight"), state.get(f"{index}.bias")
        if isinstance(layer, (Conv2d, Linear)):
            if isinstance(layer, Conv2d):
                fan_in, fan_out = 9 * layer.in_channels, 9 * layer.out_channels
            else:
                fan_in, fan_out = layer.in_features, layer.out_features
            limit = np.sqrt(6.0 / (fan_in + fan_out))  # Glorot uniform, TF1's default
            assert np.abs(weight).max() <= limit
            assert np.abs(weight).max() > 0.95 * limit
            # U(-a, a) has standard deviation a / sqrt(3); 576+ draws pin it to a few percent.
            assert weight.std() == pytest.approx(limit / np.sqrt(3), rel=0.1)
            assert abs(weight.mean()) < 0.1 * limit
            np.testing.assert_array_equal(bias, 0)
        elif isinstance(layer, BatchNorm2d):
            np.testing.assert_array_equal(weight, 1)
            np.testing.assert_array_equal(bias, 0)
    assert model.init(np.random.default_rng(0)).dtype == np.float32
    np.testing.assert_array_equal(model.init(np.random.default_rng(3)),
                                  model.init(np.random.default_rng(3)))


def test_init_statistics_of_the_sine_mlp():
    model = models.sine_mlp()
    state = model.state_dict(model.init(np.random.default_rng(0)))
    for index, fan_in in [(0, 1), (2, 64), (4, 64)]:
        bound = 1 / np.sqrt(fan_in)  # PyTorch's default for Linear weight and bias
        for tensor in (state[f"{index}.weight"], state[f"{index}.bias"]):
            assert np.abs(tensor).max() <= bound
            assert np.any(tensor != 0)
    assert np.abs(state["2.weight"]).max() > 0.95 / 8


# ---------------------------------------------------------------- bad input

@pytest.fixture(scope="module")
def omniglot():
    model = models.omniglot_cnn(5)
    theta = model.init(np.random.default_rng(0), np.float64)
    return model, theta, np.zeros((2, 1, 28, 28)), np.array([0, 4])


@pytest.mark.parametrize("x_shape", [(2, 28, 28), (2, 1, 28, 27), (0, 1, 28, 28)])
def test_wrong_x_shape_names_x(omniglot, x_shape):
    model, theta, _, y = omniglot
    with pytest.raises(ValueError, match=r"^x must have shape \(N, 1, 28, 28\)"):
        model.loss_and_grad(theta, np.zeros(x_shape), y)


def test_wrong_channel_count_names_x(omniglot):
    model, theta, _, y = omniglot
    with pytest.raises(ValueError, match="^x must"):
        model.forward(theta, np.zeros((2, 3, 28, 28)))
    with pytest.raises(ValueError, match="^x must"):
        model.loss_and_grad(theta, np.zeros((2, 3, 28, 28)), y)


@pytest.mark.parametrize("labels", [[0, 5], [-1, 0]])
def test_labels_out_of_range_name_y(omniglot, labels):
    model, theta, x, _ = omniglot
    with pytest.raises(ValueError, match=r"^y must hold labels in \[0, 5\)"):
        model.loss_and_grad(theta, x, np.array(labels))


@pytest.mark.parametrize("labels", [np.array([0.0, 1.0]), np.array([0, 1, 2]),
                                    np.array(["a", "b"])])
def test_non_integer_or_misshapen_labels_name_y(omniglot, labels):
    model, theta, x, _ = omniglot
    with pytest.raises(ValueError, match="^y must be 2 integer labels"):
        model.loss_and_grad(theta, x, labels)


def test_wrong_regression_target_shape_names_y():
    model = models.sine_mlp()
    theta = model.init(np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"^y must have shape \(3, 1\)"):
        model.loss_and_grad(theta, np.zeros((3, 1)), np.zeros(3))


@pytest.mark.parametrize("theta", [np.zeros(113_220), np.zeros((113_221, 1)), [0.0] * 113_221,
                                   np.zeros(113_221, dtype=np.int64)])
def test_bad_theta_names_theta(omniglot, theta):
    model, _, x, y = omniglot
    with pytest.raises(ValueError, match="^theta must"):
        model.loss_and_grad(theta, x, y)


def test_bad_state_dicts_name_state_dict(omniglot):
    model, theta, _, _ = omniglot
    state = model.state_dict(theta)
    missing = {k: v for k, v in state.items() if k != "4.bias"}
    extra = dict(state, **{"4.running_mean": np.zeros(64)})
    misshapen = dict(state, **{"13.weight": np.zeros((256, 5))})
    with pytest.raises(ValueError, match=r"^state_dict must have exactly.*missing \['4.bias'\]"):
        model.load_state_dict(missing)
    with pytest.raises(ValueError,
                       match=r"^state_dict must have exactly.*unexpected \['4.running_mean'\]"):
        model.load_state_dict(extra)
    with pytest.raises(ValueError, match=r"^state_dict\['13.weight'\] must have shape \(5, 256\)"):
        model.load_state_dict(misshapen)


def test_predictions_depend_on_batch_composition(numpy_backend):
    # Batch-statistics BatchNorm: what the paper calls transduction.
    model = models.omniglot_cnn(5)
    rng = np.random.default_rng(0)
    theta = model.init(rng, np.float64)
    x = rng.random((4, 1, 28, 28))
    alone = model.forward(theta, x[:2])
    together = model.forward(theta, x)
    assert not np.allclose(alone[:2], together[:2])


def test_the_first_layer_skips_its_input_gradient(backend, monkeypatch):
    """The gradient with respect to the input batch is never computed: the first
    convolution's backward pass runs with ``input_grad=False`` and returns no dx,
    and its parameter gradients are those of the full backward pass."""
    from reptile_np import kernels
    model = models.omniglot_cnn(5)
    rng = np.random.default_rng(0)
    theta = model.init(rng, dtype=np.float64)
    x, y = rng.random((4, 1, 28, 28)), np.arange(4)
    calls = []
    original = kernels.conv2d_backward
    monkeypatch.setattr(kernels, "conv2d_backward", lambda dy, *args: calls.append(
        (dy.shape, args[-1])) or original(dy, *args))
    model.loss_and_grad(theta, x, y)
    assert calls == [((4, 64, 2, 2), True), ((4, 64, 4, 4), True), ((4, 64, 7, 7), True),
                     ((4, 64, 14, 14), False)]

    first = model.layers[0]
    params = model.layer_params(theta)[0]
    out, cache = first.forward(params, x)
    dy = rng.standard_normal(out.shape)
    dx, dparams = first.backward(params, cache, dy, input_grad=False)
    full_dx, full_dparams = first.backward(params, cache, dy)
    assert dx is None and full_dx.shape == x.shape
    for skipped, full in zip(dparams, full_dparams):
        np.testing.assert_array_equal(skipped, full)
