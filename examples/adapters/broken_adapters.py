"""Four deliberately broken adapters: the PyTorch one with one usual porting mistake each.

They show what ``reptile-np conformance --check`` reports for each mistake (every failing
case says which mistake its outputs match), and tests/test_conformance.py holds each one
failing exactly the cases that mistake changes::

    reptile-np conformance --check suite --adapter examples/adapters/broken_adapters.py:Padding1
"""
from torch_adapter import Adapter


class MeanInsteadOfSum(Adapter):
    """Averages every loss over the batch, even where the case asks for the sum."""

    def loss(self, loss, output, target, reduction):
        return super().loss(loss, output, target, "mean")


class AdamResetPerTask(Adapter):
    """Starts every task, evaluation tasks included, from a fresh Adam state."""

    def task_update(self, algorithm, network, theta, x, y, batches, opt, reduction):
        if opt.settings["name"] == "adam":
            opt.__init__(opt.settings, None, theta, None)
        return super().task_update(algorithm, network, theta, x, y, batches, opt, reduction)

    def evaluate_task(self, **inputs):
        return super().evaluate_task(**dict(inputs, optimizer_state=None))


class Padding1(Adapter):
    """Writes PyTorch's symmetric padding=1 (kernel // 2) for TF 'same'."""

    def conv_padding(self, layer, height, width):
        if layer["padding"] == "same":
            return (layer["kernel_size"] // 2,) * 4
        return super().conv_padding(layer, height, width)


class RawLastGradient(Adapter):
    """FOMAML moving theta by minus the last batch's gradient at phi_(k-1), instead of by
    the last inner step's parameter change."""

    def fomaml_update(self, network, theta, x, y, batches, opt, reduction, changes):
        before_last, last = theta + sum(changes[:-1]), batches[-1]
        return -self.gradient(network, before_last, x[last], y[last], reduction)
