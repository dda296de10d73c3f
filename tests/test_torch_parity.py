"""Our layers and networks against PyTorch autograd, in float64 (needs torch).

Each comparison prints a "mine vs torch" line for every quantity that disagrees.
"""
import numpy as np
import pytest

from reptile_np import golden, models
from reptile_np.gradcheck import example_batch, example_theta, rel_error, zero_gradient_tensors
from reptile_np.interop import (PARITY_THRESHOLD, compare_gradients, compare_with_torch, report,
                                to_torch_state_dict, torch_loss_and_grad, torch_module, torch_twin)
from reptile_np.layers import Conv2d, MaxPool2d

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def deterministic_torch():
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(previous)


def mine_vs_torch(label, mine, theirs, threshold=PARITY_THRESHOLD):
    """None if the arrays agree, else a one-line "mine vs torch" diff."""
    mine, theirs = np.asarray(mine), np.asarray(theirs)
    if mine.shape != theirs.shape:
        return f"{label}: mine shape {mine.shape} vs torch shape {theirs.shape}"
    error = rel_error(mine, theirs)
    if error <= threshold:
        return None
    worst = np.unravel_index(np.argmax(np.abs(mine - theirs)), mine.shape)
    return (f"{label}: rel error {error:.2e}; worst entry {worst}: mine {mine[worst]!r} "
            f"vs torch {theirs[worst]!r}")


def layer_parity(layer, x, rng):
    """Forward output and every gradient of one layer, ours vs its torch twin."""
    model = models.Sequential([layer], input_shape=x.shape[1:])
    theta = rng.standard_normal(model.num_params)
    params = tuple(model.layout.views(theta))
    y, cache = layer.forward(params, x)
    dout = rng.standard_normal(y.shape)
    dx, dparams = layer.backward(params, cache, dout)

    module = torch_twin(model, theta)
    x_t = torch.tensor(x, requires_grad=True)
    y_t = module(x_t)
    (y_t * torch.from_numpy(dout)).sum().backward()
    theirs = {"y": y_t.detach().numpy(), "dx": x_t.grad.numpy()}
    theirs.update({f"d{name}": p.grad.numpy() for name, p in module[0].named_parameters()})
    mine = {"y": y, "dx": dx}
    mine.update({f"d{name}": d for name, d in zip(layer.param_shapes, dparams)})
    return [line for line in (mine_vs_torch(f"{layer!r} on {x.shape} {key}", mine[key], theirs[key])
                              for key in mine) if line]


@pytest.mark.parametrize("name, n", [("omniglot", 10), ("miniimagenet", 2), ("sine", 10)])
def test_model_parity(backend, name, n):
    rng = np.random.default_rng(0)
    model = models.MODELS[name]()
    theta = example_theta(model, rng)
    x, y = example_batch(model, rng, n)

    module = torch_module(model)
    module.load_state_dict(to_torch_state_dict(model, theta), strict=True)
    assert list(module.state_dict()) == list(model.layout.names)
    assert list(dict(module.named_parameters())) == list(model.layout.names)

    for reduction in ("sum", "mean"):
        rows = compare_with_torch(model, theta, x, y, reduction)
        assert [row.name for row in rows] == ["output", "loss"] + list(model.layout.names)
        assert all(row.passed for row in rows), f"reduction={reduction}\n{report(rows)}"
        zero = [row.name for row in rows if row.check.startswith("absolute")]
        assert zero == zero_gradient_tensors(model)
    # The loss itself, spelled out once (compare_with_torch covers it too).
    mine = model.loss(theta, x, y, "mean")
    theirs, _ = torch_loss_and_grad(module, x, y, model.loss_name, "mean")
    assert mine_vs_torch("loss", mine, theirs) is None


def test_float32_parity_to_single_precision(numpy_backend):
    rng = np.random.default_rng(1)
    model = models.omniglot_cnn(5)
    theta = example_theta(model, rng, np.float32)
    x, y = example_batch(model, rng, 10, np.float32)
    rows = compare_with_torch(model, theta, x, y, "sum", threshold=1e-4)
    assert all(row.passed for row in rows), report(rows)
    assert next(torch_twin(model, theta).parameters()).dtype == torch.float32


def test_random_conv_parity(backend):
    rng = np.random.default_rng(1234)
    failures = []
    for case in range(40):
        c_in, c_out = (int(v) for v in rng.integers(1, 4, size=2))
        k, stride = int(rng.integers(1, 4)), int(rng.integers(1, 3))
        padding = [int(rng.integers(0, 3)), tuple(int(p) for p in rng.integers(0, 3, size=4)),
                   "same", (0, 1, 0, 1)][case % 4]
        h, w = (int(v) for v in rng.integers(k, 10, size=2))
        layer = Conv2d(c_in, c_out, k, stride=stride, padding=padding)
        failures += layer_parity(layer, rng.standard_normal((2, c_in, h, w)), rng)
    assert not failures, "mine vs torch:\n" + "\n".join(failures)


@pytest.mark.parametrize("size_in, size_out", [(21, 11), (11, 6)])
def test_maxpool_same_parity_on_miniimagenet_sizes(backend, size_in, size_out):
    rng = np.random.default_rng(0)
    layer = MaxPool2d(2, 2, padding="same")
    module = torch_module(models.Sequential([layer], input_shape=(3, size_in, size_in)))
    assert isinstance(module[0], torch.nn.MaxPool2d) and module[0].ceil_mode
    x = rng.permutation(2 * 3 * size_in * size_in).reshape(2, 3, size_in, size_in) / 1000.0
    assert layer.forward((), x)[0].shape[2:] == (size_out, size_out)
    failures = layer_parity(layer, x, rng)
    assert not failures, "mine vs torch:\n" + "\n".join(failures)


def test_maxpool_parity_over_sizes_and_windows(backend):
    # 2x2/2 "same" uses ceil_mode; the other "same" pools pad with -inf explicitly.
    rng = np.random.default_rng(5)
    failures = []
    for size, stride, padding in [(2, 2, "same"), (3, 2, "same"), (3, 1, "same"), (2, 1, "same"),
                                  (3, 3, "same"), (2, 2, "valid"), (3, 2, "valid")]:
        for h in range(1 if padding == "same" else size, 9):
            w = int(rng.integers(1 if padding == "same" else size, 9))
            x = rng.permutation(2 * h * w).reshape(1, 2, h, w) / 100.0
            failures += layer_parity(MaxPool2d(size, stride, padding), x, rng)
    assert not failures, "mine vs torch:\n" + "\n".join(failures)


@pytest.mark.parametrize("size, stride, padding", [(2, 2, "valid"), (2, 2, "same"), (3, 2, "same")])
def test_maxpool_ties_route_gradient_like_torch(backend, size, stride, padding):
    # Ties are common after ReLU. Both send a window's gradient to its first
    # maximum in row-major order; an all-equal window is the extreme case.
    rng = np.random.default_rng(2)
    layer = MaxPool2d(size, stride, padding)
    for x in (np.zeros((1, 1, 4, 4)), rng.integers(0, 3, size=(2, 2, 7, 6)).astype(np.float64)):
        failures = layer_parity(layer, x, rng)
        assert not failures, "mine vs torch:\n" + "\n".join(failures)
    all_equal = np.ones((1, 1, 2, 2))
    model = models.Sequential([MaxPool2d(2, 2)], input_shape=(1, 2, 2))
    x_t = torch.tensor(all_equal, requires_grad=True)
    torch_module(model)(x_t).sum().backward()
    np.testing.assert_array_equal(x_t.grad.numpy()[0, 0], [[1, 0], [0, 0]])


def test_golden_file_reproduces_in_torch(numpy_backend, tmp_path):
    path = tmp_path / "omniglot.npz"
    golden.export_golden("omniglot", path, seed=1)
    data = golden.load_golden(path)
    model = models.MODELS[data["meta"]["model"]]()
    module = torch_module(model)
    module.load_state_dict({k: torch.from_numpy(v) for k, v in data["params"].items()}, strict=True)
    loss, grads = torch_loss_and_grad(module, data["x"], data["y"], "cross_entropy", "sum")
    rows = compare_gradients({"loss": data["loss"], **data["grads"]}, {"loss": loss, **grads},
                             zero_gradient=zero_gradient_tensors(model))
    assert all(row.passed for row in rows), report(rows)


def test_compare_gradients_requires_the_same_names():
    with pytest.raises(ValueError, match=r"^theirs must have the same names.*missing \['b'\]"):
        compare_gradients({"a": np.zeros(1), "b": np.zeros(1)}, {"a": np.zeros(1)})
    with pytest.raises(ValueError, match=r"^theirs\['a'\] must have shape"):
        compare_gradients({"a": np.zeros(1)}, {"a": np.zeros(2)})


@pytest.mark.parametrize("inner_optimizer", ["adam", "sgd"])
def test_whole_reptile_meta_step_matches_torch(numpy_backend, inner_optimizer):
    """A full meta-iteration (2 tasks x 3 inner steps, then the interpolation) by our
    hand-written gradients and by PyTorch autograd lands on the same theta."""
    from reptile_np import meta, optim
    from reptile_np.interop import torch_reptile_step
    rng = np.random.default_rng(3)
    model = models.omniglot_cnn(3)
    theta = model.init(rng, np.float64)
    tasks = [(rng.random((6, 1, 28, 28)), np.repeat(np.arange(3), 2)) for _ in range(2)]
    lr, epsilon = (1e-3, 0.7) if inner_optimizer == "adam" else (0.01, 0.7)
    inner = (optim.Adam(model.num_params, lr=lr, dtype=np.float64) if inner_optimizer == "adam"
             else optim.SGD(lr))
    ours = meta.reptile_step(model, theta, tasks, inner, np.random.default_rng(7), 3, 3, epsilon)
    replay = np.random.default_rng(7)   # the batches reptile_step drew, task by task
    batches = [meta.minibatches(6, 3, 3, replay) for _ in tasks]
    theirs = torch_reptile_step(model, theta, tasks, batches, epsilon, lr, inner_optimizer)
    # Conv biases before BatchNorm have an exact gradient of 0; Adam divides the rounding
    # noise by its own tiny second moment, so their (~1e-11) steps are noise on both sides
    # and are compared apart, by absolute size (paper notes §1.2).
    zero = set(zero_gradient_tensors(model))
    ours_sd, theirs_sd = model.state_dict(ours - theta), model.state_dict(theirs - theta)
    smooth = [name for name in ours_sd if name not in zero]
    error = rel_error(np.concatenate([ours_sd[n].ravel() for n in smooth]),
                      np.concatenate([theirs_sd[n].ravel() for n in smooth]))
    assert error <= 1e-10, f"mine vs torch meta-step: {error:.2e}"
    for name in zero:
        assert np.max(np.abs(ours_sd[name] - theirs_sd[name])) <= 1e-9, name
