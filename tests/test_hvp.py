"""Exact Hessian-vector products (Pearlmutter's R-operator) and second-order MAML.

Three independent references: central differences of the layers' own forward and
backward passes (layer by layer, then whole models), PyTorch's double backward
(``torch.autograd.grad(..., create_graph=True)``) through whole MAML inner loops, and
the finite-difference HVP's refusal to difference across a ReLU or max-pool switch.
Everything is float64.
"""
import numpy as np
import pytest

from reptile_np import meta, models
from reptile_np.gradcheck import rel_error
from reptile_np.layers import BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU, Tanh

H = 1e-5
# A central difference of step H is off by O(H^2) ~ 1e-10 (times third derivatives)
# plus rounding of ~1e-16 / H ~ 1e-11; measured errors are 1e-12..2e-10.
FD_THRESHOLD = 1e-8
# Ours against PyTorch: two exact computations summing in different orders.
TORCH_THRESHOLD = 1e-10


def make_rng(seed):
    return np.random.default_rng(seed)


def norm_error(a, b):
    """|a - b| / |b|, norm-wise."""
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# --------------------------------------------------------------------------------------
# Layer by layer: forward_r and backward_r against central differences of forward/backward

def distinct_values(rng, shape):
    """A random permutation of 0..n-1 over n, shifted to straddle 0: no ties, gaps 1/n >> H,
    and no value within 1/(2n) of 0 (ReLU's switch)."""
    n = int(np.prod(shape))
    return (rng.permutation(n).reshape(shape) + 0.5 - n / 2) / n


LAYER_CASES = [  # layer, input shape (N, ...)
    (Linear(4, 3), (5, 4)),
    (Conv2d(2, 3, 3, stride=1, padding=1), (2, 2, 5, 4)),
    (Conv2d(2, 3, 3, stride=2, padding="same"), (2, 2, 6, 6)),   # TF "same" pads (0, 1)
    (Conv2d(3, 2, 3, stride=1, padding="same"), (2, 3, 5, 6)),
    (BatchNorm2d(3), (4, 3, 3, 2)),
    (ReLU(), (3, 2, 4, 4)),
    (Tanh(), (4, 5)),
    (MaxPool2d(2, 2), (2, 2, 4, 6)),
    (MaxPool2d(2, 2, padding="same"), (2, 3, 5, 5)),             # a padded last row/column
    (Flatten(), (2, 3, 2, 2)),
]


def _layer_point(layer, shape, rng):
    """Parameters, input and a direction (in parameters and input) for one layer."""
    params = tuple(rng.standard_normal(s) for s in layer.param_shapes.values())
    if isinstance(layer, BatchNorm2d):
        x = 2.0 * rng.standard_normal(shape) + 1.0
    else:
        x = distinct_values(rng, shape)   # away from ReLU's 0 and from max-pool ties
    r_params = tuple(rng.standard_normal(p.shape) for p in params)
    return params, x, r_params, rng.standard_normal(shape)


def _moved(params, r_params, x, r_x, t):
    return tuple(p + t * r for p, r in zip(params, r_params)), x + t * r_x


@pytest.mark.parametrize("with_r_x", [True, False], ids=["R{x}", "R{x}=0"])
@pytest.mark.parametrize("case", LAYER_CASES, ids=[repr(c[0]) for c in LAYER_CASES])
def test_layer_r_operators_match_central_differences(backend, case, with_r_x):
    """R{y}, R{dx} and R{dparams} are the t-derivatives at 0 of forward and backward at
    (params + t R{params}, x + t R{x}, dy + t R{dy})."""
    layer, shape = case
    rng = make_rng(LAYER_CASES.index(case))
    params, x, r_params, r_x = _layer_point(layer, shape, rng)
    if not with_r_x:
        r_x = np.zeros_like(x)
    y, r_y, cache = layer.forward_r(params, r_params, x, r_x if with_r_x else None)
    dy, r_dy = rng.standard_normal(y.shape), rng.standard_normal(y.shape)
    dx, r_dx, dparams, r_dparams = layer.backward_r(params, r_params, cache, dy, r_dy)

    def passes(t):
        p, xt = _moved(params, r_params, x, r_x, t)
        yt, cache_t = layer.forward(p, xt)
        dxt, dpt = layer.backward(p, cache_t, dy + t * r_dy)
        return yt, dxt, dpt, layer.switch_pattern(cache_t)

    (y_plus, dx_plus, dp_plus, pattern_plus), (y_minus, dx_minus, dp_minus, pattern_minus) = (
        passes(H), passes(-H))
    # The differences stay on one piece of ReLU / max-pool (else: pick another seed).
    if layer.switch_pattern(cache) is not None:
        np.testing.assert_array_equal(pattern_plus, layer.switch_pattern(cache))
        np.testing.assert_array_equal(pattern_minus, layer.switch_pattern(cache))
    # The ordinary passes inside forward_r / backward_r are the layer's own.
    y0, cache0 = layer.forward(params, x)
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_array_equal(dx, layer.backward(params, cache0, dy)[0])

    if with_r_x or layer.param_shapes:
        assert rel_error(r_y, (y_plus - y_minus) / (2 * H)) <= FD_THRESHOLD
    else:
        assert r_y is None   # a parameter-free layer of a zero direction: R{y} = 0
    assert rel_error(r_dx, (dx_plus - dx_minus) / (2 * H)) <= FD_THRESHOLD
    assert len(r_dparams) == len(params)
    for r_dp, plus, minus in zip(r_dparams, dp_plus, dp_minus):
        assert rel_error(r_dp, (plus - minus) / (2 * H)) <= FD_THRESHOLD


@pytest.mark.parametrize("layer", [Linear(4, 3), Conv2d(2, 3, 3, stride=2, padding="same")],
                         ids=repr)
def test_first_layer_r_operator_skips_the_input_gradient(backend, layer):
    """A model's first layer: input_grad=False gives no dx, no R{dx}, the same R{dparams}."""
    shape = (3, 4) if isinstance(layer, Linear) else (2, 2, 6, 6)
    rng = make_rng(5)
    params, x, r_params, _ = _layer_point(layer, shape, rng)
    y, _, cache = layer.forward_r(params, r_params, x, None)
    dy, r_dy = rng.standard_normal(y.shape), rng.standard_normal(y.shape)
    full = layer.backward_r(params, r_params, cache, dy, r_dy)
    dx, r_dx, dparams, r_dparams = layer.backward_r(params, r_params, cache, dy, r_dy,
                                                    input_grad=False)
    assert dx is None and r_dx is None
    for ours, reference in zip(dparams + r_dparams, full[2] + full[3]):
        np.testing.assert_allclose(ours, reference, rtol=1e-14, atol=0)


# --------------------------------------------------------------------------------------
# Whole models and every loss: the exact HVP against central differences of the gradient

def small_cnn():
    """Every conv-net layer type in 4,000 parameters: conv -> BN -> max-pool -> ReLU ->
    conv -> BN -> ReLU -> flatten -> linear, on (2, 8, 8) inputs."""
    layers = [Conv2d(2, 4, 3, stride=1, padding="same"), BatchNorm2d(4),
              MaxPool2d(2, 2, padding="same"), ReLU(),
              Conv2d(4, 4, 3, stride=2, padding="same"), BatchNorm2d(4), ReLU(),
              Flatten(), Linear(16, 3)]
    return models.Sequential(layers, input_shape=(2, 8, 8))


MODEL_CASES = [  # name, reduction
    ("sine", "mean"), ("sine", "sum"), ("sine_relu", "mean"),
    ("small_cnn", "sum"), ("small_cnn", "mean"),
]


def _model_and_batch(name, rng, n=4):
    if name == "small_cnn":
        model = small_cnn()
        return model, rng.standard_normal((n, 2, 8, 8)), rng.integers(0, 3, n)
    model = models.sine_mlp(hidden=(8, 8), activation="relu" if name == "sine_relu" else "tanh")
    return model, rng.uniform(-5, 5, (n, 1)), rng.standard_normal((n, 1))


@pytest.mark.parametrize("name, reduction", MODEL_CASES)
def test_model_hvp_matches_central_differences(backend, name, reduction):
    rng = make_rng(20)
    model, x, y = _model_and_batch(name, rng)
    theta = model.init(rng, np.float64)
    for _ in range(2):
        v = rng.standard_normal(model.num_params)
        hvp = meta.hessian_vector_product(model, theta, x, y, v, reduction)
        # finite_difference_hvp refuses to cross a switch, so this runs on one piece.
        numeric = meta.finite_difference_hvp(model, theta, x, y, v, reduction, step=H)
        assert norm_error(hvp, numeric) <= FD_THRESHOLD
    # Symmetry, u.Hv = v.Hu, holds for the exact Hessian to rounding.
    u = rng.standard_normal(model.num_params)
    uhv, vhu = u @ hvp, v @ model.hessian_vector_product(theta, x, y, u, reduction)
    assert abs(uhv - vhu) <= 1e-14 * (np.linalg.norm(u) * np.linalg.norm(hvp))


def test_model_hvp_checks_its_vector():
    model = models.sine_mlp(hidden=(4,))
    theta = model.init(make_rng(0), np.float64)
    x, y = np.zeros((2, 1)), np.zeros((2, 1))
    with pytest.raises(ValueError, match=r"vector must be a 1-D array of 13 parameters"):
        model.hessian_vector_product(theta, x, y, np.zeros(12))


# --------------------------------------------------------------------------------------
# MAML meta-gradients against PyTorch's double backward

def torch_maml_gradient(model, theta, x, y, batches, lr, reduction):
    """`meta.maml_gradient`'s g_maml by PyTorch autograd: the inner SGD steps keep their
    graph (create_graph=True), so the meta-loss's gradient flows through every gradient."""
    torch = pytest.importorskip("torch")
    from reptile_np.interop import torch_twin
    module = torch_twin(model, theta)
    spans = list(zip(model.layout.names, model.layout.offsets, model.layout.offsets[1:],
                     model.layout.shapes))
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)

    def loss(flat, batch):
        params = {name: flat[start:stop].view(shape) for name, start, stop, shape in spans}
        out = torch.func.functional_call(module, params, (inputs[batch],))
        if model.loss_name == "cross_entropy":
            return torch.nn.functional.cross_entropy(out, targets[batch], reduction=reduction)
        return torch.nn.functional.mse_loss(out, targets[batch], reduction=reduction)

    start = torch.tensor(theta, requires_grad=True)
    phi = start
    for batch in batches[:-1]:
        grad, = torch.autograd.grad(loss(phi, batch), phi, create_graph=True)
        phi = phi - lr * grad
    meta_grad, = torch.autograd.grad(loss(phi, batches[-1]), start)
    return meta_grad.numpy()


MAML_CASES = [  # network, inner steps, batch size, inner lr, reduction
    ("sine", 1, 4, 0.02, "mean"),
    ("sine", 3, 4, 0.02, "mean"),
    ("sine", 5, 4, 0.01, "sum"),
    ("omniglot", 1, 4, 0.1, "mean"),
    ("omniglot", 3, 4, 0.02, "sum"),
    ("omniglot", 5, 4, 0.1, "mean"),
    ("miniimagenet", 1, 2, 0.1, "mean"),
    ("miniimagenet", 2, 1, 0.01, "sum"),
]


@pytest.mark.parametrize("network, steps, batch, lr, reduction", MAML_CASES)
def test_maml_gradient_matches_torch_double_backward(backend, network, steps, batch, lr,
                                                     reduction):
    pytest.importorskip("torch")
    rng = make_rng(30 + steps)
    model = models.MODELS[network]()
    theta = model.init(rng, np.float64)
    n = batch * (steps + 1)
    if network == "sine":
        x, y = rng.uniform(-5, 5, (n, 1)), rng.standard_normal((n, 1))
    else:
        x, y = rng.standard_normal((n,) + model.input_shape), rng.integers(0, 5, n)
    batches = list(np.arange(n).reshape(steps + 1, batch))
    g_maml, g_fomaml = meta.maml_gradient(model, theta, x, y, batches, lr, reduction)
    theirs = torch_maml_gradient(model, theta, x, y, batches, lr, reduction)
    assert norm_error(g_maml, theirs) <= TORCH_THRESHOLD
    # The comparison can tell second-order MAML from its first-order part.
    assert norm_error(g_fomaml, theirs) > 1e3 * TORCH_THRESHOLD


# --------------------------------------------------------------------------------------
# The finite-difference HVP refuses to difference across a switch

def test_finite_difference_hvp_refuses_to_cross_a_relu_switch():
    """One hidden ReLU unit whose input is 1e-9 at x = 1: a step along its bias of
    r = 1e-6 flips it on one side of the difference (the quotient would then be 1e2-1e3
    times the true Hessian entry)."""
    model = models.Sequential([Linear(1, 2), ReLU(), Linear(2, 1)], input_shape=(1,), loss="mse")
    # layout: 0.weight (2, 1), 0.bias (2,), 2.weight (1, 2), 2.bias (1,)
    theta = np.array([1.0, 0.5, -1.0 + 1e-9, 0.3, 0.7, -0.4, 0.1])
    x, y = np.array([[1.0], [2.0]]), np.array([[0.2], [-0.3]])
    v = np.zeros(7)
    v[2] = 1.0   # the first unit's bias
    with pytest.raises(ValueError, match=r"step 1e-06 makes the finite-difference HVP cross a "
                                         r"switch of layer 1 \(ReLU\): 1 of its 4 switches"):
        meta.finite_difference_hvp(model, theta, x, y, v, step=1e-6)
    # A step too small to reach the switch differences fine, and agrees with the exact HVP
    # (the ReLU net is piecewise quadratic in the bias: the quotient is exact to rounding).
    exact = meta.hessian_vector_product(model, theta, x, y, v)
    assert norm_error(meta.finite_difference_hvp(model, theta, x, y, v, step=1e-10),
                      exact) <= 1e-5


def test_finite_difference_hvp_refuses_to_cross_a_max_pool_switch():
    """A 1x1 conv puts w0 in one cell of a 2x2 window and w1 = w0 + 1e-9 in the next;
    a step of 1e-6 along w0 makes that cell win on the plus side."""
    model = models.Sequential([Conv2d(2, 1, 1), MaxPool2d(2, 2), Flatten(), Linear(1, 1)],
                              input_shape=(2, 2, 2), loss="mse")
    theta = np.array([1.0, 1.0 + 1e-9, 0.0, 0.5, 0.1])   # conv w0, w1, conv bias, linear w, b
    x = np.zeros((1, 2, 2, 2))
    x[0, 0, 0, 0] = x[0, 1, 0, 1] = 1.0                  # cell (0, 0) = w0, cell (0, 1) = w1
    y = np.array([[1.0]])
    v = np.array([1.0, 0.0, 0.0, 0.0, 0.0])
    assert model.switch_pattern(theta, x)[1].ravel().tolist() == [1]   # w1's cell wins
    with pytest.raises(ValueError, match=r"step 1e-06 makes the finite-difference HVP cross a "
                                         r"switch of layer 1 \(MaxPool2d\): 1 of its 1 switches"):
        meta.finite_difference_hvp(model, theta, x, y, v, step=1e-6)
    # A step that stays below the gap is accepted: w0 does not win, so H v = 0 both ways.
    np.testing.assert_array_equal(meta.finite_difference_hvp(model, theta, x, y, v, step=1e-10),
                                  np.zeros(5))
    np.testing.assert_array_equal(meta.hessian_vector_product(model, theta, x, y, v), np.zeros(5))


def test_finite_difference_hvp_is_silent_and_right_on_the_smooth_sine_mlp():
    model = models.sine_mlp()
    rng = make_rng(40)
    theta = model.init(rng, np.float64)
    x, y = rng.uniform(-5, 5, (10, 1)), rng.standard_normal((10, 1))
    assert model.switch_pattern(theta, x) == {}
    v = rng.standard_normal(model.num_params)
    for step in (1e-5, 1e-2):   # tanh has no switches: even a large step is accepted
        numeric = meta.finite_difference_hvp(model, theta, x, y, v, "mean", step=step)
        assert np.all(np.isfinite(numeric))
    assert norm_error(meta.finite_difference_hvp(model, theta, x, y, v, "mean"),
                      meta.hessian_vector_product(model, theta, x, y, v, "mean")) <= FD_THRESHOLD


def test_switch_pattern_lists_the_relu_and_max_pool_layers():
    model = models.miniimagenet_cnn()
    rng = make_rng(41)
    theta = model.init(rng, np.float64)
    patterns = model.switch_pattern(theta, rng.standard_normal((1, 3, 84, 84)))
    assert sorted(patterns) == [2, 3, 6, 7, 10, 11, 14, 15]
    assert patterns[2].shape == (1, 32, 42, 42) and patterns[2].dtype == np.int8
    assert patterns[3].shape == (1, 32, 42, 42) and patterns[3].dtype == bool
