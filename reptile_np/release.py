"""Trained checkpoints for use: released directories, and loading one as evaluation does.

A released checkpoint is a directory, ``checkpoints/<name>/`` in the repository, holding

=================  ===============================================================
``checkpoint.npz``  the training's checkpoint as it finished (theta and the Adam state)
``release.json``    its SHA-256 and measured accuracy, machine-readable (see below)
``README.md``       the same for people: the training command, the SHA-256, the
                    accuracy with its 95% CI, the command that reproduces it
=================  ===============================================================

``release.json`` holds ``format`` (1), ``name``, ``checkpoint`` (the file name),
``sha256`` and ``bytes`` (of the file), ``meta_iterations``, ``train_command``, ``evaluation``
(``dataset``, ``split`` evaluated, ``classes``, ``shots``, ``eval_batch``, ``eval_iters``,
``tasks``, ``seed``) and ``results``: for each protocol evaluated (``nontransductive``,
``transductive``), ``accuracy`` and ``ci95`` (fractions, the half-width of the 95%
interval) and the ``command`` that measures them again.

reptile-np treats a released directory as read-only, since it is part of the repository
(or of an installed copy): ``eval`` checks the checkpoint's SHA-256 against release.json
before using it, and writes its results file to the current directory instead of beside
the checkpoint (``--results`` chooses another place); ``train`` refuses it, since
training there would replace the released file.
"""
import hashlib
import json
import os
import shlex

import numpy as np

from .checkpoint import load_checkpoint
from .files import atomic_path
from .models import MODELS
from .train import TrainConfig, checkpoint_file, make_optimizer, resume

RELEASE_FILE = "release.json"
FORMAT = 1
PROTOCOLS = ("nontransductive", "transductive")
"""The evaluation protocols a release reports, by ``--no-transductive``/``--transductive``."""


def sha256_file(path):
    """The SHA-256 (hex) of a file's bytes, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for piece in iter(lambda: file.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


def is_release(directory):
    """Whether ``directory`` is a released checkpoint (it holds release.json)."""
    return os.path.isfile(os.path.join(directory, RELEASE_FILE))


def read_release(directory, flag="--checkpoint"):
    """The release.json of a released directory, checked to name its checkpoint and hash.

    Raises:
        ValueError: naming ``flag``, when release.json is not JSON or lacks ``checkpoint``
            or ``sha256``.
    """
    path = os.path.join(directory, RELEASE_FILE)
    try:
        with open(path, encoding="utf-8") as file:
            release = json.load(file)
        if not (isinstance(release["checkpoint"], str) and isinstance(release["sha256"], str)):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(f"{flag} {directory}: {RELEASE_FILE} does not name the released "
                         f"checkpoint and its sha256; restore the file (git checkout).") from None
    return release


def verify_release(directory, flag="--checkpoint"):
    """Check a released checkpoint's SHA-256 against its release.json; return the release.

    Raises:
        ValueError: naming ``flag``, when the file is missing or its bytes are not the
            released ones (the message gives both hashes).
    """
    release = read_release(directory, flag)
    path = os.path.join(directory, release["checkpoint"])
    if not os.path.isfile(path):
        raise ValueError(f"{flag} {directory}: the released {release['checkpoint']} is missing; "
                         f"restore it (git checkout, or git lfs pull).")
    found = sha256_file(path)
    if found != release["sha256"]:
        raise ValueError(f"{flag} {directory}: {release['checkpoint']} has SHA-256 {found}, but "
                         f"{RELEASE_FILE} records {release['sha256']}; it is not the released "
                         f"file, restore it (git checkout).")
    return release


def check_checkpoint_dir(directory, evaluating):
    """Refuse to train in a released directory; verify one before it is evaluated.

    Args:
        directory: a ``--checkpoint`` directory (released or not).
        evaluating: True for ``eval`` (``train --pretrained``), False for a training.

    Raises:
        ValueError: naming ``--checkpoint`` (see `verify_release`), or a training asked to
            write into a released directory.
    """
    if not is_release(directory):
        return
    if not evaluating:
        raise ValueError(f"--checkpoint {directory} is a released checkpoint (it holds "
                         f"{RELEASE_FILE}), which training would overwrite: evaluate it with "
                         f"reptile-np eval, or copy its checkpoint.npz into another directory "
                         f"to train it further there.")
    verify_release(directory)


def default_results_path(directory, filename):
    """Where ``eval`` writes its results without ``--results``: ``directory/filename``, or,
    for a released directory, ``<release name>-<filename>`` in the current directory."""
    if is_release(directory):
        return f"{os.path.basename(os.path.abspath(directory))}-{filename}"
    return os.path.join(directory, filename)


def load_trained(directory, flag="--checkpoint"):
    """Everything a trained checkpoint directory holds, set up as ``eval`` uses it.

    A released directory is verified first (`verify_release`). The network is the one the
    run trained (`reptile_np.models.MODELS`, recorded in the checkpoint), the inner optimiser
    the run's (Adam with beta1 = 0, or SGD) with the state it had when the checkpoint was
    written: the state evaluation starts every task from.

    Returns:
        ``(model, theta, optimizer, config, metadata)``: ``config`` the run's
        `reptile_np.train.TrainConfig` (its evaluation settings: ``eval_batch_size``,
        ``eval_iters``, ``transductive``, ...), ``metadata`` the checkpoint's
        (`reptile_np.checkpoint.load_checkpoint`).

    Raises:
        ValueError: naming ``flag``: no checkpoint in ``directory``, a release that does
            not verify, or a checkpoint that does not record its run; or the checkpoint
            is damaged (the message names the file).
    """
    path = checkpoint_file(directory)
    if not os.path.isfile(path):
        raise ValueError(f"{flag} {directory} holds no {os.path.basename(path)}; pass a "
                         f"directory that reptile-np train wrote, or a released "
                         f"checkpoints/<name>.")
    if is_release(directory):
        verify_release(directory, flag)
    run = load_checkpoint(path)[2]["config"]
    try:
        config = TrainConfig(**run["train"])
        model = MODELS[run["model"]](config.num_classes)
    except (KeyError, TypeError):
        raise ValueError(f"{flag} {directory}: {path} does not record the run it was trained "
                         f"with (an older reptile-np); it cannot be used from here.") from None
    optimizer = make_optimizer(config, model.num_params, np.float32)
    theta, _, metadata = resume(path, model, optimizer)
    return model, theta, optimizer, config, metadata


def training_command(metadata, checkpoint="ckpt"):
    """The ``reptile-np train`` command of a checkpoint's run: every training flag whose
    value is not its default, as `reptile_np.cli` parses them back."""
    # cli imports this module, so this one imports cli here.
    from .cli import CONFIG_FIELDS, FIELDS_ADDED_LATER, IMAGE_FLAGS, RUN_DEFAULTS
    run, defaults = metadata["config"], TrainConfig()
    trained = {**FIELDS_ADDED_LATER, **run["train"]}   # as a resume reads an older checkpoint
    words = ["reptile-np", "train", "--checkpoint", checkpoint]
    # The image flags shape --dataset folder's images only (the others' are fixed).
    flags = [(dest, run.get(dest, default), default) for dest, default in RUN_DEFAULTS.items()
             if dest not in IMAGE_FLAGS or run.get("dataset") == "folder"]
    flags += [(dest, trained[field], getattr(defaults, field))
              for dest, field in CONFIG_FIELDS.items()]
    for dest, value, default in flags:
        if isinstance(value, list):  # JSON keeps --step-weights' tuple as a list
            value = tuple(value)
        if value == default:
            continue
        option = "--" + dest.replace("_", "-")
        if value is True:
            words.append(option)
        elif isinstance(value, tuple):
            words += [option, ",".join(f"{w:g}" for w in value)]
        else:
            words += [option, _number(value) if isinstance(value, float) else str(value)]
    return shlex.join(words)


def _number(value):
    """A float as typed: ``1`` for 1.0, the shortest text that reads back exactly otherwise."""
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def write_release(directory, release):
    """Write ``release.json`` and the ``README.md`` made from it into ``directory``, each
    atomically (a reader sees the old file or the new one)."""
    for name, text in ((RELEASE_FILE, json.dumps(release, indent=2) + "\n"),
                       ("README.md", release_readme(release))):
        with atomic_path(os.path.join(directory, name)) as tmp:
            tmp.write_text(text, encoding="utf-8")


def release_readme(release):
    """The README.md of a release: what the checkpoint is, how it was trained, its SHA-256,
    its measured accuracy with the 95% CI, and the command that measures it again."""
    evaluation = release["evaluation"]
    mode = {"nontransductive": "non-transductive", "transductive": "transductive"}
    rows = "\n".join(
        f"| {mode[protocol]} | {100 * r['accuracy']:.2f}% ± {100 * r['ci95']:.2f} | "
        f"`{r['command']}` |" for protocol, r in release["results"].items())
    checkpoint, sha = release["checkpoint"], release["sha256"]
    return f"""# {release['name']}

`{checkpoint}` ({release['bytes'] / 1e6:.1f} MB) holds θ and the inner optimiser's state of a \
reptile-np run after {release['meta_iterations']:,} meta-iterations, trained with

```bash
{release['train_command']}
```

SHA-256 of `{checkpoint}`: `{sha}`. `reptile-np eval` and `reptile-np predict` check it \
against `{RELEASE_FILE}` before they use the file.

Accuracy on {evaluation['tasks']:,} tasks of the {evaluation['dataset']} \
{evaluation['split']} split, {evaluation['classes']}-way {evaluation['shots']}-shot, \
{evaluation['eval_iters']} adaptation steps on batches of {evaluation['eval_batch']}, \
evaluation seed {evaluation['seed']} (mean ± 95% CI):

| protocol | accuracy | measured again by |
|---|---|---|
{rows}

Each command prints the train and the test split; its test row is the number above. It \
reads the data where `reptile-np fetch-data` puts it (add `--data-dir DIR` otherwise) and \
writes its results file into the current directory, never into this one. Classify your \
own images with `reptile-np predict --checkpoint <this directory> --support DIR --query \
DIR` (see the repository's README, "Use a trained model").
"""
