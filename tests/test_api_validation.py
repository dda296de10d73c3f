"""Misuse of the Python API raises a one-line ValueError that names the argument.

Each test is one misuse that used to be accepted, give a wrong result (NaN, a silent
broadcast, a dtype chosen by the order of a dict) or fail with another exception deep
inside; `_rejects` also holds every message to one short line, with arrays described by
shape rather than printed.
"""
import numpy as np
import pytest

from reptile_np import meta, models, optim
from reptile_np.data.synthetic import load_synthetic
from reptile_np.data.tasks import sample_task
from reptile_np.evaluate import evaluate, evaluate_task
from reptile_np.layers import Flatten, Linear
from reptile_np.models import Sequential


def _rejects(match, function, *args, **kwargs):
    """Call ``function``; it must raise a ValueError matching ``match``, in one short line."""
    with pytest.raises(ValueError, match=match) as error:
        function(*args, **kwargs)
    message = str(error.value)
    assert "\n" not in message and len(message) < 200, message
    return message


def _classifier():
    """A 3-way linear classifier on 4 features (the inner loop indexes x and y by the
    batches)."""
    model = Sequential([Linear(4, 3)], input_shape=(4,))
    return model, model.init(np.random.default_rng(0), dtype=np.float64)


def _task(num_x=10, num_y=10):
    rng = np.random.default_rng(1)
    return rng.normal(size=(num_x, 4)), np.arange(num_y) % 3


STEPS = {
    "reptile": lambda model, theta, tasks, rng: meta.reptile_step(
        model, theta, tasks, optim.SGD(0.1), rng, 5, 3, 0.5),
    "fomaml": lambda model, theta, tasks, rng: meta.fomaml_step(
        model, theta, tasks, optim.SGD(0.1), rng, 5, 3, 0.5),
    "combination": lambda model, theta, tasks, rng: meta.combination_step(
        model, theta, tasks, optim.SGD(0.1), rng, 5, 3, 0.5, [1, 1, 1]),
}


@pytest.mark.parametrize("step", STEPS)
def test_a_task_whose_y_is_shorter_than_x_names_the_task(step):
    # The batches are drawn from len(y), so x's extra examples were silently never used.
    model, theta = _classifier()
    tasks = [_task(), _task(num_x=10, num_y=8)]
    message = _rejects(r"^tasks\[1\]: ", STEPS[step], model, theta, tasks,
                       np.random.default_rng(0))
    assert "10" in message and "8" in message


def test_inner_loop_names_y_shorter_than_x():
    model, theta = _classifier()
    x, y = _task(num_x=10, num_y=8)
    _rejects(r"^y: .*10.*got 8\.$", meta.inner_loop, model, theta, x, y,
             [np.arange(4)], optim.SGD(0.1))


@pytest.mark.parametrize("step", STEPS)
def test_an_empty_task_list_names_tasks(step):
    # The mean over no tasks was NaN, and theta became NaN.
    model, theta = _classifier()
    _rejects(r"^tasks: expected a non-empty list", STEPS[step], model, theta, [],
             np.random.default_rng(0))


def _split():
    return load_synthetic(5, 5, 4, size=16)["test"]


def _glyph_classifier():
    model = Sequential([Flatten(), Linear(256, 5)], input_shape=(1, 16, 16))
    return model, model.init(np.random.default_rng(0))


RNG_USERS = {
    "minibatches": lambda rng: meta.minibatches(10, 5, 2, rng),
    "task_batches": lambda rng: meta.task_batches(np.arange(10) % 2, 3, 2, rng, tail_shots=1),
    "reptile_step": lambda rng: STEPS["reptile"](*_classifier(), [_task()], rng),
    "sample_task": lambda rng: sample_task(_split(), 3, 2, rng),
    "init": lambda rng: models.sine_mlp().init(rng),
    "evaluate_task": lambda rng: evaluate_task(
        *_glyph_classifier(), optim.SGD(0.1),
        sample_task(_split(), 3, 2, np.random.default_rng(0)), 3, 3, 2, rng),
    "evaluate": lambda rng: evaluate(*_glyph_classifier(), optim.SGD(0.1), _split(), 3, 1, 3, 2,
                                     4, rng),
}


@pytest.mark.parametrize("user", RNG_USERS)
def test_an_integer_seed_instead_of_a_generator_names_rng(user):
    # rng=0 used to end in AttributeError ('int' object has no attribute 'permutation').
    _rejects(r"^rng: expected a numpy\.random\.Generator .*got 0\.$", RNG_USERS[user], 0)


@pytest.mark.parametrize("num_classes", [0, -3, 2.5])
def test_sample_task_names_a_bad_num_classes(num_classes):
    _rejects(rf"^num_classes: expected an integer from 1 to 5 .*got {num_classes}\.$",
             sample_task, _split(), num_classes, 2, np.random.default_rng(0))


@pytest.mark.parametrize("constructor", [models.omniglot_cnn, models.miniimagenet_cnn])
@pytest.mark.parametrize("num_classes", [0, -3, 2.5])
def test_model_constructors_name_a_bad_num_classes(constructor, num_classes):
    # 0 and -3 used to build a model with an empty or negative output layer, 2.5 one
    # that failed only when initialised.
    _rejects(rf"^num_classes: expected an integer of at least 1, got {num_classes}\.$",
             constructor, num_classes)


@pytest.mark.parametrize("dtype", [np.int64, np.float16])
def test_init_names_a_dtype_other_than_float32_or_float64(dtype):
    _rejects(rf"^dtype: expected float32 or float64, got {np.dtype(dtype)}\.$",
             models.sine_mlp().init, np.random.default_rng(0), dtype=dtype)


def test_adam_names_zero_num_params():
    _rejects(r"^num_params: expected an integer of at least 1, got 0\.$", optim.Adam, 0)


def test_adam_names_an_integer_dtype():
    _rejects(r"^dtype: expected float32 or float64, got int32\.$", optim.Adam, 3,
             dtype=np.int32)


@pytest.mark.parametrize("params_size, grad_size, argument", [(3, 2, "grad"), (2, 2, "params")])
def test_adam_step_names_params_or_grad_of_the_wrong_length(params_size, grad_size, argument):
    adam = optim.Adam(3, dtype=np.float64)
    params = np.zeros(params_size)
    _rejects(rf"^{argument}: expected .*shape \(3,\), the size of the Adam state, "
             rf"got \({min(params_size, grad_size)},\)\.$",
             adam.step, params, np.ones(grad_size))
    assert adam.t == 0 and not params.any()   # refused before anything changed


def test_sgd_step_names_a_grad_that_would_broadcast():
    params = np.zeros(3)
    _rejects(r"^grad: expected the shape of params \(3,\), got \(1,\)\.$",
             optim.SGD(0.1).step, params, np.ones(1))
    assert not params.any()


def test_adam_restore_names_the_missing_entry():
    adam = optim.Adam(3, dtype=np.float64)
    state = adam.snapshot()
    del state["v"]
    _rejects(r"^state: expected the entries .* missing 'v'\.$", adam.restore, state)


def test_sgd_restore_refuses_an_adam_snapshot():
    # SGD would otherwise drop the moments of a resumed Adam run without a word.
    _rejects(r"^state: expected SGD's empty state \{\}, got entries \['m', 't', 'v'\]\.$",
             optim.SGD(0.1).restore, optim.Adam(3).snapshot())


def test_load_state_dict_refuses_mixed_dtypes_unless_dtype_is_given():
    model = models.sine_mlp()
    theta = model.init(np.random.default_rng(0), dtype=np.float64)
    state = model.state_dict(theta)
    state["2.bias"] = state["2.bias"].astype(np.float32)
    # Naming both dtypes and an entry of each, whichever comes first.
    _rejects(r"^state_dict: expected one dtype .*got float64 in '0\.weight' and float32 in "
             r"'2\.bias'\.$", model.load_state_dict, state)
    reordered = {"2.bias": state["2.bias"], **state}
    _rejects(r"^state_dict: expected one dtype", model.load_state_dict, reordered)
    for dtype in (np.float32, np.float64):   # an explicit dtype converts every entry
        loaded = model.load_state_dict(reordered, dtype=dtype)
        assert loaded.dtype == dtype
        np.testing.assert_array_equal(
            loaded, np.concatenate([np.ravel(state[name]).astype(dtype) for name in state]))


def test_load_state_dict_names_an_explicit_non_float_dtype():
    model = models.sine_mlp()
    state = model.state_dict(model.init(np.random.default_rng(0)))
    _rejects(r"^dtype: expected float32 or float64, got int64\.$", model.load_state_dict,
             state, dtype=np.int64)


def test_load_state_dict_names_a_list_without_printing_it():
    model = models.sine_mlp()
    weights = list(model.state_dict(model.init(np.random.default_rng(0))).values())
    _rejects(r"^state_dict: expected a mapping of parameter names to arrays, got list of "
             r"length 6\.$", model.load_state_dict, weights)


def test_evaluate_names_zero_num_tasks():
    # No tasks used to surface as "values: expected a non-empty sequence" from the
    # confidence interval, after the worker pool had started.
    _rejects(r"^num_tasks: expected an integer of at least 1, got 0\.$", evaluate,
             *_glyph_classifier(), optim.SGD(0.1), _split(), 3, 1, 3, 2, 0,
             np.random.default_rng(0))


def test_meta_step_size_names_zero_meta_iters():
    # It used to divide by zero.
    _rejects(r"^meta_iters: expected an integer of at least 1, got 0\.$", meta.meta_step_size,
             0, 0, 0.1, 0.0)


def test_evaluation_names_eval_batch_not_the_helper_argument():
    # Unchecked, minibatches would report its own "batch_size", a name the caller never used.
    model, theta = _glyph_classifier()
    message = r"^eval_batch: expected an integer of at least 1, got 0\.$"
    _rejects(message, evaluate, model, theta, optim.SGD(0.1), _split(), 3, 1, 0, 2, 4,
             np.random.default_rng(0))
    task = sample_task(_split(), 3, 2, np.random.default_rng(0))
    _rejects(message, evaluate_task, model, theta, optim.SGD(0.1), task, 3, 0, 2,
             np.random.default_rng(0))
