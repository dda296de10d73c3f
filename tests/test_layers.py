"""Layers and losses: finite-difference checks, fixed values, and the conventions
(TF "same" padding, max-pool ties, batch-statistics BatchNorm) pinned by hand."""
import numpy as np
import pytest

from reptile_np import losses
from reptile_np.gradcheck import (LAYER_THRESHOLD, check_layer, format_table,
                                  numerical_gradient, rel_error)
from reptile_np.layers import (BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU, Tanh,
                               same_padding)


def assert_layer_gradients(layer, x, rng, params=None):
    rows = check_layer(layer, x, rng, params=params)
    assert [row.name for row in rows] == ["x"] + list(layer.param_shapes)
    assert all(row.passed for row in rows), f"{layer!r}\n{format_table(rows)}"
    assert max(row.threshold for row in rows) == LAYER_THRESHOLD


def distinct_values(rng, shape):
    """A random permutation of 0..n-1, scaled: no ties, every gap 1/n >> h."""
    n = int(np.prod(shape))
    return rng.permutation(n).reshape(shape) / n


# ---------------------------------------------------------------- gradient checks

def test_linear_gradients(rng):
    assert_layer_gradients(Linear(4, 3), rng.standard_normal((5, 4)), rng)


CONV_CASES = [  # in, out, kernel, stride, padding, (H, W)
    (2, 3, 3, 1, 0, (5, 5)),
    (2, 3, 3, 1, 1, (4, 6)),
    (1, 2, 3, 2, 2, (7, 6)),
    (2, 2, 3, 1, (0, 1, 2, 0), (5, 4)),
    (2, 3, 3, 2, (1, 0, 0, 2), (6, 5)),
    (2, 3, 3, 2, "same", (6, 6)),   # even input: pads (0, 1)
    (2, 3, 3, 2, "same", (7, 5)),   # odd input: pads (1, 1)
    (3, 2, 3, 1, "same", (5, 6)),
    (2, 2, 2, 2, "same", (5, 4)),
    (2, 2, 1, 2, 0, (5, 5)),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=[str(c) for c in CONV_CASES])
def test_conv2d_gradients(backend, rng, case):
    c_in, c_out, k, stride, padding, (h, w) = case
    layer = Conv2d(c_in, c_out, k, stride=stride, padding=padding)
    assert_layer_gradients(layer, rng.standard_normal((2, c_in, h, w)), rng)


def test_batchnorm_gradients(rng):
    x = 2.0 * rng.standard_normal((4, 3, 3, 2)) + 1.0
    assert_layer_gradients(BatchNorm2d(3), x, rng)


def test_relu_gradients_away_from_zero(rng):
    shape = (3, 2, 4, 4)
    x = rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.1, 1.0, size=shape)
    assert_layer_gradients(ReLU(), x, rng)


def test_tanh_gradients(rng):
    assert_layer_gradients(Tanh(), rng.standard_normal((3, 5)), rng)


@pytest.mark.parametrize("padding, size, stride, hw", [
    ("valid", 2, 2, (6, 6)), ("valid", 2, 2, (7, 5)), ("same", 2, 2, (5, 5)),
    ("same", 2, 2, (7, 6)), ("same", 3, 2, (6, 7)), ("valid", 3, 1, (5, 5))])
def test_maxpool_gradients_without_ties(backend, rng, padding, size, stride, hw):
    x = distinct_values(rng, (2, 3) + hw)
    assert_layer_gradients(MaxPool2d(size, stride, padding), x, rng)


def test_flatten_gradients(rng):
    assert_layer_gradients(Flatten(), rng.standard_normal((2, 3, 2, 2)), rng)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_cross_entropy_gradient(rng, reduction):
    logits, labels = rng.standard_normal((6, 4)), rng.integers(0, 4, size=6)
    _, analytic = losses.softmax_cross_entropy(logits, labels, reduction)
    numerical = numerical_gradient(
        lambda z: losses.softmax_cross_entropy(z, labels, reduction)[0], logits)
    assert rel_error(analytic, numerical) <= LAYER_THRESHOLD


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_mse_gradient(rng, reduction):
    pred, target = rng.standard_normal((6, 1)), rng.standard_normal((6, 1))
    _, analytic = losses.mean_squared_error(pred, target, reduction)
    numerical = numerical_gradient(
        lambda p: losses.mean_squared_error(p, target, reduction)[0], pred)
    assert rel_error(analytic, numerical) <= LAYER_THRESHOLD


def test_loss_reductions_differ_by_batch_size(rng):
    logits, labels = rng.standard_normal((6, 4)), rng.integers(0, 4, size=6)
    total, dsum = losses.softmax_cross_entropy(logits, labels, "sum")
    mean, dmean = losses.softmax_cross_entropy(logits, labels, "mean")
    np.testing.assert_allclose([total / 6, *(dsum / 6).ravel()], [mean, *dmean.ravel()],
                               rtol=1e-15, atol=0)
    with pytest.raises(ValueError, match="^reduction"):
        losses.softmax_cross_entropy(logits, labels, "none")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_is_stable_for_huge_logits(dtype):
    logits = np.array([[1e4, 0.0, -1e4], [-1e4, 1e4, 0.0]], dtype=dtype)
    loss, dlogits = losses.softmax_cross_entropy(logits, np.array([0, 2]))
    # Example 0 is certain and right (loss 0); example 1 puts all mass on class 1,
    # so its loss is logsumexp - z[2] = 1e4 - 0, and its gradient softmax - onehot.
    assert loss == pytest.approx(1e4, rel=1e-7)
    np.testing.assert_array_equal(dlogits, [[0, 0, 0], [0, 1, -1]])
    assert dlogits.dtype == dtype and np.all(np.isfinite(dlogits))


# ---------------------------------------------------------------- fixed values

def test_linear_fixed_values():
    x = np.array([[1.0, 2.0, 3.0]])
    w, b = np.array([[1.0, 0.0, -1.0], [2.0, 1.0, 0.0]]), np.array([0.5, -1.0])
    y, cache = Linear(3, 2).forward((w, b), x)
    np.testing.assert_array_equal(y, [[1 - 3 + 0.5, 2 + 2 - 1]])
    dx, (dw, db) = Linear(3, 2).backward((w, b), cache, np.array([[1.0, 10.0]]))
    np.testing.assert_array_equal(dx, [[21.0, 10.0, -1.0]])
    np.testing.assert_array_equal(dw, [[1, 2, 3], [10, 20, 30]])
    np.testing.assert_array_equal(db, [1.0, 10.0])


def tf_same_conv():
    """3x3 stride-2 "same" conv of a 4x4 ramp with three marked taps.

    x = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]], and TF pads
    it with one zero row at the bottom and one zero column at the right (5x5).
    w has w[0,0] = 1, w[1,2] = 100, w[2,2] = 10, so
    y[p, q] = xpad[2p, 2q] + 100 xpad[2p+1, 2q+2] + 10 xpad[2p+2, 2q+2] + 0.5.
    """
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    w = np.zeros((1, 1, 3, 3))
    w[0, 0, 0, 0], w[0, 0, 1, 2], w[0, 0, 2, 2] = 1.0, 100.0, 10.0
    return Conv2d(1, 1, 3, stride=2, padding="same"), x, (w, np.array([0.5]))


def test_conv_tf_same_fixed_values_pad_bottom_right(backend):
    layer, x, params = tf_same_conv()
    assert layer.pad(4, 4) == (0, 1, 0, 1)
    y, _ = layer.forward(params, x)
    expected = [[0 + 100 * 6 + 10 * 10 + 0.5, 2 + 100 * 0 + 10 * 0 + 0.5],
                [8 + 100 * 14 + 10 * 0 + 0.5, 10 + 100 * 0 + 10 * 0 + 0.5]]
    np.testing.assert_array_equal(y[0, 0], expected)
    # PyTorch's symmetric padding=1 gives the same shape but a shifted window:
    # its y[0, 0] is 100 * x[0, 1] + 10 * x[1, 1] + 0.5, not 700.5.
    y_sym, _ = Conv2d(1, 1, 3, stride=2, padding=1).forward(params, x)
    assert y_sym.shape == y.shape and y_sym[0, 0, 0, 0] == 100 * 1 + 10 * 5 + 0.5


def test_conv_tf_same_fixed_gradients(backend):
    layer, x, params = tf_same_conv()
    _, cache = layer.forward(params, x)
    dx, (dw, db) = layer.backward(params, cache, np.ones((1, 1, 2, 2)))
    # Each tap (i, j) sends w[i, j] to input cells (2p+i, 2q+j); cells in the pad are dropped.
    np.testing.assert_array_equal(dx[0, 0], [[1, 0, 1, 0],
                                             [0, 0, 100, 0],
                                             [1, 0, 1 + 10, 0],
                                             [0, 0, 100, 0]])
    # dw[i, j] = sum_{p,q} xpad[2p+i, 2q+j]
    assert dw[0, 0, 0, 0] == 0 + 2 + 8 + 10
    assert dw[0, 0, 1, 1] == 5 + 7 + 13 + 15
    assert dw[0, 0, 2, 2] == 10  # xpad[2, 2]; the other three cells are padding
    assert dw[0, 0, 1, 2] == 6 + 14  # xpad[1, 2] + xpad[3, 2]; (1, 4), (3, 4) are padding
    np.testing.assert_array_equal(db, [4.0])


def test_maxpool_same_fixed_values_on_odd_input(backend):
    # Negative values: a zero-padded pool would return 0 for the edge windows.
    x = -np.array([[5.0, 1.0, 7.0], [2.0, 0.0, 3.0], [8.0, 6.0, 4.0]]).reshape(1, 1, 3, 3)
    layer = MaxPool2d(2, 2, padding="same")
    assert layer.pad(3, 3) == (0, 1, 0, 1)
    y, cache = layer.forward((), x)
    np.testing.assert_array_equal(y[0, 0], [[0.0, -3.0], [-6.0, -4.0]])
    dx, _ = layer.backward((), cache, np.array([[[[1.0, 2.0], [3.0, 4.0]]]]))
    np.testing.assert_array_equal(dx[0, 0], [[0, 0, 0], [0, 1, 2], [0, 3, 4]])


def test_batchnorm_fixed_values():
    # Channel 0 holds 1, 2, 3, 4: mean 2.5, biased variance (2.25+0.25+0.25+2.25)/4 = 1.25.
    # Channel 1 holds 10, 10, 10, 14: mean 11, biased variance (1+1+1+9)/4 = 3.
    x = np.array([[[[1.0, 2.0]], [[10.0, 10.0]]], [[[3.0, 4.0]], [[10.0, 14.0]]]])  # (2, 2, 1, 2)
    gamma, beta = np.array([2.0, -1.0]), np.array([0.5, 3.0])
    y, _ = BatchNorm2d(2, eps=1e-3).forward((gamma, beta), x)
    channel0 = 2.0 * np.array([-1.5, -0.5, 0.5, 1.5]) / np.sqrt(1.25 + 1e-3) + 0.5
    channel1 = -1.0 * np.array([-1.0, -1.0, -1.0, 3.0]) / np.sqrt(3.0 + 1e-3) + 3.0
    np.testing.assert_allclose(y[:, 0].ravel(), channel0, rtol=1e-15)
    np.testing.assert_allclose(y[:, 1].ravel(), channel1, rtol=1e-15)


# ---------------------------------------------------------------- conventions

def test_maxpool_ties_go_to_first_maximum_in_row_major_order(backend):
    layer = MaxPool2d(2, 2)
    dy = np.array([[[[7.0]]]])
    for window, winner in [([[1.0, 1.0], [1.0, 1.0]], (0, 0)), ([[1.0, 3.0], [3.0, 2.0]], (0, 1)),
                           ([[0.0, 1.0], [2.0, 2.0]], (1, 0))]:
        y, cache = layer.forward((), np.array(window).reshape(1, 1, 2, 2))
        dx, _ = layer.backward((), cache, dy)
        expected = np.zeros((2, 2))
        expected[winner] = 7.0
        np.testing.assert_array_equal(dx[0, 0], expected, err_msg=f"window {window}")
        assert y[0, 0, 0, 0] == np.max(window)


@pytest.mark.parametrize("size, expected", [(28, (0, 1)), (14, (0, 1)), (7, (1, 1)), (4, (0, 1))])
def test_tf_same_padding_of_the_omniglot_convolutions(size, expected):
    # paper notes §2: 3x3 stride 2, 28 -> 14 -> 7 -> 4 -> 2, extra cell at the bottom/right.
    assert same_padding(size, 3, 2) == expected
    layer = Conv2d(1, 1, 3, stride=2, padding="same")
    assert layer.pad(size, size) == expected + expected
    assert layer.output_shape((1, size, size)) == (1, -(-size // 2), -(-size // 2))


@pytest.mark.parametrize("size, expected", [(84, (0, 0)), (42, (0, 0)), (21, (0, 1)), (11, (0, 1))])
def test_tf_same_padding_of_the_miniimagenet_pools(size, expected):
    assert MaxPool2d(2, 2, "same").pad(size, size) == expected + expected
    assert same_padding(size, 3, 1) == (1, 1)  # the stride-1 convs pad symmetrically


def test_batchnorm_uses_batch_statistics(rng):
    layer, params = BatchNorm2d(2), (np.ones(2), np.zeros(2))
    x = rng.standard_normal((3, 2, 2, 2))
    other = x.copy()
    other[1:] = 5.0 + rng.standard_normal((2, 2, 2, 2))
    y, _ = layer.forward(params, x)
    y_other, _ = layer.forward(params, other)
    # Same first example, different companions: different output for it.
    assert not np.allclose(y[0], y_other[0])
    # And every channel of every batch is normalised to mean 0, biased variance ~1.
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    var = x.var(axis=(0, 2, 3))
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), var / (var + 1e-3), rtol=1e-12)
