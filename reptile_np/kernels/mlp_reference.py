"""A multilayer perceptron's whole SGD inner loop, in readable NumPy.

The MLP is ``Linear -> act -> Linear -> ... -> Linear`` with one activation (tanh or
ReLU) between Linear layers and squared error on the output: the sine-wave model.
Its parameters are the flat vector of `reptile_np.models.Sequential`: for each
Linear layer, its weight (out, in) row-major, then its bias (out,).

This twin is the plain loop: every step runs the layers' own ``forward`` and ``backward``
(`reptile_np.layers.Linear`, `Tanh`, `ReLU`) and the loss, as `meta.inner_loop` does, so
it gives the same bits. `mlp_fast.py` holds its Numba twin with the same signature, and
`tests/test_mlp_loop.py` holds the two equal. `reptile_np.fused.mlp_sgd_inner_loop` calls
them (through `kernels.mlp_sgd_inner_loop`) for such models under plain SGD.
"""
import numpy as np

from . import checks
from ..losses import mean_squared_error


def layer_views(flat, widths):
    """Each Linear layer's (weight (out, in), bias (out,)) as views into ``flat``."""
    views, start = [], 0
    for fan_in, fan_out in zip(widths[:-1], widths[1:]):
        bias_start = start + fan_out * fan_in
        views.append((flat[start:bias_start].reshape(fan_out, fan_in),
                      flat[bias_start:bias_start + fan_out]))
        start = bias_start + fan_out
    return views


def mlp_layers(widths, activation):
    """The MLP's layers: Linear, activation, Linear, ..., Linear."""
    # Imported here: the layers import the kernel package, which imports this module.
    from ..layers import Linear, ReLU, Tanh
    layers = []
    for fan_in, fan_out in zip(widths[:-1], widths[1:]):
        layers += [Linear(fan_in, fan_out), Tanh() if activation == "tanh" else ReLU()]
    return layers[:-1]


def mlp_sgd_inner_loop(phi, widths, activation, x_batches, y_batches, lr, reduction, weight_decay):
    """One SGD step per batch on an MLP's flat parameters ``phi``, updated in place.

    Args:
        phi: (P,) float32 or float64, P = `checks.parameter_count`(widths).
        widths: the layer widths, input first: (1, 64, 64, 1) for the sine MLP.
        activation: "tanh" or "relu", applied after every Linear layer but the last.
        x_batches: (S, B, widths[0]) the inputs of S steps, of phi's dtype.
        y_batches: (S, B, widths[-1]) their targets.
        lr: the SGD learning rate.
        reduction: "mean" or "sum" of the squared errors of a batch.
        weight_decay: phi is multiplied by this before every step (1 = off).

    Raises:
        ValueError: if the arguments do not fit together (see `checks.mlp_sgd_inner_loop`);
        the Numba twin raises the same.

    Each step, with a_0 = x, W_l (out, in) and b_l the parameters of Linear layer l:

        forward:  z_l = a_{l-1} W_l^T + b_l;  a_l = act(z_l), but a_L = z_L (no activation)
        loss:     d_L = dloss/dz_L = 2 (a_L - y), divided by B * widths[-1] for "mean"
        backward: dW_l = d_l^T a_{l-1};  db_l = sum over the batch of d_l;
                  d_{l-1} = (d_l W_l) * act'(a_{l-1}), with tanh' = 1 - a^2, relu' = [a > 0]
        update:   phi -= lr * grad, grad holding every dW_l, db_l in phi's layout
    """
    checks.mlp_sgd_inner_loop(phi, widths, activation, x_batches, y_batches, reduction)
    real = phi.dtype.type
    grad = np.empty_like(phi)
    layers = mlp_layers(widths, activation)
    # Linear layers own a (weight, bias) view each, activations none.
    params = [views for linear in layer_views(phi, widths) for views in (linear, ())][:-1]
    grads = [views for linear in layer_views(grad, widths) for views in (linear, ())][:-1]
    for x, y in zip(x_batches, y_batches):
        if weight_decay != 1.0:
            phi *= real(weight_decay)
        out, caches = x, []
        for layer, layer_params in zip(layers, params):
            out, cache = layer.forward(layer_params, out)
            caches.append(cache)
        _, dout = mean_squared_error(out, y, reduction)
        for index in range(len(layers) - 1, -1, -1):
            dout, layer_grads = layers[index].backward(params[index], caches[index], dout,
                                                       input_grad=index > 0)
            for destination, value in zip(grads[index], layer_grads):
                destination[...] = value
        phi -= real(lr) * grad
