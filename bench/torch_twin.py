"""The PyTorch eager twin: the same networks, the same Reptile loop, written as a PyTorch user would.

* Networks as ``nn.Sequential`` with our layer indices, so our ``state_dict`` loads with
  ``strict=True``. TF "same" convolutions: symmetric padding goes to ``Conv2d(padding=p)``;
  the asymmetric kind (even input, stride 2: 0 before, 1 after) is ``F.pad(x, (0, 1, 0, 1))``
  then ``padding=0``. TF "same" 2x2 max-pool is ``MaxPool2d(2, 2, ceil_mode=True)``.
  ``BatchNorm2d(eps=1e-3, track_running_stats=False)`` in train mode: batch statistics.
* Loss summed over the batch (cross-entropy) or averaged (sine's MSE), as ours.
* One ``torch.optim.Adam(betas=(0, 0.999))`` (or SGD) whose state is carried across tasks.
  Its eps goes after the bias correction (PyTorch's form; ours is TF's): same cost.
* Per task: copy theta into the parameters, step on each mini-batch, add the result to
  a running sum; then ``theta += epsilon * (mean(phi) - theta)``.

Variants: "default" (what ``torch.optim`` picks on CPU, NCHW) and "tuned"
(``channels_last`` weights and inputs, ``fused=True`` optimiser).
"""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from reptile_np.meta import minibatches

VARIANTS = ("default", "tuned")


def same_padding(size, kernel, stride):
    """TF "same" padding along one axis: (before, after), the odd cell after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TF "same" padding for a known input size (square inputs)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, in_size):
        before, after = same_padding(in_size, kernel_size, stride)
        symmetric = before == after
        super().__init__(in_channels, out_channels, kernel_size, stride,
                         padding=before if symmetric else 0)
        self.extra_pad = None if symmetric else (before, after, before, after)  # (l, r, t, b)

    def forward(self, x):
        if self.extra_pad is not None:
            x = F.pad(x, self.extra_pad)
        return super().forward(x)


def omniglot_net(num_classes):
    layers, channels, size = [], 1, 28
    for _ in range(4):
        layers += [SameConv2d(channels, 64, 3, 2, size),
                   nn.BatchNorm2d(64, eps=1e-3, track_running_stats=False), nn.ReLU()]
        channels, size = 64, -(-size // 2)                          # 28 -> 14 -> 7 -> 4 -> 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(64 * 2 * 2, num_classes))


def miniimagenet_net(num_classes):
    layers, channels, size = [], 3, 84
    for _ in range(4):
        layers += [SameConv2d(channels, 32, 3, 1, size),             # stride 1: pads 1/1
                   nn.BatchNorm2d(32, eps=1e-3, track_running_stats=False),
                   nn.MaxPool2d(2, 2, ceil_mode=True), nn.ReLU()]
        channels, size = 32, -(-size // 2)                          # 84 -> 42 -> 21 -> 11 -> 6
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(32 * 6 * 6, num_classes))


def sine_net():
    return nn.Sequential(nn.Linear(1, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(),
                         nn.Linear(64, 1))


def build_net(workload):
    if workload.model == "omniglot":
        return omniglot_net(workload.num_classes)
    if workload.model == "miniimagenet":
        return miniimagenet_net(workload.num_classes)
    return sine_net()


class Runner:
    """One workload in PyTorch eager mode; the interface of `ours.Runner`."""

    def __init__(self, workload, data, state_dict, variant="default", seed=0):
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}.")
        self.workload, self.variant = workload, variant
        self.backend = f"torch-eager-{variant}"
        self.channels_last = variant == "tuned" and len(workload.input_shape) == 3
        self.net = build_net(workload)
        self.net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()},
                                 strict=True)
        self.net.train()
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.params = list(self.net.parameters())
        fused = {"fused": True} if variant == "tuned" else {}
        if workload.optimizer == "adam":
            self.opt = torch.optim.Adam(self.params, lr=workload.lr, betas=(0.0, 0.999),
                                        eps=1e-8, **fused)
        else:
            self.opt = torch.optim.SGD(self.params, lr=workload.lr, **fused)
        with torch.no_grad():
            self.theta = [p.detach().clone() for p in self.params]
            self.phi_sum = [torch.zeros_like(p) for p in self.params]
        self.tasks = [(self._input(x), torch.from_numpy(y)) for x, y in data["tasks"]]
        self.x_query = self._input(data["x_query"]) if "x_query" in data else None
        self.rng = np.random.default_rng(seed)
        self.count = 0
        self.compile_s = None

    def _input(self, x):
        x = torch.from_numpy(np.ascontiguousarray(x))
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _loss(self, x, y):
        out = self.net(x)
        if self.workload.model == "sine":
            return F.mse_loss(out, y, reduction=self.workload.reduction)
        return F.cross_entropy(out, y, reduction=self.workload.reduction)

    def loss_and_grad(self, x, y):
        """Loss and flat gradient (state_dict order) at the current parameters."""
        self.net.zero_grad(set_to_none=True)
        loss = self._loss(self._input(x), torch.from_numpy(y))
        loss.backward()
        grad = torch.cat([p.grad.reshape(-1) for p in self.params]).numpy().copy()
        self.net.zero_grad(set_to_none=True)
        return float(loss.detach()), grad

    def flat_theta(self):
        """A copy of theta, flat in our layout (state_dict order, logical NCHW order)."""
        return torch.cat([t.reshape(-1) for t in self.theta]).numpy().copy()

    def _adapt(self, x, y):
        """Load theta into the parameters and take one optimiser step per mini-batch."""
        w = self.workload
        with torch.no_grad():
            for p, t in zip(self.params, self.theta):
                p.copy_(t)
        for batch in minibatches(len(y), w.inner_batch, w.inner_iters, self.rng):
            index = torch.from_numpy(batch)
            self.opt.zero_grad(set_to_none=True)
            self._loss(x[index], y[index]).backward()
            self.opt.step()

    def unit(self):
        """One meta-iteration, or one evaluation task (adapt, then predict the query)."""
        w = self.workload
        if w.name == "eval":
            self._adapt(*self.tasks[0])
            with torch.no_grad():
                return self.net(self.x_query).argmax(dim=1)
        tasks = self.tasks
        if w.task_pool:     # serial Reptile: the next task of the pool
            tasks = [tasks[self.count % len(tasks)]]
        self.count += 1
        with torch.no_grad():
            for s in self.phi_sum:
                s.zero_()
        for x, y in tasks:
            self._adapt(x, y)
            with torch.no_grad():
                for s, p in zip(self.phi_sum, self.params):
                    s.add_(p)
        with torch.no_grad():
            scale = 1.0 / len(tasks)
            for t, s in zip(self.theta, self.phi_sum):
                t.add_(s.mul_(scale).sub_(t), alpha=w.epsilon)     # t += eps * (mean - t)
        return self.theta

    def describe(self):
        return {"backend": self.backend, "torch_threads": torch.get_num_threads(),
                "torch_interop_threads": torch.get_num_interop_threads(),
                "channels_last": self.channels_last,
                "optimizer": type(self.opt).__name__ + ("(fused)" if self.variant == "tuned" else "")}
