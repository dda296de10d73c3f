"""A PyTorch implementation of the conformance protocol, written from docs/conformance.md.

Everything is computed with torch autograd on CPU tensors of the case's dtype; it does
not import reptile_np (NumPy only converts arrays and draws the documented index stream).
Check it with::

    reptile-np conformance --out suite
    reptile-np conformance --check suite --adapter examples/adapters/torch_adapter.py:Adapter

broken_adapters.py beside it breaks one method each to show what the check reports for
the usual porting mistakes.
"""
import numpy as np
import torch
import torch.nn.functional as F

from neutral import (NumpyParts, Optimizer, conv_padding, layer_params, pool_padding,
                     split_queries, unflatten)


def tensor(array):
    """A torch tensor of the array's dtype (int64 labels and indices stay int64)."""
    return torch.as_tensor(np.asarray(array))


def numpy(value):
    return value.detach().numpy().copy()


class Adapter(NumpyParts):
    """The protocol's callables (each returns a dict of NumPy arrays)."""

    # ------------------------------------------------------------------ building blocks

    def conv_padding(self, layer, height, width):
        """(top, bottom, left, right) of a conv2d spec (a seam for the broken adapters)."""
        return conv_padding(layer, height, width)

    def layer(self, layer, params, x):
        """The forward pass of one layer spec; params {"weight": t, "bias": t}."""
        kind = layer["type"]
        if kind == "conv2d":
            top, bottom, left, right = self.conv_padding(layer, x.shape[2], x.shape[3])
            x = F.pad(x, (left, right, top, bottom))
            return F.conv2d(x, params["weight"], params["bias"], stride=layer["stride"])
        if kind == "batchnorm2d":
            mean = x.mean(dim=(0, 2, 3), keepdim=True)
            var = ((x - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)   # biased
            x_hat = (x - mean) / torch.sqrt(var + layer["eps"])
            return (x_hat * params["weight"][None, :, None, None]
                    + params["bias"][None, :, None, None])
        if kind == "relu":
            return F.relu(x)
        if kind == "tanh":
            return torch.tanh(x)
        if kind == "maxpool2d":
            top, bottom, left, right = pool_padding(layer, x.shape[2], x.shape[3])
            x = F.pad(x, (left, right, top, bottom), value=-float("inf"))
            return F.max_pool2d(x, layer["size"], layer["stride"])
        if kind == "flatten":
            return x.reshape(x.shape[0], -1)
        if kind == "linear":
            return F.linear(x, params["weight"], params["bias"])
        raise ValueError(f"unknown layer type {kind!r}")

    def forward(self, network, named, x):
        out = x
        for index, layer in enumerate(network["layers"]):
            out = self.layer(layer, layer_params(named, index, layer), out)
        return out

    def loss(self, loss, output, target, reduction):
        if loss == "cross_entropy":
            return F.cross_entropy(output, target, reduction=reduction)
        return F.mse_loss(output, target, reduction=reduction)

    def flat_loss(self, network, theta, x, y, reduction):
        return self.loss(network["loss"], self.forward(network, unflatten(network, theta), x),
                         y, reduction)

    def gradient(self, network, theta, x, y, reduction):
        theta = theta.detach().requires_grad_(True)
        return torch.autograd.grad(self.flat_loss(network, theta, x, y, reduction), theta)[0]

    def optimizer(self, settings, state, like):
        return Optimizer(settings, state, like, tensor)

    # ------------------------------------------------------------------ the protocol

    def layer_forward_backward(self, layer, params, x, dy):
        params = {name: tensor(value).requires_grad_(True) for name, value in params.items()}
        x = tensor(x).requires_grad_(True)
        y = self.layer(layer, params, x)
        y.backward(tensor(dy))
        return {"y": numpy(y), "dx": numpy(x.grad),
                "dparams": {name: numpy(p.grad) for name, p in params.items()}}

    def loss_forward_backward(self, loss, reduction, output, target):
        output = tensor(output).requires_grad_(True)
        value = self.loss(loss, output, tensor(target), reduction)
        value.backward()
        return {"loss": numpy(value), "doutput": numpy(output.grad)}

    def network_forward_backward(self, network, params, x, y, reduction):
        named = {name: tensor(value).requires_grad_(True) for name, value in params.items()}
        output = self.forward(network, named, tensor(x))
        value = self.loss(network["loss"], output, tensor(y), reduction)
        value.backward()
        return {"output": numpy(output), "loss": numpy(value),
                "grads": {name: numpy(p.grad) for name, p in named.items()}}

    def optimizer_steps(self, optimizer, params, grads):
        params = tensor(params)
        opt = self.optimizer(optimizer, None, params)
        history = []
        for grad in tensor(grads):
            params = opt.step(params, grad)
            history.append({"params": numpy(params), **opt.state()})
        return {key: np.array([entry[key] for entry in history]) for key in history[0]}

    def inner_steps(self, network, phi, x, y, batches, opt, reduction):
        """phi after one optimiser step per batch, and every step's parameter change."""
        changes = []
        for batch in batches:
            batch = tensor(batch)
            new = opt.step(phi, self.gradient(network, phi, x[batch], y[batch], reduction))
            changes.append(new - phi)
            phi = new
        return phi, changes

    def task_update(self, algorithm, network, theta, x, y, batches, opt, reduction):
        """What one task adds to the outer update (before the mean over tasks and epsilon)."""
        phi, changes = self.inner_steps(network, theta, x, y, batches, opt, reduction)
        if algorithm["name"] == "reptile":
            return phi - theta
        if algorithm["name"] == "fomaml":
            return self.fomaml_update(network, theta, x, y, batches, opt, reduction, changes)
        return sum(weight * change for weight, change in zip(algorithm["step_weights"], changes))

    def fomaml_update(self, network, theta, x, y, batches, opt, reduction, changes):
        """FOMAML: the last inner step's parameter change."""
        return changes[-1]

    def maml_gradient(self, network, theta, x, y, batches, lr, reduction):
        """d(loss on the last batch at phi_k)/d theta through the inner SGD steps."""
        start = theta.detach().requires_grad_(True)
        phi = start
        for batch in batches[:-1]:
            batch = tensor(batch)
            loss = self.flat_loss(network, phi, x[batch], y[batch], reduction)
            phi = phi - lr * torch.autograd.grad(loss, phi, create_graph=True)[0]
        last = tensor(batches[-1])
        return torch.autograd.grad(self.flat_loss(network, phi, x[last], y[last], reduction),
                                   start)[0]

    def meta_step(self, algorithm, network, theta, optimizer, optimizer_state, tasks, batches,
                  epsilon, reduction):
        theta = tensor(theta)
        tasks = [(tensor(task["x"]), tensor(task["y"])) for task in tasks]
        if algorithm["name"] == "maml":
            grads = [self.maml_gradient(network, theta, x, y, bs, optimizer["lr"], reduction)
                     for (x, y), bs in zip(tasks, batches)]
            return {"theta": numpy(theta - epsilon * optimizer["lr"] * torch.stack(grads).mean(0))}
        opt = self.optimizer(optimizer, optimizer_state, theta)
        updates = [self.task_update(algorithm, network, theta, x, y, bs, opt, reduction)
                   for (x, y), bs in zip(tasks, batches)]
        return {"theta": numpy(theta + epsilon * torch.stack(updates).mean(0)), **opt.outputs()}

    def evaluate_task(self, network, theta, optimizer, optimizer_state, x, y, num_classes,
                      batches, transductive, reduction):
        x, y = tensor(x), tensor(y)
        support, queries = split_queries(y.numpy(), num_classes)
        train_x, train_y, query_x = x[support], y[support], x[queries]
        opt = self.optimizer(optimizer, optimizer_state, tensor(theta))
        saved = opt.state()
        phi, _ = self.inner_steps(network, tensor(theta), train_x, train_y, batches, opt, reduction)
        opt = self.optimizer(optimizer, saved, phi)      # restore what adaptation changed
        named = unflatten(network, phi)
        with torch.no_grad():
            if transductive:
                predictions = self.forward(network, named, query_x).argmax(dim=1)
            else:
                predictions = torch.stack([self.forward(
                    network, named, torch.cat([train_x, query_x[q:q + 1]]))[-1].argmax()
                    for q in range(num_classes)])
        return {"phi": numpy(phi), "predictions": numpy(predictions), **opt.outputs()}
