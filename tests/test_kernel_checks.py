"""Every kernel refuses arguments that do not fit together, with one ValueError on both backends.

The Numba cores do no bounds checks: before `kernels.checks`, Adam's moments of 10
elements for 113,221 parameters corrupted the heap and crashed Python, and an
out-of-range max-pool winner wrote outside the gradient. Each case below takes a
kernel's good arguments, spoils one, and requires a ValueError whose message starts
with the kernel's name and the argument's, the same message on the NumPy and the
Numba backend. A refused call changes nothing in place.
"""
import numpy as np
import pytest

from reptile_np import kernels, optim

X_SHAPE, W_SHAPE, STRIDE, PAD = (2, 3, 7, 6), (4, 3, 3, 3), 2, (1, 1, 1, 1)
DY_SHAPE = (2, 4, 4, 3)                       # the output of X_SHAPE, W_SHAPE, STRIDE, PAD
POOL_PAD = (0, 1, 0, 0)                       # 2 x 2 windows, stride 2: output (2, 3, 4, 3)
ADAM_SCALARS = tuple(np.float32(value) for value in (1e-3, 0.0, 0.999, 1e-8))
MLP_WIDTHS = (2, 5, 1)                        # 5 * 3 + 1 * 6 = 21 parameters


def _normal(shape, dtype=np.float64, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def _strided(a):
    """A non-contiguous view with a's values."""
    wide = np.zeros(2 * a.size, dtype=a.dtype)
    wide[::2] = a.ravel()
    return wide[::2].reshape(a.shape)


def conv_forward_args():
    return {"x": _normal(X_SHAPE), "w": _normal(W_SHAPE, seed=1), "stride": STRIDE, "pad": PAD}


def conv_input_args():
    return {"dy": _normal(DY_SHAPE), "w": _normal(W_SHAPE, seed=1), "x_shape": X_SHAPE,
            "stride": STRIDE, "pad": PAD}


def conv_weight_args():
    return {"dy": _normal(DY_SHAPE), "x": _normal(X_SHAPE, seed=1), "w_shape": W_SHAPE,
            "stride": STRIDE, "pad": PAD}


def conv_backward_args():
    """Arguments of `kernels.conv2d_backward`, ``saved`` from the backend in use."""
    w = _normal(W_SHAPE, seed=1)
    _, saved = kernels.conv2d_forward_saving(_normal(X_SHAPE), w, STRIDE, PAD)
    return {"dy": _normal(DY_SHAPE), "w": w, "saved": saved, "x_shape": X_SHAPE,
            "stride": STRIDE, "pad": PAD}


def _saved_of(x_shape, dtype=np.float64):
    """A spoiler: ``saved`` of a forward pass over another input."""
    def saved(args):
        return kernels.conv2d_forward_saving(_normal(x_shape, dtype),
                                             args["w"].astype(dtype), STRIDE, PAD)[1]
    return saved


def pool_forward_args():
    return {"x": _normal(X_SHAPE), "size": 2, "stride": 2, "pad": POOL_PAD}


def pool_backward_args():
    _, argmax = kernels.maxpool2d_forward(_normal(X_SHAPE), 2, 2, POOL_PAD)
    return {"dy": _normal(argmax.shape), "argmax": argmax, "x_shape": X_SHAPE, "size": 2,
            "stride": 2, "pad": POOL_PAD}


def _argmax_with(value):
    def argmax(args):
        spoiled = args["argmax"].copy()
        spoiled[1, 2, 3, 2] = value
        return spoiled
    return argmax


def bn_forward_args():
    return {"x": _normal((2, 3, 5, 4)), "gamma": _normal(3, seed=1), "beta": _normal(3, seed=2),
            "eps": 1e-3}


def bn_backward_args():
    return {"dy": _normal((2, 3, 5, 4)), "x_hat": _normal((2, 3, 5, 4), seed=1),
            "inv_std": np.abs(_normal(3, seed=2)), "gamma": _normal(3, seed=3)}


def relu_forward_args():
    return {"x": _normal((3, 4))}


def relu_backward_args():
    return {"dy": _normal((3, 4)), "y": np.abs(_normal((3, 4), seed=1))}


def adam_args(size=113221):
    """A 113,221-parameter vector (the Omniglot CNN's count) and its Adam state."""
    return {"params": _normal(size, np.float32), "grad": _normal(size, np.float32, seed=1),
            "m": np.zeros(size, np.float32), "v": np.zeros(size, np.float32)}


def mlp_args():
    steps, batch = 3, 4
    return {"phi": _normal(21) / 3, "widths": MLP_WIDTHS, "activation": "tanh",
            "x_batches": _normal((steps, batch, MLP_WIDTHS[0]), seed=1),
            "y_batches": _normal((steps, batch, MLP_WIDTHS[-1]), seed=2),
            "lr": 0.01, "reduction": "mean", "weight_decay": 1.0}


def _conv_forward_cases(kernel):
    return [
        (kernel, conv_forward_args, {"x": lambda a: a["x"].tolist()}, "x"),
        (kernel, conv_forward_args, {"x": lambda a: a["x"][0]}, "x"),
        (kernel, conv_forward_args, {"x": lambda a: a["x"].astype(np.int64)}, "x"),
        (kernel, conv_forward_args, {"x": lambda a: a["x"].astype(np.float16)}, "x"),
        (kernel, conv_forward_args, {"x": np.zeros((0, 3, 7, 6))}, "x"),
        (kernel, conv_forward_args, {"w": lambda a: a["w"].astype(np.float32)}, "w"),
        (kernel, conv_forward_args, {"w": lambda a: a["w"][0]}, "w"),
        (kernel, conv_forward_args, {"w": np.zeros((0, 3, 3, 3))}, "w"),
        (kernel, conv_forward_args, {"w": _normal((4, 2, 3, 3))}, "w"),
        (kernel, conv_forward_args, {"w": _normal((4, 3, 10, 3))}, "w"),   # taller than 7 + 2
        (kernel, conv_forward_args, {"stride": 0}, "stride"),
        (kernel, conv_forward_args, {"stride": 1.5}, "stride"),
        (kernel, conv_forward_args, {"stride": True}, "stride"),
        (kernel, conv_forward_args, {"pad": (1, 1)}, "pad"),
        (kernel, conv_forward_args, {"pad": (1, -1, 1, 1)}, "pad"),
        (kernel, conv_forward_args, {"pad": "same"}, "pad"),
    ]


def _geometry_cases(kernel, build):
    return [
        (kernel, build, {"stride": 0}, "stride"),
        (kernel, build, {"pad": (0, 0, 0)}, "pad"),
        (kernel, build, {"pad": (0, 0, 0, 1.0)}, "pad"),
    ]


CASES = (_conv_forward_cases("conv2d_forward") + _conv_forward_cases("conv2d_forward_saving") + [
    ("conv2d_backward_input", conv_input_args, {"dy": lambda a: a["dy"][0]}, "dy"),
    ("conv2d_backward_input", conv_input_args, {"dy": lambda a: a["dy"].astype(int)}, "dy"),
    ("conv2d_backward_input", conv_input_args, {"dy": _normal((2, 4, 4, 4))}, "dy"),
    ("conv2d_backward_input", conv_input_args, {"dy": _normal((3, 4, 4, 3))}, "dy"),
    ("conv2d_backward_input", conv_input_args, {"w": _normal((5, 3, 3, 3))}, "dy"),
    ("conv2d_backward_input", conv_input_args, {"w": _normal((4, 2, 3, 3))}, "w"),
    ("conv2d_backward_input", conv_input_args, {"w": _normal(W_SHAPE, np.float32)}, "w"),
    ("conv2d_backward_input", conv_input_args, {"x_shape": (2, 3, 7)}, "x_shape"),
    ("conv2d_backward_input", conv_input_args, {"x_shape": (2, 3, 0, 6)}, "x_shape"),
    ("conv2d_backward_input", conv_input_args, {"x_shape": (2, 3, 7, 6.0)}, "x_shape"),
    ("conv2d_backward_input", conv_input_args, {"x_shape": (2, 3, 1, 6), "pad": (0, 0, 1, 1)},
     "w"),
] + _geometry_cases("conv2d_backward_input", conv_input_args) + [
    ("conv2d_backward_weight", conv_weight_args, {"dy": _normal((2, 4, 3, 3))}, "dy"),
    ("conv2d_backward_weight", conv_weight_args, {"dy": _normal(DY_SHAPE, np.float32)}, "x"),
    ("conv2d_backward_weight", conv_weight_args, {"x": _normal((2, 3, 9, 6))}, "dy"),
    ("conv2d_backward_weight", conv_weight_args, {"x": _normal((2, 5, 7, 6))}, "w_shape"),
    ("conv2d_backward_weight", conv_weight_args, {"x": _normal((2, 3, 7, 6), np.float32)}, "x"),
    ("conv2d_backward_weight", conv_weight_args, {"w_shape": (4, 3, 3)}, "w_shape"),
    ("conv2d_backward_weight", conv_weight_args, {"w_shape": (5, 3, 3, 3)}, "dy"),
    ("conv2d_backward_weight", conv_weight_args, {"w_shape": (4, 3, 10, 3)}, "w_shape"),
] + _geometry_cases("conv2d_backward_weight", conv_weight_args) + [
    ("conv2d_backward", conv_backward_args, {"dy": _normal((2, 4, 4, 4))}, "dy"),
    ("conv2d_backward", conv_backward_args, {"dy": lambda a: a["dy"].astype(np.float32)}, "w"),
    ("conv2d_backward", conv_backward_args, {"w": _normal((4, 2, 3, 3))}, "w"),
    ("conv2d_backward", conv_backward_args, {"x_shape": (2, 3, 7)}, "x_shape"),
    ("conv2d_backward", conv_backward_args, {"saved": _saved_of((2, 3, 9, 6))}, "saved"),
    ("conv2d_backward", conv_backward_args, {"saved": _saved_of((3, 3, 7, 6))}, "saved"),
    ("conv2d_backward", conv_backward_args,
     {"saved": _saved_of(X_SHAPE, np.float32)}, "saved"),
] + _geometry_cases("conv2d_backward", conv_backward_args) + [
    ("maxpool2d_forward", pool_forward_args, {"x": lambda a: a["x"].astype(np.int32)}, "x"),
    ("maxpool2d_forward", pool_forward_args, {"x": lambda a: a["x"][0]}, "x"),
    ("maxpool2d_forward", pool_forward_args, {"size": 0}, "size"),
    ("maxpool2d_forward", pool_forward_args, {"size": 12}, "size"),
    ("maxpool2d_forward", pool_forward_args,                         # 144 taps overflow int8
     {"x": _normal((1, 1, 12, 12)), "size": 12}, "size"),
    ("maxpool2d_forward", pool_forward_args, {"size": 2.0}, "size"),
    ("maxpool2d_forward", pool_forward_args, {"size": 8}, "size"),    # wider than 6
] + _geometry_cases("maxpool2d_forward", pool_forward_args) + [
    ("maxpool2d_backward", pool_backward_args, {"dy": _normal((2, 3, 4, 4))}, "dy"),
    ("maxpool2d_backward", pool_backward_args, {"dy": lambda a: a["dy"].astype(int)}, "dy"),
    ("maxpool2d_backward", pool_backward_args, {"x_shape": (2, 3, 9, 6)}, "dy"),
    ("maxpool2d_backward", pool_backward_args, {"x_shape": (2, 3, 7, -6)}, "x_shape"),
    ("maxpool2d_backward", pool_backward_args, {"size": 12}, "size"),
    ("maxpool2d_backward", pool_backward_args,
     {"dy": _normal((2, 3, 1, 1)), "argmax": np.zeros((2, 3, 1, 1), np.int8),
      "x_shape": (2, 3, 12, 12), "size": 12, "pad": (0, 0, 0, 0)}, "size"),
    ("maxpool2d_backward", pool_backward_args,
     {"argmax": lambda a: a["argmax"].astype(np.int64)}, "argmax"),
    ("maxpool2d_backward", pool_backward_args, {"argmax": lambda a: a["argmax"].tolist()},
     "argmax"),
    ("maxpool2d_backward", pool_backward_args, {"argmax": lambda a: a["argmax"][:, :, :3]},
     "argmax"),
    ("maxpool2d_backward", pool_backward_args, {"argmax": _argmax_with(4)}, "argmax"),
    ("maxpool2d_backward", pool_backward_args, {"argmax": _argmax_with(100)}, "argmax"),
    ("maxpool2d_backward", pool_backward_args, {"argmax": _argmax_with(-1)}, "argmax"),
] + _geometry_cases("maxpool2d_backward", pool_backward_args) + [
    ("batchnorm2d_forward", bn_forward_args, {"x": lambda a: a["x"].astype(np.int16)}, "x"),
    ("batchnorm2d_forward", bn_forward_args, {"x": lambda a: a["x"][0]}, "x"),
    ("batchnorm2d_forward", bn_forward_args, {"gamma": _normal(4)}, "gamma"),
    ("batchnorm2d_forward", bn_forward_args, {"gamma": _normal((1, 3))}, "gamma"),
    ("batchnorm2d_forward", bn_forward_args, {"gamma": _normal(3, np.float32)}, "gamma"),
    ("batchnorm2d_forward", bn_forward_args, {"beta": _normal(2)}, "beta"),
    ("batchnorm2d_forward", bn_forward_args, {"beta": [0.0, 0.0, 0.0]}, "beta"),
    ("batchnorm2d_backward", bn_backward_args, {"dy": lambda a: a["dy"][0]}, "dy"),
    ("batchnorm2d_backward", bn_backward_args, {"x_hat": _normal((2, 3, 5, 5))}, "x_hat"),
    ("batchnorm2d_backward", bn_backward_args, {"x_hat": _normal((2, 3, 5, 4), np.float32)},
     "x_hat"),
    ("batchnorm2d_backward", bn_backward_args, {"inv_std": _normal(4)}, "inv_std"),
    ("batchnorm2d_backward", bn_backward_args, {"inv_std": _normal(3, np.float32)}, "inv_std"),
    ("batchnorm2d_backward", bn_backward_args, {"gamma": _normal(2)}, "gamma"),
    ("relu_forward", relu_forward_args, {"x": lambda a: a["x"].astype(np.int64)}, "x"),
    ("relu_forward", relu_forward_args, {"x": [1.0, -1.0]}, "x"),
    ("relu_backward", relu_backward_args, {"dy": lambda a: a["dy"].astype(np.int64)}, "dy"),
    ("relu_backward", relu_backward_args, {"y": lambda a: a["y"][:2]}, "y"),
    ("relu_backward", relu_backward_args, {"y": lambda a: a["y"].astype(np.float32)}, "y"),
    ("adam_update", adam_args, {"m": np.zeros(10, np.float32), "v": np.zeros(10, np.float32)},
     "m"),
    ("adam_update", adam_args, {"v": np.zeros(10, np.float32)}, "v"),
    ("adam_update", adam_args, {"grad": _normal(10, np.float32)}, "grad"),
    ("adam_update", adam_args, {"grad": lambda a: a["grad"].astype(np.float64)}, "grad"),
    ("adam_update", adam_args, {"m": lambda a: a["m"].astype(np.float64)}, "m"),
    ("adam_update", adam_args, {"params": lambda a: a["params"].astype(np.int32)}, "params"),
    ("adam_update", adam_args, {"params": np.zeros((2, 3), np.float32)},
     "params"),
    ("adam_update", adam_args, {"params": lambda a: _strided(a["params"])}, "params"),
    ("adam_update", adam_args, {"params": lambda a: _read_only(a["params"])}, "params"),
    ("adam_update", adam_args, {"m": lambda a: _read_only(a["m"])}, "m"),
    ("adam_update", adam_args, {"v": lambda a: _strided(a["v"])}, "v"),
    ("mlp_sgd_inner_loop", mlp_args, {"phi": _normal(25)}, "phi"),          # wrong-length phi
    ("mlp_sgd_inner_loop", mlp_args, {"phi": _normal((21, 1))}, "phi"),
    ("mlp_sgd_inner_loop", mlp_args, {"phi": lambda a: a["phi"].astype(np.int64)}, "phi"),
    ("mlp_sgd_inner_loop", mlp_args, {"phi": lambda a: _read_only(a["phi"])}, "phi"),
    ("mlp_sgd_inner_loop", mlp_args, {"phi": lambda a: _strided(a["phi"])}, "phi"),
    ("mlp_sgd_inner_loop", mlp_args, {"phi": lambda a: a["phi"].astype(np.float32)},
     "x_batches"),
    ("mlp_sgd_inner_loop", mlp_args, {"widths": (2, 6, 1)}, "phi"),
    ("mlp_sgd_inner_loop", mlp_args, {"widths": (2,)}, "widths"),
    ("mlp_sgd_inner_loop", mlp_args, {"widths": (2, 0, 1)}, "widths"),
    ("mlp_sgd_inner_loop", mlp_args, {"widths": (2, 5.0, 1)}, "widths"),
    ("mlp_sgd_inner_loop", mlp_args, {"widths": "251"}, "widths"),
    ("mlp_sgd_inner_loop", mlp_args, {"activation": "sigmoid"}, "activation"),
    ("mlp_sgd_inner_loop", mlp_args, {"reduction": "max"}, "reduction"),
    ("mlp_sgd_inner_loop", mlp_args, {"x_batches": _normal((3, 4, 3))}, "x_batches"),
    ("mlp_sgd_inner_loop", mlp_args, {"x_batches": _normal((3, 4))}, "x_batches"),
    ("mlp_sgd_inner_loop", mlp_args, {"x_batches": _normal((3, 0, 2))}, "x_batches"),
    ("mlp_sgd_inner_loop", mlp_args, {"x_batches": _normal((3, 4, 2), np.float32)},
     "x_batches"),
    # Targets of fewer steps than inputs: the Numba loop would read y_batches[2] past the end.
    ("mlp_sgd_inner_loop", mlp_args, {"y_batches": _normal((2, 4, 1))}, "y_batches"),
    ("mlp_sgd_inner_loop", mlp_args, {"y_batches": _normal((3, 3, 1))}, "y_batches"),
    ("mlp_sgd_inner_loop", mlp_args, {"y_batches": _normal((3, 4, 2))}, "y_batches"),
    ("mlp_sgd_inner_loop", mlp_args, {"y_batches": _normal((3, 4, 1), np.float32)},
     "y_batches"),
])

BUILDERS = {kernel: build for kernel, build, _, _ in CASES}


def _case_id(case):
    kernel, _, spoilers, name = case
    return f"{kernel}-{name}-" + "-".join(sorted(spoilers))


def _call(kernel, build, spoilers):
    """Build the good arguments on the backend in use, spoil them, call the kernel; returns
    the arguments (spoiled) that the call was given."""
    args = build()
    for name, value in spoilers.items():
        args[name] = value(args) if callable(value) else value
    if kernel == "adam_update":
        getattr(kernels, kernel)(*args.values(), *ADAM_SCALARS)
    else:
        getattr(kernels, kernel)(**args)
    return args


def _message(kernel, build, spoilers):
    with pytest.raises(ValueError) as error:
        _call(kernel, build, spoilers)
    return str(error.value)


def test_every_kernel_has_cases():
    assert set(BUILDERS) == set(kernels.KERNELS) | {"mlp_sgd_inner_loop"}


@pytest.mark.parametrize("kernel", sorted(BUILDERS))
def test_the_good_arguments_pass(backend, kernel):
    _call(kernel, BUILDERS[kernel], {})


@pytest.mark.parametrize("case", CASES, ids=[_case_id(case) for case in CASES])
def test_misuse_raises_a_value_error_naming_the_argument(backend, case):
    kernel, build, spoilers, name = case
    message = _message(kernel, build, spoilers)
    assert message.startswith(f"{kernel}: {name} "), message
    assert message.endswith(".") and "\n" not in message


@pytest.mark.parametrize("case", CASES, ids=[_case_id(case) for case in CASES])
def test_both_backends_give_the_same_message(case):
    previous = kernels.get_backend()
    messages = []
    try:
        for name in kernels.BACKENDS:
            if kernels.set_backend(name) != name:
                pytest.skip("the Numba kernels do not import")
            messages.append(_message(*case[:3]))
    finally:
        kernels.set_backend(previous)
    assert messages[0] == messages[1]


def test_adam_state_shorter_than_the_parameters_is_refused_with_their_shapes(backend):
    args = adam_args()
    with pytest.raises(ValueError) as error:
        kernels.adam_update(args["params"], args["grad"], np.zeros(10, np.float32),
                            np.zeros(10, np.float32), *ADAM_SCALARS)
    assert str(error.value) == "adam_update: m must have the shape of params (113221,), got (10,)."


def test_adam_of_10_parameters_stepping_113221_leaves_every_array_untouched(backend):
    """The reported crash: it overwrote the caller's label array before the segfault."""
    args = adam_args()
    labels = np.arange(113221) % 5
    originals = [args["params"].copy(), args["grad"].copy(), labels.copy()]
    adam = optim.Adam(10)
    with pytest.raises(ValueError):
        adam.step(args["params"], args["grad"])
    for array, original in zip((args["params"], args["grad"], labels), originals):
        np.testing.assert_array_equal(array, original)
    np.testing.assert_array_equal(adam.m, 0)
    np.testing.assert_array_equal(adam.v, 0)


@pytest.mark.parametrize("kernel, spoilers", [
    ("adam_update", {"v": np.zeros(113231, np.float32)}),
    ("mlp_sgd_inner_loop", {"y_batches": _normal((4, 4, 1))}),
], ids=["adam_update", "mlp_sgd_inner_loop"])
def test_a_refused_call_changes_nothing_in_place(backend, kernel, spoilers):
    """Spoilers longer than needed, so that an unchecked twin would run to the end (no
    out-of-bounds access) and change params, m or phi: the checks come before any work."""
    args = BUILDERS[kernel]()
    originals = {name: value.copy() for name, value in args.items() if isinstance(value, np.ndarray)}
    args.update(spoilers)
    with pytest.raises(ValueError):
        _call(kernel, lambda: args, {})
    for name, original in originals.items():
        if name not in spoilers:
            np.testing.assert_array_equal(args[name], original)


def test_max_pool_winner_range_is_the_window(backend):
    """The largest window allowed, 11 x 11, accepts winner 120 and refuses 121."""
    x = _normal((1, 1, 11, 11))
    y, argmax = kernels.maxpool2d_forward(x, 11, 1, (0, 0, 0, 0))
    argmax[...] = 120
    kernels.maxpool2d_backward(y, argmax, x.shape, 11, 1, (0, 0, 0, 0))
    argmax[...] = 121
    with pytest.raises(ValueError, match=r"^maxpool2d_backward: argmax must hold taps in \[0, 121\)"):
        kernels.maxpool2d_backward(y, argmax, x.shape, 11, 1, (0, 0, 0, 0))
