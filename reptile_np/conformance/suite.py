"""Writing the suite: every case's inputs and expected outputs, computed by reptile_np itself.

Each case is one call of one adapter callable (its ``kind``) with the case's inputs, and
the outputs that call must return. The expected outputs come from the library's own
functions (`layers`, `losses`, `models`, `optim`, `meta`, `evaluate`), so the suite
states what reptile_np computes, and `check` of our own thin adapter passes by
construction; PyTorch and JAX adapters written from the documented semantics
(``examples/adapters/``) are the independent evidence that those semantics are the
paper's.

A case may also carry *mistakes*: the outputs a usual porting mistake produces (the
reduction swapped, Adam reset per task, PyTorch's padding=1, FOMAML's raw gradient),
computed by the same functions with that one thing changed, so a failing adapter whose
outputs match one is told which mistake it made. Sizes are tiny: the whole suite is
written in about a second and checked in a few.
"""
import json
from pathlib import Path

import numpy as np

from .. import __version__, evaluate, losses, meta, optim
from ..files import ensure_writable_dir
from ..gradcheck import example_batch, example_theta, zero_gradient_tensors
from ..layers import BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU, Tanh
from ..models import MODELS, Sequential
from . import spec
from .spec import (ADAM_GIVEN_STATE, ADAM_RESET, BATCHNORM, EPSILON_SCHEDULE,
                   FOMAML_RAW_GRADIENT, MAML_SECOND_ORDER, MAXPOOL_SAME, MEAN_VS_SUM,
                   PADDING_1, RESTORE_STATE, SCHEDULE, TF_ADAM, TRANSDUCTIVE)

MANIFEST = "manifest.json"
DTYPES = (np.float64, np.float32)
TOLERANCE = {"float64": 1e-9, "float32": 2e-4}
"""Worst relative error allowed per output tensor (see `check.relative_error`). float64:
two exact computations that round differently agree to <= 1e-14 (measured against PyTorch
and JAX); float32 rounding (~6e-8 per operation) grows to ~1e-5 through a network and a
few Adam steps, which normalise small gradients."""

BATCH = 3   # examples per layer case


class _Case:
    """One case being assembled: its manifest record and its arrays (one .npz file)."""

    def __init__(self, name, kind, dtype, tests, causes):
        self.name, self.arrays = name, {}
        dtype_name = np.dtype(dtype).name if dtype is not None else "int64"
        self.record = {"name": name, "kind": kind, "dtype": dtype_name, "tests": tests,
                       "file": name.replace("/", "-") + ".npz", "inputs": {}, "expected": [],
                       "tolerance": TOLERANCE.get(dtype_name, 0.0), "causes": causes,
                       "mistakes": []}

    def array(self, key, value):
        """Store an input array; returns the reference the manifest holds for it."""
        self.arrays[f"input/{key}"] = np.asarray(value)
        return {"$array": f"input/{key}"}

    def inputs(self, **values):
        self.record["inputs"].update(values)

    def _outputs(self, prefix, outputs, floors):
        entries = []
        for name, value in _flatten(outputs):
            self.arrays[f"{prefix}/{name}"] = np.asarray(value)
            entries.append({"name": name, "array": f"{prefix}/{name}",
                            "floor": float(floors.get(name, 0.0))})
        return entries

    def expect(self, outputs, floors=None):
        """The expected outputs, ``{name: array or {name: array}}`` (nested one level)."""
        self.record["expected"] = self._outputs("expected", outputs, floors or {})

    def mistake(self, cause, outputs):
        """What ``cause`` would have returned (a subset of the expected outputs)."""
        floors = {entry["name"]: entry["floor"] for entry in self.record["expected"]}
        index = len(self.record["mistakes"])
        self.record["mistakes"].append(
            {"cause": cause, "expected": self._outputs(f"mistake{index}", outputs, floors)})


def _flatten(outputs):
    """``{"grads": {"0.weight": a}}`` -> ``[("grads/0.weight", a)]``: the manifest's names."""
    for name, value in outputs.items():
        if isinstance(value, dict):
            yield from ((f"{name}/{inner}", array) for inner, array in value.items())
        else:
            yield name, value


def _layer_params(layer, in_shape, rng, dtype):
    """The layer's initial parameters with constant tensors made random (`example_theta`)."""
    if not layer.param_shapes:
        return {}
    model = Sequential([layer], in_shape)
    return dict(zip(layer.param_shapes, model.layer_params(example_theta(model, rng, dtype))[0]))


LAYER_CASES = (
    # name, layer, input shape (one example), what it tests, usual causes
    ("conv2d-k3-s1-pad1", Conv2d(2, 3, 3, 1, 1), (2, 5, 6),
     "cross-correlation with symmetric zero padding 1, weights (out, in, kh, kw)", []),
    ("conv2d-k3-s1-same", Conv2d(2, 3, 3, 1, "same"), (2, 5, 6),
     "TF 'same' at stride 1: pads 1 on every side for a 3x3 kernel", []),
    ("conv2d-k3-s2-same-odd", Conv2d(2, 3, 3, 2, "same"), (2, 7, 7),
     "TF 'same' at stride 2 on an odd size: 7 -> 4, pads (1, 1)", []),
    ("conv2d-k3-s2-same-even", Conv2d(2, 3, 3, 2, "same"), (2, 8, 6),
     "TF 'same' at stride 2 on even sizes: 8 -> 4 and 6 -> 3, pads (0, 1): the extra cell "
     "at the bottom/right", [PADDING_1]),
    ("conv2d-k2-s2-valid", Conv2d(2, 3, 2, 2, 0), (2, 7, 5),
     "no padding at stride 2 on odd sizes: the last row and column are never read", []),
    ("conv2d-k3-s2-pad-0-2-1-0", Conv2d(2, 3, 3, 2, (0, 2, 1, 0)), (2, 6, 5),
     "explicit (top, bottom, left, right) padding", []),
    ("batchnorm2d", BatchNorm2d(3), (3, 4, 5),
     "batch statistics over (N, H, W) per channel, biased variance, eps 1e-3", [BATCHNORM]),
    ("relu", ReLU(), (3, 4, 5), "max(x, 0), gradient 0 for x < 0", []),
    ("tanh", Tanh(), (7,), "tanh and its derivative 1 - y^2", []),
    ("maxpool2d-valid", MaxPool2d(2, 2, "valid"), (3, 5, 7),
     "2x2 max-pool at stride 2 dropping the incomplete last row and column", []),
    ("maxpool2d-same-odd", MaxPool2d(2, 2, "same"), (3, 5, 7),
     "TF 'same' 2x2 max-pool on odd sizes: 5 -> 3, 7 -> 4, the padded cells never win",
     [MAXPOOL_SAME]),
    ("flatten", Flatten(), (3, 2, 4), "flatten in (C, H, W) order", [spec.FLATTEN]),
    ("linear", Linear(7, 5), (7,), "y = x W^T + b with W of shape (out, in)", []),
)


def _layer_cases(dtype, rng):
    for name, layer, in_shape, tests, causes in LAYER_CASES:
        case = _Case(f"layer/{name}/{np.dtype(dtype).name}", "layer_forward_backward", dtype,
                     f"forward output and input/parameter gradients for a random upstream "
                     f"gradient: {tests}", causes or [f"the {name} forward/backward formulas"])
        params = _layer_params(layer, in_shape, rng, dtype)
        x = rng.standard_normal((BATCH,) + in_shape).astype(dtype)
        y, cache = layer.forward(tuple(params.values()), x)
        dy = rng.standard_normal(y.shape).astype(dtype)
        dx, dparams = layer.backward(tuple(params.values()), cache, dy)
        case.inputs(layer=spec.layer_spec(layer), x=case.array("x", x), dy=case.array("dy", dy),
                    params={key: case.array(f"params/{key}", value)
                            for key, value in params.items()})
        case.expect({"y": y, "dx": dx, "dparams": dict(zip(params, dparams))})
        if PADDING_1 in causes:
            wrong = Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                           layer.stride, 1)
            y, cache = wrong.forward(tuple(params.values()), x)
            dx, dparams = wrong.backward(tuple(params.values()), cache, dy)
            case.mistake(PADDING_1, {"y": y, "dx": dx, "dparams": dict(zip(params, dparams))})
        yield case


LOSS_CASES = (("cross_entropy", losses.softmax_cross_entropy, (6, 4)),
              ("mse", losses.mean_squared_error, (6, 2)))


def _loss_cases(dtype, rng):
    for loss, function, shape in LOSS_CASES:
        output = rng.standard_normal(shape).astype(dtype)
        target = (np.arange(shape[0]) % shape[1] if loss == "cross_entropy"
                  else rng.standard_normal(shape).astype(dtype))
        for reduction in ("sum", "mean"):
            words = {"cross_entropy": "softmax cross-entropy logsumexp(z) - z[y] on integer "
                                      "labels", "mse": "squared error over every element"}[loss]
            case = _Case(f"loss/{loss}-{reduction}/{np.dtype(dtype).name}",
                         "loss_forward_backward", dtype,
                         f"{words}, {reduction} over the batch: the loss and its gradient "
                         f"with respect to the output", [MEAN_VS_SUM])
            case.inputs(loss=loss, reduction=reduction, output=case.array("output", output),
                        target=case.array("target", target))
            value, doutput = function(output, target, reduction)
            case.expect({"loss": value, "doutput": doutput})
            other = "mean" if reduction == "sum" else "sum"
            value, doutput = function(output, target, other)
            case.mistake(MEAN_VS_SUM, {"loss": value, "doutput": doutput})
            yield case


NETWORK_EXAMPLES = {"omniglot": 5, "miniimagenet": 2, "sine": 10}


def _padding_1_model(model):
    """The model a port gets by writing PyTorch's padding=1 for every TF 'same' conv."""
    layer_specs = [dict(layer, padding=1)
                   if layer["type"] == "conv2d" and layer["padding"] == "same" else layer
                   for layer in spec.network_spec(model)["layers"]]
    return spec.model_from_spec(dict(spec.network_spec(model), layers=layer_specs))


def _network_outputs(model, theta, x, y, reduction):
    loss, grad = model.loss_and_grad(theta, x, y, reduction)
    return {"output": model.forward(theta, x), "loss": loss, "grads": model.state_dict(grad)}


def _network_cases(dtype, rng):
    for name, build in MODELS.items():
        model = build()
        theta = example_theta(model, rng, dtype)
        x, y = example_batch(model, rng, NETWORK_EXAMPLES[name], dtype)
        case = _Case(f"network/{name}/{np.dtype(dtype).name}", "network_forward_backward", dtype,
                     f"the paper's {name} network on a batch of {len(x)}: output, loss summed "
                     f"over the batch, the gradient of every parameter",
                     spec.network_causes(model, model.input_shape))
        case.inputs(network=spec.network_spec(model), reduction="sum",
                    params={key: case.array(f"params/{key}", value)
                            for key, value in model.state_dict(theta).items()},
                    x=case.array("x", x), y=case.array("y", y))
        outputs = _network_outputs(model, theta, x, y, "sum")
        # A conv bias followed by BatchNorm has the exact gradient 0: compare it at the scale
        # of the whole gradient, where its rounding noise (~1e-17) belongs.
        scale = max(float(np.abs(g).max()) for g in outputs["grads"].values())
        case.expect(outputs, {f"grads/{key}": scale for key in zero_gradient_tensors(model)})
        case.mistake(MEAN_VS_SUM, _network_outputs(model, theta, x, y, "mean"))
        if PADDING_1 in case.record["causes"]:
            case.mistake(PADDING_1, _network_outputs(_padding_1_model(model), theta, x, y, "sum"))
        yield case


OPTIMIZER_STEPS, OPTIMIZER_SIZE = 4, 7


def _optimizer_cases(dtype, rng):
    theta = rng.standard_normal(OPTIMIZER_SIZE).astype(dtype)
    grads = rng.standard_normal((OPTIMIZER_STEPS, OPTIMIZER_SIZE)).astype(dtype)
    settings = [({"name": "adam", "lr": 0.01, "beta1": 0.0, "beta2": 0.999, "eps": 1e-8},
                 "TF-form Adam with beta1 = 0 (the paper's)"),
                ({"name": "adam", "lr": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
                 "TF-form Adam with beta1 = 0.9"),
                ({"name": "sgd", "lr": 0.1}, "SGD, params -= lr * grad")]
    for optimizer, words in settings:
        label = optimizer["name"] + (f"-beta1-{optimizer['beta1']}" if "beta1" in optimizer else "")
        case = _Case(f"optimizer/{label}/{np.dtype(dtype).name}", "optimizer_steps", dtype,
                     f"{words}: {OPTIMIZER_STEPS} steps from a fresh state, the parameters "
                     f"and the state after each", [TF_ADAM] if optimizer["name"] == "adam"
                     else ["SGD: params - lr * grad"])
        case.inputs(optimizer=optimizer, params=case.array("params", theta),
                    grads=case.array("grads", grads))
        opt = make_optimizer(optimizer, OPTIMIZER_SIZE, dtype)
        params, history = theta.copy(), {"params": [], "m": [], "v": [], "t": []}
        for grad in grads:
            opt.step(params, grad)
            history["params"].append(params.copy())
            for key, value in opt.snapshot().items():
                history[key].append(value)
        case.expect({key: np.array(value) for key, value in history.items() if value})
        yield case


def _schedule_cases():
    """The index streams, documented as numpy.random.default_rng(seed)'s."""
    draws = [("minibatches-straddling", 7, 3, 5, False,
              "without replacement: 15 indices from 3 shuffled passes over 7 samples; "
              "batches 3 and 5 straddle two passes"),
             ("minibatches-replacement", 7, 3, 4, True,
              "with replacement: every batch an independent draw of 3 distinct samples")]
    for label, num_samples, batch_size, num_batches, replacement, words in draws:
        case = _Case(f"schedule/{label}", "minibatch_schedule", None,
                     f"meta.minibatches for seed 5, {words}", [SCHEDULE])
        case.inputs(num_samples=num_samples, batch_size=batch_size, num_batches=num_batches,
                    seed=5, replacement=replacement)
        case.expect({"batches": np.array(meta.minibatches(
            num_samples, batch_size, num_batches, np.random.default_rng(5), replacement))})
        yield case
    labels = np.array([2, 0, 1, 1, 2, 0, 0, 1, 2])
    case = _Case("schedule/fomaml-separate-tail", "tail_schedule", None,
                 "meta.task_batches with tail_shots = 1 for seed 5: the first example of every "
                 "label set aside as the last batch, 3 batches of 2 drawn from the other 6",
                 [SCHEDULE])
    case.inputs(labels=case.array("labels", labels), batch_size=2, num_batches=4, seed=5,
                replacement=False, tail_shots=1)
    batches = meta.task_batches(labels, 2, 4, np.random.default_rng(5), tail_shots=1)
    case.expect({"batches": np.array(batches[:-1]), "tail": batches[-1]})
    yield case


def meta_network():
    """The small network of the meta-iteration and evaluation cases: 1x6x6 inputs, a TF
    'same' stride-2 conv (6 -> 3, pads (0, 1)), BatchNorm after the ReLU (so the conv bias
    has a gradient), a 'same' max-pool (3 -> 2), 3 classes; 75 parameters."""
    return Sequential([Conv2d(1, 3, 3, 2, "same"), ReLU(), BatchNorm2d(3),
                       MaxPool2d(2, 2, "same"), Flatten(), Linear(12, 3)], (1, 6, 6))


META_SEED, INNER_BATCH, INNER_ITERS, EPSILON = 3, 4, 3, 0.7
ADAM = {"name": "adam", "lr": 0.01, "beta1": 0.0, "beta2": 0.999, "eps": 1e-8}
SGD = {"name": "sgd", "lr": 0.05}


def make_optimizer(settings, num_params, dtype, state=None):
    """Our optimiser for a manifest's ``optimizer`` dict, from ``state`` (an Adam snapshot;
    None: fresh)."""
    if settings["name"] == "sgd":
        return optim.SGD(settings["lr"])
    opt = optim.Adam(num_params, settings["lr"], settings["beta1"], settings["beta2"],
                     settings["eps"], dtype)
    if state is not None:
        opt.restore(state)
    return opt


def _state_outputs(opt):
    state = opt.snapshot()
    return {"optimizer_state": state} if state else {}


def _fomaml_raw_gradient_step(model, theta, tasks, opt, rng, epsilon, tail_shots):
    """The mistake: FOMAML moving theta by the raw gradient of the last batch at
    phi_(k-1), ``theta - epsilon * mean_j g_j``, instead of by the last step's change."""
    raw = []
    for x, y in tasks:
        batches = meta.task_batches(y, INNER_BATCH, INNER_ITERS, rng, tail_shots=tail_shots)
        before_last = meta.inner_loop(model, theta, x, y, batches[:-1], opt)
        raw.append(model.loss_and_grad(before_last, x[batches[-1]], y[batches[-1]])[1])
        meta.inner_loop(model, before_last, x, y, batches[-1:], opt)
    return theta - theta.dtype.type(epsilon) * np.mean(raw, axis=0)


def _meta_step(algorithm, model, theta, tasks, opt, rng, reduction):
    """One meta-iteration of ``algorithm`` (a manifest dict) by `reptile_np.meta`."""
    name = algorithm["name"]
    common = dict(inner_batch=INNER_BATCH, inner_iters=INNER_ITERS, epsilon=EPSILON,
                  reduction=reduction)
    if name == "reptile":
        return meta.reptile_step(model, theta, tasks, opt, rng, **common)
    if name == "fomaml":
        return meta.fomaml_step(model, theta, tasks, opt, rng, tail_shots=algorithm["tail_shots"],
                                **common)
    if name == "combination":
        return meta.combination_step(model, theta, tasks, opt, rng,
                                     step_weights=algorithm["step_weights"], **common)
    return meta.maml_step(model, theta, tasks, rng, INNER_BATCH, INNER_ITERS, opt.lr, EPSILON,
                          reduction=reduction)


META_CASES = (
    ("reptile-serial", {"name": "reptile"}, ADAM, 1,
     "serial Reptile (one task): 3 inner Adam steps from the given state, then "
     "theta + epsilon (phi - theta)"),
    ("reptile-batched", {"name": "reptile"}, ADAM, 2,
     "batched Reptile over 2 tasks, one inner Adam state carried from task to task: "
     "theta + epsilon (mean phi - theta)"),
    ("reptile-batched-sgd", {"name": "reptile"}, SGD, 2, "batched Reptile with inner SGD"),
    ("fomaml-shared-tail", {"name": "fomaml", "tail_shots": None}, ADAM, 2,
     "FOMAML, shared tail: theta + epsilon mean_j (phi_k - phi_(k-1)), the last inner step's "
     "change"),
    ("fomaml-separate-tail", {"name": "fomaml", "tail_shots": 1}, ADAM, 2,
     "FOMAML, separate tail: the last batch is the first example of every label, the other "
     "batches are drawn from the rest"),
    ("combination-6.2", {"name": "combination", "step_weights": [0.5, 0.25, 1.0]}, SGD, 2,
     "the paper's section 6.2 family: theta + (epsilon / tasks) sum_j sum_i w_i "
     "(phi_j,i+1 - phi_j,i) with step weights (0.5, 0.25, 1)"),
    ("maml-exact", {"name": "maml"}, SGD, 2,
     "exact second-order MAML: 2 inner SGD steps, the meta-loss on the third batch, "
     "theta - epsilon lr mean_j dL_j(phi_j)/dtheta through the inner steps"),
)


def _task(rng, dtype, shots):
    """3 classes of ``shots`` examples for `meta_network`, labels 0, 1, 2, 0, 1, 2, ..."""
    labels = np.arange(3 * shots) % 3
    return rng.random((len(labels), 1, 6, 6)).astype(dtype), labels


def _given_adam_state(rng, num_params, dtype):
    """A state a run could have after 5 steps, so a port that starts from zeros fails."""
    m = (0.01 * rng.standard_normal(num_params)).astype(dtype)
    return {"m": m, "v": (m * m + 1e-5).astype(dtype), "t": np.int64(5)}


def _meta_cases(dtype, rng):
    model = meta_network()
    theta = example_theta(model, rng, dtype)
    adam_state = _given_adam_state(rng, model.num_params, dtype)
    for label, algorithm, optimizer, num_tasks, words in META_CASES:
        tasks = [_task(rng, dtype, 3) for _ in range(num_tasks)]
        state = adam_state if optimizer["name"] == "adam" else None
        causes = list(spec.network_causes(model, model.input_shape))
        if state is not None:
            causes += [ADAM_GIVEN_STATE] + ([ADAM_RESET] if num_tasks > 1 else [])
        causes += {"fomaml": [FOMAML_RAW_GRADIENT], "maml": [MAML_SECOND_ORDER]}.get(
            algorithm["name"], [])
        case = _Case(f"meta/{label}/{np.dtype(dtype).name}", "meta_step", dtype,
                     f"{words}; the new theta and inner optimiser state; batches given",
                     causes)
        tail_shots = algorithm.get("tail_shots")
        draw = np.random.default_rng(META_SEED)
        batches = [meta.task_batches(y, INNER_BATCH, INNER_ITERS, draw, tail_shots=tail_shots)
                   for _, y in tasks]
        case.inputs(algorithm=algorithm, network=spec.network_spec(model),
                    theta=case.array("theta", theta), optimizer=optimizer,
                    optimizer_state=None if state is None else
                    {key: case.array(f"optimizer_state/{key}", value)
                     for key, value in state.items()},
                    tasks=[{"x": case.array(f"tasks/{j}/x", x), "y": case.array(f"tasks/{j}/y", y)}
                           for j, (x, y) in enumerate(tasks)],
                    batches=[[case.array(f"batches/{j}/{i}", batch) for i, batch in enumerate(bs)]
                             for j, bs in enumerate(batches)],
                    epsilon=EPSILON, reduction="sum")

        def run(net, reduction, fresh_per_task=False):
            opt = make_optimizer(optimizer, model.num_params, dtype, state)
            if fresh_per_task:   # the mistake: theta moves by the mean of per-task steps
                rng_batches, thetas = np.random.default_rng(META_SEED), []
                for task in tasks:
                    opt.reset()
                    thetas.append(_meta_step(algorithm, net, theta, [task], opt, rng_batches,
                                             reduction))
                return {"theta": np.mean(thetas, axis=0), **_state_outputs(opt)}
            new = _meta_step(algorithm, net, theta, tasks, opt, np.random.default_rng(META_SEED),
                             reduction)
            return {"theta": new, **_state_outputs(opt)}

        case.expect(run(model, "sum"))
        case.mistake(MEAN_VS_SUM, run(model, "mean"))
        case.mistake(PADDING_1, run(_padding_1_model(model), "sum"))
        if state is not None:
            case.mistake(ADAM_RESET, run(model, "sum", fresh_per_task=True))
        if algorithm["name"] == "fomaml":
            opt = make_optimizer(optimizer, model.num_params, dtype, state)
            case.mistake(FOMAML_RAW_GRADIENT, {"theta": _fomaml_raw_gradient_step(
                model, theta, tasks, opt, np.random.default_rng(META_SEED), EPSILON, tail_shots)})
        if algorithm["name"] == "maml":
            first_order = np.mean([meta.maml_gradient(model, theta, x, y, bs, SGD["lr"])[1]
                                   for (x, y), bs in zip(tasks, batches)], axis=0)
            case.mistake(MAML_SECOND_ORDER,
                         {"theta": theta - theta.dtype.type(EPSILON * SGD["lr"]) * first_order})
        yield case


def _epsilon_case():
    case = _Case("schedule/epsilon/float64", "epsilon_schedule", np.float64,
                 "meta.meta_step_size over a run of 10 meta-iterations from 1.0 towards 0.0",
                 [EPSILON_SCHEDULE])
    case.inputs(meta_iters=10, initial=1.0, final=0.0)
    case.expect({"epsilon": np.array([meta.meta_step_size(i, 10, 1.0, 0.0) for i in range(10)])})
    return case


EVAL_BATCH, EVAL_ITERS = 4, 3


def _evaluation_cases(dtype, rng):
    model = meta_network()
    theta = example_theta(model, rng, dtype)
    state = _given_adam_state(rng, model.num_params, dtype)
    x, y = _task(rng, dtype, 3)      # 3-way, K = 2 shots plus one query per class
    batches = meta.minibatches(len(y) - 3, EVAL_BATCH, EVAL_ITERS, np.random.default_rng(4))
    for transductive in (True, False):
        label = "transductive" if transductive else "non-transductive"
        case = _Case(f"evaluate/{label}/{np.dtype(dtype).name}", "evaluate_task", dtype,
                     f"one 3-way 2-shot evaluation task, {label}: the queries are the first "
                     f"example of each label; 3 Adam steps on the support batches from the "
                     f"given state; the adapted phi, the query predictions and the restored "
                     f"optimiser state",
                     spec.network_causes(model, model.input_shape)
                     + [TRANSDUCTIVE, RESTORE_STATE, ADAM_GIVEN_STATE, ADAM_RESET])
        case.inputs(network=spec.network_spec(model), theta=case.array("theta", theta),
                    optimizer=ADAM, optimizer_state={key: case.array(f"optimizer_state/{key}", v)
                                                     for key, v in state.items()},
                    x=case.array("x", x), y=case.array("y", y), num_classes=3,
                    batches=[case.array(f"batches/{i}", batch) for i, batch in enumerate(batches)],
                    transductive=transductive, reduction="sum")

        def run(net, reduction, fresh=False):
            opt = make_optimizer(ADAM, model.num_params, dtype, None if fresh else state)
            phi, predictions = evaluate.adapt_and_predict(net, theta, opt, (x, y), batches, 3,
                                                          transductive, reduction)
            return {"phi": phi, "predictions": predictions, **_state_outputs(opt)}

        case.expect(run(model, "sum"))
        case.mistake(MEAN_VS_SUM, run(model, "mean"))
        case.mistake(PADDING_1, run(_padding_1_model(model), "sum"))
        wrong = run(model, "sum", fresh=True)
        case.mistake(ADAM_RESET, {"phi": wrong["phi"], "predictions": wrong["predictions"]})
        yield case


def build_cases(seed=0):
    """Every case, in the manifest's order (seeded: the suite is the same at every call)."""
    rng = np.random.default_rng(seed)
    cases = []
    for dtype in DTYPES:
        cases += list(_layer_cases(dtype, rng))
        cases += list(_loss_cases(dtype, rng))
        cases += list(_network_cases(dtype, rng))
        cases += list(_optimizer_cases(dtype, rng))
    cases += list(_schedule_cases())
    cases.append(_epsilon_case())
    for dtype in DTYPES:
        cases += list(_meta_cases(dtype, rng))
        cases += list(_evaluation_cases(dtype, rng))
    return cases


def write_suite(directory, seed=0):
    """Write the suite: ``manifest.json`` and one ``.npz`` per case into ``directory``.

    Returns:
        The manifest (a dict).

    Raises:
        DataError (an OSError): naming ``directory`` when it cannot be written.
    """
    directory = Path(directory)
    ensure_writable_dir(directory, "directory")
    cases = build_cases(seed)
    for case in cases:
        np.savez(directory / case.record["file"], **case.arrays)
    manifest = {"format": spec.FORMAT, "version": spec.VERSION, "reptile_np_version": __version__,
                "seed": seed, "layouts": "PyTorch: NCHW activations, conv weight (out, in, kh, "
                "kw), linear weight (out, in), state_dict names; see docs/conformance.md",
                "cases": [case.record for case in cases]}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest
