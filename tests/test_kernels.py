"""The Numba kernels (`kernels.fast`) against the NumPy reference (`kernels.reference`).

Same values on random odd shapes, strides and paddings in float64 and float32 (both
patch layouts, and the weight gradient from the forward pass's saved patches); the
same max-pool winners, with ties and padding pinned by hand; the same bits whatever
the Numba thread count, and with one BLAS thread whatever the environment sets; the jitted cores equal to their own Python source;
the backend switch routing every kernel to the chosen module; the JIT settings read
from the environment. ``REPTILE_NP_TEST_SEED`` draws other random shapes.
"""
import copy
import os
import subprocess
import sys

import numba
import numpy as np
import pytest

from reptile_np import kernels
from reptile_np import threads as reptile_threads
from reptile_np.kernels import mlp_reference, reference
from reptile_np.layers import same_padding

fast = pytest.importorskip("reptile_np.kernels.fast")
mlp_fast = pytest.importorskip("reptile_np.kernels.mlp_fast")

SEED = int(os.environ.get("REPTILE_NP_TEST_SEED", "0"))
needs_jit = pytest.mark.skipif(numba.config.DISABLE_JIT,
                               reason="NUMBA_DISABLE_JIT=1: nothing is compiled")
TOLERANCE = {np.float64: 1e-12, np.float32: 1e-5}
DTYPES = [np.float64, np.float32]


@pytest.fixture
def restore_backend():
    previous = kernels.get_backend()
    yield
    kernels.set_backend(previous)


def assert_close(actual, expected):
    """Equal dtype and shape, max |actual - expected| <= tolerance * max |expected|."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    scale = max(float(np.max(np.abs(expected), initial=0.0)), np.finfo(expected.dtype).tiny)
    error = float(np.max(np.abs(actual - expected), initial=0.0))
    assert error <= TOLERANCE[expected.dtype.type] * scale, f"relative error {error / scale:.3g}"


def same_pad(h, w, k, s):
    return same_padding(h, k, s) + same_padding(w, k, s)


def conv_output_shape(case):
    n, c, h, w, out_ch, k, s, pad = case
    return (n, out_ch, reference.output_size(h, k, s, pad[0], pad[1]),
            reference.output_size(w, k, s, pad[2], pad[3]))


def conv_arrays(case, dtype):
    """Random x, weight and dy of a conv case, with its stride and padding."""
    n, c, h, w, out_ch, k, s, pad = case
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    weight = rng.standard_normal((out_ch, c, k, k)).astype(dtype)
    dy = rng.standard_normal(conv_output_shape(case)).astype(dtype)
    return x, weight, dy, s, pad


def _random_conv_cases(count, seed):
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(count):
        n, c, out_ch = rng.integers(1, 5), rng.integers(1, 6), rng.integers(1, 6)
        h, w = rng.integers(5, 14, size=2)
        k, s = rng.integers(1, 4), rng.integers(1, 3)
        pads = [(0, 0, 0, 0), (1, 1, 1, 1), (0, 1, 0, 1), (1, 0, 2, 1), same_pad(h, w, k, s)]
        pad = pads[rng.integers(len(pads))]
        cases.append((int(n), int(c), int(h), int(w), int(out_ch), int(k), int(s),
                      tuple(int(p) for p in pad)))
    return cases


CONV_CASES = [  # (N, C, H, W, O, k, stride, (top, bottom, left, right))
    (2, 3, 7, 6, 4, 3, 1, (1, 1, 1, 1)),
    (3, 2, 9, 8, 5, 3, 2, (0, 1, 0, 1)),
    (1, 1, 5, 5, 2, 1, 1, (0, 0, 0, 0)),
    (4, 5, 13, 11, 3, 2, 2, (1, 0, 2, 1)),
    (2, 1, 28, 28, 4, 3, 2, same_pad(28, 28, 3, 2)),    # Omniglot's first layer
    (2, 16, 7, 7, 5, 3, 2, same_pad(7, 7, 3, 2)),       # many channels: the rows layout
    (3, 9, 6, 5, 4, 3, 1, (1, 1, 1, 1)),
    (2, 6, 5, 5, 3, 1, 2, (0, 1, 0, 1)),
    (1, 3, 5, 6, 2, 3, 2, (2, 2, 3, 3)),                # padding wider than the kernel reach
] + _random_conv_cases(12, SEED)


def test_conv_cases_cover_both_patch_layouts():
    layouts = {fast._uses_rows(case[1], conv_output_shape(case)[3]) for case in CONV_CASES}
    assert layouts == {True, False}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv2d_kernels_match_reference(case, dtype):
    x, weight, dy, s, pad = conv_arrays(case, dtype)
    assert_close(fast.conv2d_forward(x, weight, s, pad),
                 reference.conv2d_forward(x, weight, s, pad))
    assert_close(fast.conv2d_backward_input(dy, weight, x.shape, s, pad),
                 reference.conv2d_backward_input(dy, weight, x.shape, s, pad))
    assert_close(fast.conv2d_backward_weight(dy, x, weight.shape, s, pad),
                 reference.conv2d_backward_weight(dy, x, weight.shape, s, pad))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_backward_from_the_saved_forward_matches_reference(case, dtype):
    x, weight, dy, s, pad = conv_arrays(case, dtype)
    y, saved = fast.conv2d_forward_saving(x, weight, s, pad)
    np.testing.assert_array_equal(y, fast.conv2d_forward(x, weight, s, pad))
    dx, dw = fast.conv2d_backward(dy, weight, saved, x.shape, s, pad)
    dx_ref, dw_ref = reference.conv2d_backward(dy, weight, x, x.shape, s, pad)
    assert_close(dx, dx_ref)
    assert_close(dw, dw_ref)
    assert_close(dw_ref, reference.conv2d_backward_weight(dy, x, weight.shape, s, pad))
    for module, kept in ((fast, saved), (reference, x)):
        no_dx, same_dw = module.conv2d_backward(dy, weight, kept, x.shape, s, pad, input_grad=False)
        assert no_dx is None
        np.testing.assert_array_equal(same_dw, dw if module is fast else dw_ref)


@pytest.mark.usefixtures("restore_backend")
@pytest.mark.parametrize("forward_backend", kernels.BACKENDS)
@pytest.mark.parametrize("backward_backend", kernels.BACKENDS)
def test_saved_forward_is_for_its_own_backend(forward_backend, backward_backend):
    """A forward pass saves what its backend's backward needs (x for NumPy, patches and
    weights for Numba): the same backend gives the reference gradients, and a switch in
    between is refused by name rather than misread."""
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((2, 16, 7, 7))   # many channels: the rows layout
    weight = rng.standard_normal((5, 16, 3, 3))
    pad = same_pad(7, 7, 3, 2)
    kernels.set_backend(forward_backend)
    y, saved = kernels.conv2d_forward_saving(x, weight, 2, pad)
    dy = rng.standard_normal(y.shape)
    kernels.set_backend(backward_backend)
    if forward_backend != backward_backend:
        with pytest.raises(ValueError, match="conv2d_backward: saved "):
            kernels.conv2d_backward(dy, weight, saved, x.shape, 2, pad)
        return
    dx, dw = kernels.conv2d_backward(dy, weight, saved, x.shape, 2, pad)
    assert_close(y, reference.conv2d_forward(x, weight, 2, pad))
    assert_close(dx, reference.conv2d_backward_input(dy, weight, x.shape, 2, pad))
    assert_close(dw, reference.conv2d_backward_weight(dy, x, weight.shape, 2, pad))


def test_conv2d_accepts_non_contiguous_inputs():
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((2, 3, 8, 9))[:, :, ::-1, 1:]
    weight = rng.standard_normal((4, 3, 3, 3))
    dy = rng.standard_normal((2, 4, 4, 4)).transpose(0, 1, 3, 2)
    pad = (0, 1, 0, 1)
    assert_close(fast.conv2d_forward(x, weight, 2, pad),
                 reference.conv2d_forward(x, weight, 2, pad))
    assert_close(fast.conv2d_backward_input(dy, weight, x.shape, 2, pad),
                 reference.conv2d_backward_input(dy, weight, x.shape, 2, pad))
    assert_close(fast.conv2d_backward_weight(dy, x, weight.shape, 2, pad),
                 reference.conv2d_backward_weight(dy, x, weight.shape, 2, pad))


def _pool_cases(seed):
    rng = np.random.default_rng(seed)
    cases = []
    for size, stride, padding in [(2, 2, "valid"), (2, 2, "same"), (3, 2, "valid"), (3, 2, "same")]:
        for _ in range(3):
            n, c = rng.integers(1, 5), rng.integers(1, 6)
            h, w = rng.integers(5, 14, size=2)
            pad = (0, 0, 0, 0) if padding == "valid" else same_pad(h, w, size, stride)
            cases.append((int(n), int(c), int(h), int(w), size, stride, tuple(int(p) for p in pad)))
    return cases + [(2, 3, 6, 7, 3, 1, (1, 1, 1, 1)), (1, 2, 5, 5, 2, 2, (1, 0, 1, 0))]


POOL_CASES = _pool_cases(SEED)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_maxpool2d_kernels_match_reference(case, dtype):
    n, c, h, w, size, stride, pad = case
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)   # continuous: no ties
    y, argmax = fast.maxpool2d_forward(x, size, stride, pad)
    y_ref, argmax_ref = reference.maxpool2d_forward(x, size, stride, pad)
    assert argmax.dtype == np.int8 and y.dtype == dtype
    np.testing.assert_array_equal(argmax, argmax_ref)
    np.testing.assert_array_equal(y, y_ref)
    dy = rng.standard_normal(y.shape).astype(dtype)
    assert_close(fast.maxpool2d_backward(dy, argmax, x.shape, size, stride, pad),
                 reference.maxpool2d_backward(dy, argmax_ref, x.shape, size, stride, pad))


@pytest.mark.parametrize("module", [reference, fast], ids=["numpy", "numba"])
def test_maxpool_ties_go_to_the_first_maximum_in_row_major_order(module):
    zeros = np.zeros((1, 1, 4, 4))
    y, argmax = module.maxpool2d_forward(zeros, 2, 2, (0, 0, 0, 0))
    np.testing.assert_array_equal(argmax, 0)
    np.testing.assert_array_equal(y, 0.0)

    x = np.array([[1.0, 3.0, 0.0],
                  [3.0, 2.0, 3.0],
                  [0.0, 3.0, 1.0]])[None, None]
    y, argmax = module.maxpool2d_forward(x, 2, 1, (0, 0, 0, 0))
    np.testing.assert_array_equal(argmax[0, 0], [[1, 0], [0, 1]])
    np.testing.assert_array_equal(y[0, 0], 3.0)
    y, argmax = module.maxpool2d_forward(x, 3, 1, (0, 0, 0, 0))
    assert argmax[0, 0, 0, 0] == 1
    dx = module.maxpool2d_backward(np.ones_like(y), argmax, x.shape, 3, 1, (0, 0, 0, 0))
    np.testing.assert_array_equal(dx[0, 0], [[0, 1, 0], [0, 0, 0], [0, 0, 0]])


@pytest.mark.parametrize("module", [reference, fast], ids=["numpy", "numba"])
def test_maxpool_padding_never_wins(module):
    x = np.full((1, 1, 3, 3), -5.0, dtype=np.float32)
    y, argmax = module.maxpool2d_forward(x, 2, 2, (1, 0, 1, 0))
    np.testing.assert_array_equal(y, -5.0)
    assert argmax[0, 0, 0, 0] == 3     # the only real cell of the corner window
    dx = module.maxpool2d_backward(np.ones_like(y), argmax, x.shape, 2, 2, (1, 0, 1, 0))
    np.testing.assert_array_equal(dx[0, 0], [[1, 1, 0], [1, 1, 0], [0, 0, 0]])


def test_maxpool_nan_wins_as_in_numpy_argmax():
    x = np.array([[1.0, np.nan], [5.0, np.nan]])[None, None]
    y, argmax = fast.maxpool2d_forward(x, 2, 2, (0, 0, 0, 0))
    y_ref, argmax_ref = reference.maxpool2d_forward(x, 2, 2, (0, 0, 0, 0))
    np.testing.assert_array_equal(argmax, argmax_ref)
    assert argmax[0, 0, 0, 0] == 1 and np.isnan(y[0, 0, 0, 0]) and np.isnan(y_ref[0, 0, 0, 0])


BATCHNORM_SHAPES = [(2, 3, 5, 4), (10, 64, 14, 14), (1, 2, 1, 1), (3, 5, 3, 7), (4, 1, 9, 2)]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("shape", BATCHNORM_SHAPES, ids=str)
def test_batchnorm_kernels_match_reference(shape, dtype):
    rng = np.random.default_rng(SEED)
    x = (3.0 * rng.standard_normal(shape) + 2.0).astype(dtype)
    gamma, beta = (rng.standard_normal(shape[1]).astype(dtype) for _ in range(2))
    dy = rng.standard_normal(shape).astype(dtype)
    forward = fast.batchnorm2d_forward(x, gamma, beta, 1e-3)
    forward_ref = reference.batchnorm2d_forward(x, gamma, beta, 1e-3)
    for actual, expected in zip(forward, forward_ref):
        assert_close(actual, expected)
    x_hat, inv_std = forward_ref[1:]
    for actual, expected in zip(fast.batchnorm2d_backward(dy, x_hat, inv_std, gamma),
                                reference.batchnorm2d_backward(dy, x_hat, inv_std, gamma)):
        assert_close(actual, expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_relu_kernels_match_reference_to_the_bit(dtype):
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((3, 4, 5, 6)).astype(dtype)
    x.flat[:5] = [0.0, -0.0, np.nan, -np.inf, np.inf]
    y, y_ref = fast.relu_forward(x), reference.relu_forward(x)
    _assert_same_bits([y], [y_ref])
    np.testing.assert_array_equal(y.flat[:5], [0.0, 0.0, np.nan, 0.0, np.inf])
    dy = rng.standard_normal(x.shape).astype(dtype)
    dx = fast.relu_backward(dy, y)
    _assert_same_bits([dx], [reference.relu_backward(dy, y_ref)])
    np.testing.assert_array_equal(dx, np.where(x > 0, dy, 0))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("beta1", [0.0, 0.9])
def test_adam_kernels_match_reference_to_the_bit(dtype, beta1):
    rng = np.random.default_rng(SEED)
    size = 1003
    states = []
    for module in (reference, fast):
        params, m, v = (rng.standard_normal(size).astype(dtype) for _ in range(3))
        states.append((module, params, m, np.abs(v)))
        rng = np.random.default_rng(SEED)
    scalars = [dtype(value) for value in (1e-3 * np.sqrt(1 - 0.999 ** 3), beta1, 0.999, 1e-8)]
    grads = [rng.standard_normal(size).astype(dtype) for _ in range(3)]
    for module, params, m, v in states:
        for grad in grads:
            module.adam_update(params, grad, m, v, *scalars)
    (_, *updated), (_, *updated_ref) = states
    _assert_same_bits(updated, updated_ref)


def _all_kernel_outputs(dtype):
    """Every fast kernel on shapes big enough for BLAS to thread and to sum over > 256 terms."""
    rng = np.random.default_rng(SEED)
    outputs = []
    for n, c, h, out_ch, stride in [(4, 50, 15, 32, 1),    # rows layout, K = 450, N*OH*OW = 900
                                    (4, 3, 24, 32, 1),     # columns layout, N*OH*OW = 2304
                                    (10, 1, 28, 64, 2),    # Omniglot's first layer
                                    (10, 64, 14, 64, 2)]:  # and its second, K = 576
        x = rng.standard_normal((n, c, h, h)).astype(dtype)
        weight = rng.standard_normal((out_ch, c, 3, 3)).astype(dtype)
        pad = same_pad(h, h, 3, stride)
        y = fast.conv2d_forward(x, weight, stride, pad)
        dy = rng.standard_normal(y.shape).astype(dtype)
        outputs += [y, fast.conv2d_backward_input(dy, weight, x.shape, stride, pad),
                    fast.conv2d_backward_weight(dy, x, weight.shape, stride, pad)]
    x = rng.standard_normal((4, 8, 13, 13)).astype(dtype)
    y, argmax = fast.maxpool2d_forward(x, 3, 2, (1, 1, 1, 1))
    dy = rng.standard_normal(y.shape).astype(dtype)
    outputs += [y, argmax, fast.maxpool2d_backward(dy, argmax, x.shape, 3, 2, (1, 1, 1, 1))]
    gamma, beta = rng.standard_normal((2, x.shape[1])).astype(dtype)
    y, x_hat, inv_std = fast.batchnorm2d_forward(x, gamma, beta, 1e-3)
    dy = rng.standard_normal(x.shape).astype(dtype)
    return outputs + [y, x_hat, inv_std, *fast.batchnorm2d_backward(dy, x_hat, inv_std, gamma)]


def _assert_same_bits(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


@needs_jit
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_results_do_not_depend_on_the_numba_thread_count(dtype):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("Numba runs with a single thread here")
    previous = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = _all_kernel_outputs(dtype)
        numba.set_num_threads(2)
        two = _all_kernel_outputs(dtype)
    finally:
        numba.set_num_threads(previous)
    _assert_same_bits(one, two)


def _kernel_outputs_in_a_process(tmp_path, dtype, environment_threads, set_threads):
    """`_all_kernel_outputs` computed in a fresh process whose environment sets
    ``OPENBLAS_NUM_THREADS=environment_threads``; with ``set_threads``, the process then
    calls ``reptile_np.threads.set_threads(set_threads)`` first. The BLAS kernel variables
    (``OPENBLAS_CORETYPE``, ...) are passed through as they are."""
    out = tmp_path / f"{dtype.__name__}-{environment_threads}-{set_threads}.npz"
    code = ("import sys; import numpy as np\n"
            f"sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})\n"
            "from reptile_np import threads\n"
            f"if {set_threads!r} is not None: assert threads.set_threads({set_threads!r})\n"
            "import test_kernels\n"
            f"outputs = test_kernels._all_kernel_outputs(np.{dtype.__name__})\n"
            f"np.savez({str(out)!r}, *outputs)\n")
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(environment_threads))
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=300)
    with np.load(out) as archive:
        return [archive[f"arr_{k}"] for k in range(len(archive.files))]


@needs_jit
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_one_blas_thread_gives_the_same_bits_whatever_the_environment_says(tmp_path, dtype):
    """The guarantee the command line relies on: after ``threads.set_threads(1)`` (its
    default ``--threads 1``), every kernel gives the bits of a process started with one
    BLAS thread, for any ``OPENBLAS_NUM_THREADS`` and on whichever OpenBLAS kernel the
    environment selects. (Across BLAS thread counts there is no such guarantee: with
    OpenBLAS's Haswell kernel, float32 convolutions differ by up to 4e-4 relative
    between 1 and 2 threads.)"""
    if reptile_threads.blas_info()["threads"] is None:
        pytest.skip("NumPy's BLAS is not an OpenBLAS reptile_np.threads can reach")
    one = _kernel_outputs_in_a_process(tmp_path, dtype, 1, None)
    _assert_same_bits(one, _kernel_outputs_in_a_process(tmp_path, dtype, 2, 1))
    _assert_same_bits(one, _kernel_outputs_in_a_process(tmp_path, dtype, 1, 1))


def _core_calls():
    """(jitted core, arguments) on tiny float32 inputs covering padding and both strides."""
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((2, 3, 5, 6)).astype(np.float32)
    geometry = (3, 3, 2, 1, 0, 3, 3)            # kh, kw, stride, pad top, pad left, out_h, out_w
    columns = rng.standard_normal((2, 27, 9)).astype(np.float32)
    rows = rng.standard_normal((18, 27)).astype(np.float32)
    pooled = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    argmax = rng.integers(0, 4, size=(2, 3, 3, 3)).astype(np.int8)
    return [
        (fast._swap_leading_axes, (x[0],)),
        (fast._transpose_last_two, (x[0],)),
        (fast._im2col_columns, (x,) + geometry),
        (fast._im2col_rows, (x.transpose(0, 2, 3, 1).copy(),) + geometry),
        (fast._col2im_columns, (columns, 5, 6) + geometry),
        (fast._col2im_rows, (rows, 2, 5, 6) + geometry),
        (fast._maxpool_forward, (x, 2, 2, 2, 3)),
        (fast._maxpool_forward, (x, 3, 1, 3, 4)),
        (fast._maxpool_backward, (pooled, argmax, 6, 6, 2, 2)),
        (fast._batchnorm_forward, (rows.reshape(2, 9, 27), columns[0, :9, 0], columns[1, :9, 0],
                                   np.float32(1e-3), np.float32(54))),
        (fast._batchnorm_backward, (rows.reshape(2, 9, 27), columns.reshape(2, 9, 27),
                                    np.abs(columns[0, :9, 0]), columns[1, :9, 0], np.float32(54))),
        (fast._sum_over_examples, (columns,)),
        (fast._relu_forward, (rows.ravel(),)),
        (fast._relu_backward, (columns.ravel(), rows.ravel())),
        (fast._adam_update, (rows[0].copy(), rows[1], rows[2].copy(), np.abs(rows[3]),
                             *(np.float32(value) for value in (1e-3, 0.0, 0.999, 1.0, 0.001, 1e-8)))),
    ]


CORE_CALLS = _core_calls()


@needs_jit
@pytest.mark.parametrize("core, args", CORE_CALLS, ids=[core.__name__ for core, _ in CORE_CALLS])
def test_jitted_cores_equal_their_python_source(core, args):
    """Same returned arrays, and the same bits in the arguments a core updates in place."""
    compiled_args, interpreted_args = copy.deepcopy(args), copy.deepcopy(args)
    compiled, interpreted = core(*compiled_args), core.py_func(*interpreted_args)
    if not isinstance(compiled, tuple):
        compiled, interpreted = (compiled,), (interpreted,)
    arrays = [a for a in compiled_args if isinstance(a, np.ndarray)]
    arrays_ref = [a for a in interpreted_args if isinstance(a, np.ndarray)]
    _assert_same_bits([a for a in compiled if a is not None] + arrays,
                      [a for a in interpreted if a is not None] + arrays_ref)


@pytest.mark.usefixtures("restore_backend")
@pytest.mark.parametrize("name, module, mlp_module", [("numpy", reference, mlp_reference),
                                                      ("numba", fast, mlp_fast)])
def test_set_backend_binds_every_kernel_to_its_module(name, module, mlp_module):
    """One hop: after the switch, ``kernels.<name>`` is the backend's own function."""
    assert kernels.set_backend(name) == name
    assert kernels.get_backend() == name
    for kernel in kernels.KERNELS:
        assert getattr(kernels, kernel) is getattr(module, kernel), kernel
    assert kernels.mlp_sgd_inner_loop is mlp_module.mlp_sgd_inner_loop


@pytest.mark.usefixtures("restore_backend")
def test_conv2d_forward_saving_keeps_patches_and_weights_on_numba_and_the_input_on_numpy():
    x = np.random.default_rng(SEED).standard_normal((1, 2, 5, 5))
    w = np.ones((3, 2, 3, 3))
    kernels.set_backend("numpy")
    _, kept = kernels.conv2d_forward_saving(x, w, 1, (1, 1, 1, 1))
    assert kept is x
    kernels.set_backend("numba")
    _, (patches, weights) = kernels.conv2d_forward_saving(x, w, 1, (1, 1, 1, 1))
    assert patches.shape == (1, 2 * 3 * 3, 5 * 5)   # columns layout
    assert weights.shape == (3, 2 * 3 * 3)


@pytest.mark.usefixtures("restore_backend")
def test_set_backend_rejects_unknown_names():
    with pytest.raises(ValueError, match="backend must be one of"):
        kernels.set_backend("cuda")


def _jit_settings_in_a_fresh_process(**environment):
    """(FASTMATH, CACHE, fastmath flag, cache class) of `fast` imported with ``environment``."""
    probe = ("from reptile_np.kernels import fast; core = fast._im2col_columns; "
             "print(fast.FASTMATH, fast.CACHE, core.targetoptions['fastmath'], "
             "type(core._cache).__name__)")
    env = dict(os.environ, **environment)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                            text=True, check=True, cwd=root)
    return result.stdout.split()


@needs_jit
def test_jit_settings_default_to_cached_and_exact():
    assert _jit_settings_in_a_fresh_process(REPTILE_NP_FASTMATH="", REPTILE_NP_NUMBA_CACHE="") \
        == ["False", "True", "False", "FunctionCache"]


@needs_jit
@pytest.mark.parametrize("environment, expected", [
    ({"REPTILE_NP_FASTMATH": "1"}, ["True", "False", "True", "NullCache"]),
    ({"REPTILE_NP_NUMBA_CACHE": "0"}, ["False", "False", "False", "NullCache"]),
])
def test_jit_settings_follow_the_environment(environment, expected):
    assert _jit_settings_in_a_fresh_process(**environment) == expected


def test_without_numba_everything_runs_on_numpy():
    """Numba is optional: when it cannot be imported the NumPy kernels take over, with
    one warning naming the package to install, and a model still trains."""
    code = ("import sys, warnings; sys.modules['numba'] = None\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            "    from reptile_np import kernels, models\n"
            "import numpy as np\n"
            "model = models.omniglot_cnn(5)\n"
            "theta = model.init(np.random.default_rng(0))\n"
            "loss, grad = model.loss_and_grad(theta, np.ones((5, 1, 28, 28), np.float32), np.arange(5))\n"
            "print(kernels.get_backend(), np.isfinite(grad).all(), len(caught), 'pip install numba' in str(caught[0].message))\n")
    env = dict(os.environ, REPTILE_NP_BACKEND="numba")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["numpy", "True", "1", "True"]
