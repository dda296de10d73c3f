"""Checkpoints: one ``.npz`` of arrays plus JSON metadata inside it, no pickle, atomic.

A checkpoint holds everything a run needs to continue bit for bit:

* ``theta`` -- the flat meta-parameters;
* ``optimizer/m``, ``optimizer/v`` and ``optimizer/t`` -- the inner Adam's state
  (absent for SGD);
* ``metadata`` -- a JSON string: format version, package version, model name and
  parameter names/shapes, the iteration reached, and the full run configuration
  (whose seed, with the iteration, determines every random draw still to come).

The file is written to a temporary name in the same directory and renamed over
the old one, so a crash leaves either the old or the new checkpoint, never half of one.
"""
import json
import os
import zipfile

import numpy as np

from . import __version__
from .files import atomic_path

FORMAT_VERSION = 1


def save_checkpoint(path, model, theta, optimizer_state, iteration, config):
    """Write a checkpoint atomically.

    Args:
        path: destination ``.npz`` file.
        model: the `Sequential` whose parameters ``theta`` holds (names and shapes are recorded).
        theta: flat parameters.
        optimizer_state: ``optimizer.snapshot()`` (``{}`` for SGD).
        iteration: number of meta-iterations completed.
        config: JSON-serialisable dict of the run's configuration.
    """
    metadata = {
        "format_version": FORMAT_VERSION,
        "reptile_np_version": __version__,
        "iteration": int(iteration),
        "parameters": [[name, list(shape)] for name, shape in zip(model.layout.names,
                                                                 model.layout.shapes)],
        "dtype": str(theta.dtype),
        "config": config,
    }
    arrays = {"theta": theta, "metadata": np.array(json.dumps(metadata, sort_keys=True))}
    arrays.update({f"optimizer/{key}": np.asarray(value) for key, value in optimizer_state.items()})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        np.savez(file, **arrays)


def load_checkpoint(path, model=None):
    """Read a checkpoint.

    Args:
        path: the ``.npz`` file.
        model: if given, check the checkpoint's parameter names and shapes against it.

    Returns:
        ``(theta, optimizer_state, metadata)``.

    Raises:
        ValueError: the file is missing, damaged, or from a different model.
    """
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path} does not exist.")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
        metadata = json.loads(str(arrays.pop("metadata")))
        theta = arrays.pop("theta")
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as error:
        raise ValueError(f"checkpoint {path} is damaged or not a reptile-np checkpoint "
                         f"({error}); delete it or point --checkpoint elsewhere.") from None
    if model is not None:
        expected = [[name, list(shape)] for name, shape in zip(model.layout.names,
                                                               model.layout.shapes)]
        if metadata.get("parameters") != expected:
            raise ValueError(f"checkpoint {path} holds a different model's parameters "
                             f"({len(metadata.get('parameters', []))} tensors, "
                             f"{theta.size} values; this model has {model.num_params} values).")
    optimizer_state = {key.split("/", 1)[1]: value for key, value in arrays.items()
                       if key.startswith("optimizer/")}
    return theta, optimizer_state, metadata
