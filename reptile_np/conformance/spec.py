"""The suite's words: layers and networks as JSON specs, the case record, the usual mistakes.

A spec is what a port needs to build the layer in its own framework (see
docs/conformance.md for every field)::

    {"type": "conv2d", "in_channels": 1, "out_channels": 3, "kernel_size": 3,
     "stride": 2, "padding": "same"}

``padding`` of a conv2d is an int (symmetric, as PyTorch), ``[top, bottom, left, right]``
or ``"same"`` (TensorFlow's: ceil(size / stride) outputs, the odd padding cell at the
bottom/right); of a maxpool2d ``"valid"`` or ``"same"`` (padded cells are -inf).
A network spec is ``{"layers": [...], "input_shape": [...], "loss": ...}``; its
parameters are named ``"<layer index>.weight"`` / ``"<layer index>.bias"``, PyTorch's
``nn.Sequential`` state_dict names.
"""
from ..layers import BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU, Tanh
from ..models import Sequential

FORMAT = "reptile-np conformance"
VERSION = 1

# The usual mistakes, each as the hint a failing case prints (and tests look for).
MEAN_VS_SUM = "differs by a factor of batch size: mean vs sum reduction"
PADDING_1 = "padding=1 instead of TF 'same' at stride 2 (an even size pads 0 before, 1 after)"
ADAM_RESET = "Adam state reset per task (the paper's code keeps one inner state for the run)"
FOMAML_RAW_GRADIENT = "FOMAML used the raw last gradient instead of the last parameter change"
MAXPOOL_SAME = "max-pool 'same' must pad the bottom/right with -inf (PyTorch: ceil_mode=True)"
BATCHNORM = ("BatchNorm must use the current batch's statistics with the biased variance "
             "and eps 1e-3, no running averages")
FLATTEN = "flatten in (C, H, W) order with the dense weight (out, in), PyTorch layouts"
TF_ADAM = ("TF-form Adam: bias correction folded into the step size, eps added to the "
           "uncorrected sqrt(v); beta1 = 0 makes m the last gradient")
ADAM_GIVEN_STATE = "the inner Adam must start from the given state (m, v, t), not from zeros"
SCHEDULE = "numpy.random.default_rng(seed): concatenated permutations, cut into batches"
EPSILON_SCHEDULE = "epsilon_i = (i/M) final + (1 - i/M) initial, i from 0: it never reaches final"
RESTORE_STATE = "evaluation must restore the optimiser state it started from"
TRANSDUCTIVE = ("transductive: the queries form one batch; otherwise each query joins the "
                "support set in a batch of N*K+1 and only its own prediction counts")
MAML_SECOND_ORDER = ("exact MAML differentiates through the inner SGD steps (Hessian terms); "
                     "dropping them gives FOMAML")

_LAYER_TYPES = {Conv2d: "conv2d", BatchNorm2d: "batchnorm2d", ReLU: "relu", Tanh: "tanh",
                MaxPool2d: "maxpool2d", Flatten: "flatten", Linear: "linear"}


def layer_spec(layer):
    """The JSON spec of one of our layers."""
    kind = _LAYER_TYPES[type(layer)]
    if kind == "conv2d":
        padding = layer.padding if isinstance(layer.padding, (str, int)) else list(layer.padding)
        return {"type": kind, "in_channels": layer.in_channels,
                "out_channels": layer.out_channels, "kernel_size": layer.kernel_size,
                "stride": layer.stride, "padding": padding}
    if kind == "batchnorm2d":
        return {"type": kind, "num_features": layer.num_features, "eps": layer.eps}
    if kind == "maxpool2d":
        return {"type": kind, "size": layer.size, "stride": layer.stride,
                "padding": layer.padding}
    if kind == "linear":
        return {"type": kind, "in_features": layer.in_features,
                "out_features": layer.out_features}
    return {"type": kind}


def network_spec(model):
    """The JSON spec of a `Sequential`: its layers, input shape and loss."""
    return {"layers": [layer_spec(layer) for layer in model.layers],
            "input_shape": list(model.input_shape), "loss": model.loss_name}


def layer_from_spec(spec):
    """Our layer for a spec (the inverse of `layer_spec`)."""
    kind = spec["type"]
    if kind == "conv2d":
        padding = spec["padding"] if isinstance(spec["padding"], (str, int)) \
            else tuple(spec["padding"])
        return Conv2d(spec["in_channels"], spec["out_channels"], spec["kernel_size"],
                      spec["stride"], padding)
    if kind == "batchnorm2d":
        return BatchNorm2d(spec["num_features"], spec["eps"])
    if kind == "maxpool2d":
        return MaxPool2d(spec["size"], spec["stride"], spec["padding"])
    if kind == "linear":
        return Linear(spec["in_features"], spec["out_features"])
    return {"relu": ReLU, "tanh": Tanh, "flatten": Flatten}[kind]()


def model_from_spec(spec):
    """Our `Sequential` for a network spec."""
    return Sequential([layer_from_spec(layer) for layer in spec["layers"]],
                      spec["input_shape"], spec["loss"])


def network_causes(model, input_shape, reduction="sum"):
    """The usual causes of a failure in a network with these layers on inputs of this
    shape (one example, no batch axis): the conventions it actually exercises."""
    causes, shape = [], tuple(input_shape)
    for layer in model.layers:
        if isinstance(layer, Conv2d) and layer.padding == "same" and \
                len(set(layer.pad(*shape[1:]))) > 1:
            causes.append(PADDING_1)
        elif isinstance(layer, MaxPool2d) and layer.padding == "same":
            causes.append(MAXPOOL_SAME)
        elif isinstance(layer, BatchNorm2d):
            causes.append(BATCHNORM)
        elif isinstance(layer, Flatten):
            causes.append(FLATTEN)
        shape = layer.output_shape(shape)
    if reduction == "sum":
        causes.append(MEAN_VS_SUM)
    return list(dict.fromkeys(causes))
