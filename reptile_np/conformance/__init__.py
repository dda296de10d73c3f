"""A conformance suite for other implementations of Reptile, FOMAML and MAML.

``write_suite(directory)`` writes golden cases (a JSON manifest and one ``.npz`` per case,
PyTorch layouts, no pickle) for every layer, both losses, the paper's three networks,
TF-form Adam and SGD, the mini-batch index schedule, whole meta-iterations, the epsilon
schedule and one-task evaluation, in float64 and float32. ``check(directory, adapter)``
runs a port through a small adapter protocol (`check.KINDS`) and reports, case by case,
the worst relative error, where it is, and the usual cause of a failure.
``reptile-np conformance`` does both from the command line; docs/conformance.md
documents the format and the protocol.
"""
from .check import KINDS, CaseResult, check, exit_status, format_report, load_manifest
from .suite import write_suite

__all__ = ["KINDS", "CaseResult", "check", "exit_status", "format_report", "load_manifest",
           "write_suite"]
