"""A JAX implementation of the conformance protocol, written from docs/conformance.md.

Pure functions of flat parameter vectors differentiated with jax.grad / jax.vjp (exact
MAML is jax.grad through the inner SGD steps); it does not import reptile_np. float64
needs ``jax_enable_x64``, set below. Check it with::

    reptile-np conformance --out suite
    reptile-np conformance --check suite --adapter examples/adapters/jax_adapter.py:Adapter

The suite's tensors are in PyTorch layouts, so the convolutions below use NCHW / OIHW
dimension numbers instead of transposing (docs/conformance.md gives the transposes to
JAX's and TF's usual NHWC / HWIO).
"""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np

from neutral import (NumpyParts, Optimizer, conv_padding, layer_params, pool_padding,
                     split_queries, unflatten)

jax.config.update("jax_enable_x64", True)


def apply_layer(spec, params, x):
    """The forward pass of one layer spec; params {"weight": w, "bias": b}."""
    kind = spec["type"]
    if kind == "conv2d":
        top, bottom, left, right = conv_padding(spec, x.shape[2], x.shape[3])
        y = jax.lax.conv_general_dilated(x, params["weight"], (spec["stride"],) * 2,
                                         [(top, bottom), (left, right)],
                                         dimension_numbers=("NCHW", "OIHW", "NCHW"))
        return y + params["bias"][None, :, None, None]
    if kind == "batchnorm2d":
        mean = x.mean(axis=(0, 2, 3), keepdims=True)
        var = ((x - mean) ** 2).mean(axis=(0, 2, 3), keepdims=True)   # biased
        x_hat = (x - mean) / jnp.sqrt(var + spec["eps"])
        return x_hat * params["weight"][None, :, None, None] + params["bias"][None, :, None, None]
    if kind == "relu":
        return jnp.maximum(x, 0)
    if kind == "tanh":
        return jnp.tanh(x)
    if kind == "maxpool2d":
        top, bottom, left, right = pool_padding(spec, x.shape[2], x.shape[3])
        size, stride = spec["size"], spec["stride"]
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, size, size),
                                     (1, 1, stride, stride),
                                     ((0, 0), (0, 0), (top, bottom), (left, right)))
    if kind == "flatten":
        return x.reshape(x.shape[0], -1)
    if kind == "linear":
        return x @ params["weight"].T + params["bias"]
    raise ValueError(f"unknown layer type {kind!r}")


def forward(network, named, x):
    for index, spec in enumerate(network["layers"]):
        x = apply_layer(spec, layer_params(named, index, spec), x)
    return x


def loss_value(loss, output, target, reduction):
    if loss == "cross_entropy":
        per_example = (jax.nn.logsumexp(output, axis=1)
                       - jnp.take_along_axis(output, target[:, None], axis=1)[:, 0])
    else:
        per_example = (output - target) ** 2          # mean over every element
    return per_example.sum() if reduction == "sum" else per_example.mean()


def flat_loss(network, theta, x, y, reduction):
    return loss_value(network["loss"], forward(network, unflatten(network, theta), x), y,
                      reduction)


# Every function below is compiled as one XLA program: much faster than dispatching each
# operation on its own. A spec is a dict, which jax.jit cannot take as a static argument,
# so its JSON text is the cache key.

@functools.lru_cache(maxsize=None)
def _compiled_layer_vjp(layer_json):
    layer = json.loads(layer_json)

    def forward_and_pullback(params, x, dy):
        y, pullback = jax.vjp(lambda p, inputs: apply_layer(layer, p, inputs), params, x)
        return (y,) + pullback(dy)

    return jax.jit(forward_and_pullback)


@functools.lru_cache(maxsize=None)
def _compiled_gradient(network_json, reduction):
    network = json.loads(network_json)
    return jax.jit(lambda theta, x, y: jax.grad(flat_loss, argnums=1)(network, theta, x, y,
                                                                      reduction))


def gradient(network, theta, x, y, reduction):
    """d loss / d theta, compiled once per network and reduction."""
    return _compiled_gradient(json.dumps(network, sort_keys=True), reduction)(theta, x, y)


def inner_steps(network, phi, x, y, batches, opt, reduction):
    """phi after one optimiser step per batch, and every step's parameter change."""
    changes = []
    for batch in batches:
        new = opt.step(phi, gradient(network, phi, x[batch], y[batch], reduction))
        changes.append(new - phi)
        phi = new
    return phi, changes


@functools.lru_cache(maxsize=None)
def _compiled_maml_gradient(network_json, lr, reduction):
    network = json.loads(network_json)
    inner_gradient = jax.grad(flat_loss, argnums=1)

    def maml_loss(theta, x, y, batches):
        """The loss on the last batch after SGD steps on the others, a function of theta."""
        phi = theta
        for batch in batches[:-1]:
            phi = phi - lr * inner_gradient(network, phi, x[batch], y[batch], reduction)
        return flat_loss(network, phi, x[batches[-1]], y[batches[-1]], reduction)

    return jax.jit(jax.grad(maml_loss))


def maml_gradient(network, theta, x, y, batches, lr, reduction):
    """Exact MAML's meta-gradient: jax.grad differentiates through the inner SGD steps."""
    return _compiled_maml_gradient(json.dumps(network, sort_keys=True), lr, reduction)(
        theta, x, y, [jnp.asarray(batch) for batch in batches])


class Adapter(NumpyParts):
    """The protocol's callables (each returns a dict of NumPy arrays)."""

    def layer_forward_backward(self, layer, params, x, dy):
        y, dparams, dx = _compiled_layer_vjp(json.dumps(layer, sort_keys=True))(
            {name: jnp.asarray(value) for name, value in params.items()}, jnp.asarray(x),
            jnp.asarray(dy))
        return {"y": np.asarray(y), "dx": np.asarray(dx),
                "dparams": {name: np.asarray(value) for name, value in dparams.items()}}

    def loss_forward_backward(self, loss, reduction, output, target):
        value, doutput = jax.jit(jax.value_and_grad(loss_value, argnums=1), static_argnums=(0, 3))(
            loss, jnp.asarray(output), jnp.asarray(target), reduction)
        return {"loss": np.asarray(value), "doutput": np.asarray(doutput)}

    def network_forward_backward(self, network, params, x, y, reduction):
        named = {name: jnp.asarray(value) for name, value in params.items()}

        def loss_of(named, x, y):
            output = forward(network, named, x)
            return loss_value(network["loss"], output, y, reduction), output

        (value, output), grads = jax.jit(jax.value_and_grad(loss_of, has_aux=True))(
            named, jnp.asarray(x), jnp.asarray(y))
        return {"output": np.asarray(output), "loss": np.asarray(value),
                "grads": {name: np.asarray(g) for name, g in grads.items()}}

    def optimizer_steps(self, optimizer, params, grads):
        params = jnp.asarray(params)
        opt = Optimizer(optimizer, None, params, jnp.asarray)
        history = []
        for grad in jnp.asarray(grads):
            params = opt.step(params, grad)
            history.append({"params": np.asarray(params), **opt.state()})
        return {key: np.array([entry[key] for entry in history]) for key in history[0]}

    def meta_step(self, algorithm, network, theta, optimizer, optimizer_state, tasks, batches,
                  epsilon, reduction):
        theta = jnp.asarray(theta)
        tasks = [(jnp.asarray(task["x"]), jnp.asarray(task["y"])) for task in tasks]
        if algorithm["name"] == "maml":
            grads = [maml_gradient(network, theta, x, y, bs, optimizer["lr"], reduction)
                     for (x, y), bs in zip(tasks, batches)]
            return {"theta": np.asarray(theta - epsilon * optimizer["lr"] * jnp.mean(
                jnp.stack(grads), axis=0))}
        opt = Optimizer(optimizer, optimizer_state, theta, jnp.asarray)
        updates = []
        for (x, y), task_batches in zip(tasks, batches):
            phi, changes = inner_steps(network, theta, x, y, task_batches, opt, reduction)
            if algorithm["name"] == "reptile":
                updates.append(phi - theta)
            elif algorithm["name"] == "fomaml":
                updates.append(changes[-1])
            else:
                updates.append(sum(w * c for w, c in zip(algorithm["step_weights"], changes)))
        new = theta + epsilon * jnp.mean(jnp.stack(updates), axis=0)
        return {"theta": np.asarray(new), **opt.outputs()}

    def evaluate_task(self, network, theta, optimizer, optimizer_state, x, y, num_classes,
                      batches, transductive, reduction):
        support, queries = split_queries(y, num_classes)
        x, y = jnp.asarray(x), jnp.asarray(y)
        train_x, train_y, query_x = x[np.array(support)], y[np.array(support)], x[np.array(queries)]
        opt = Optimizer(optimizer, optimizer_state, jnp.asarray(theta), jnp.asarray)
        saved = opt.state()
        phi, _ = inner_steps(network, jnp.asarray(theta), train_x, train_y, batches, opt, reduction)
        opt = Optimizer(optimizer, saved, phi, jnp.asarray)   # restore what adaptation changed
        named = unflatten(network, phi)
        if transductive:
            predictions = forward(network, named, query_x).argmax(axis=1)
        else:
            predictions = jnp.stack([
                forward(network, named, jnp.concatenate([train_x, query_x[q:q + 1]]))[-1].argmax()
                for q in range(num_classes)])
        return {"phi": np.asarray(phi), "predictions": np.asarray(predictions), **opt.outputs()}
