"""Checkpoints: one ``.npz`` of arrays plus JSON metadata inside it, no pickle, atomic, self-verifying.

A checkpoint holds everything a run needs to continue bit for bit. Format version 2
is a zip archive (``numpy.load(path, allow_pickle=False)`` reads it) of uncompressed
``.npy`` members:

=====================  ===========================================================
member                 value
=====================  ===========================================================
``theta``              the flat meta-parameters
``optimizer/<entry>``  the inner optimiser's state: ``m``, ``t``, ``v`` for Adam,
                       nothing for SGD
``metadata``           a JSON string (0-d unicode array), see below
``metadata_sha256``    the SHA-256 (hex) of the metadata string's UTF-8 bytes
=====================  ===========================================================

The metadata holds the format version, package version, model parameter names and
shapes, the parameters' dtype, the iteration reached, the full run configuration
(whose seed, with the iteration, determines every random draw still to come), and

* ``"optimizer": {"kind": "adam" | "sgd", "entries": [...]}`` -- which optimiser the
  state belongs to and which ``optimizer/<entry>`` members it has;
* ``"arrays": {name: {"dtype", "shape", "sha256"}}`` -- for every array member, its
  dtype, shape and the SHA-256 of its C-order bytes (``array.tobytes()``).

So every byte that matters is covered: the arrays by their hashes, the hashes (and
everything else in the metadata) by the metadata hash. The zip's own CRC-32 catches
most damage first; the hashes also catch a member rewritten with a consistent CRC,
and the member list catches a renamed or dropped member, which ``numpy.load`` would
silently skip (a renamed ``optimizer/v`` would restart Adam from zero).

`load_checkpoint` turns any damage into one ``ValueError`` naming the file. Nothing
is allocated beyond what the file holds: every member must be stored uncompressed
and no larger than the file, and an array's bytes are taken from the member only
after its ``.npy`` header's shape and dtype agree with the member's length.

Version 1 files (the same members without ``metadata_sha256`` and without the
``optimizer``/``arrays`` metadata) still load, unverified beyond the zip CRC:
their metadata comes back with ``"verified": False`` (version 2: ``True``) and an
``"optimizer"`` entry derived from their members. A file that carries the metadata
hash is always read as version 2, so damage to the version field cannot pass a
version 2 file off as an unverifiable version 1 file. An intact file of a newer
format version is refused as such (upgrade reptile-np), not called damaged.

The file is written to a temporary name in the same directory and renamed over the
old one, so a crash or a full disk leaves either the old or the new checkpoint,
never half of one.
"""
import hashlib
import io
import json
import math
import os
import zipfile

import numpy as np

from . import __version__
from .files import atomic_path
from .params import ParameterLayout

FORMAT_VERSION = 2
# The optimiser state entries of each kind, as `optimizer.snapshot()` returns them.
OPTIMIZER_ENTRIES = {"sgd": [], "adam": ["m", "t", "v"]}
METADATA, METADATA_HASH = "metadata", "metadata_sha256"


class _Damage(Exception):
    """An inconsistency found while reading a checkpoint; the message says what."""


class _Newer(Exception):
    """An intact checkpoint in a format version newer than this package reads."""


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def _array_hash(array):
    return _sha256(np.ascontiguousarray(array).tobytes())


def _optimizer_kind(entries):
    """The optimiser kind whose state has exactly these entries, or None."""
    return next((kind for kind, known in OPTIMIZER_ENTRIES.items() if sorted(entries) == known),
                None)


def save_checkpoint(path, model, theta, optimizer_state, iteration, config):
    """Write a checkpoint atomically (format version 2).

    Args:
        path: destination ``.npz`` file.
        model: the `Sequential` whose parameters ``theta`` holds (names and shapes are recorded).
        theta: flat parameters.
        optimizer_state: ``optimizer.snapshot()`` (``{}`` for SGD, ``m``/``t``/``v`` for Adam).
        iteration: number of meta-iterations completed.
        config: JSON-serialisable dict of the run's configuration.

    Raises:
        ValueError: ``theta`` does not fit ``model``, or ``optimizer_state`` is neither SGD's
            nor Adam's.
        OSError: the file could not be written (full disk, read-only directory); the message
            names it and says the previous checkpoint, if any, is untouched.
    """
    model.layout.check(theta)
    kind = _optimizer_kind(optimizer_state)
    if kind is None:
        raise ValueError(f"optimizer_state must have no entries (SGD) or exactly m, t, v "
                         f"(Adam), got {sorted(optimizer_state)}.")
    arrays = {"theta": theta}
    arrays.update({f"optimizer/{key}": np.asarray(value) for key, value in optimizer_state.items()})
    metadata = {
        "format_version": FORMAT_VERSION,
        "reptile_np_version": __version__,
        "iteration": int(iteration),
        "parameters": [[name, list(shape)] for name, shape in zip(model.layout.names,
                                                                 model.layout.shapes)],
        "dtype": str(theta.dtype),
        "config": config,
        "optimizer": {"kind": kind, "entries": OPTIMIZER_ENTRIES[kind]},
        "arrays": {name: {"dtype": str(array.dtype), "shape": list(array.shape),
                          "sha256": _array_hash(array)} for name, array in arrays.items()},
    }
    text = json.dumps(metadata, sort_keys=True)
    arrays[METADATA] = np.array(text)
    arrays[METADATA_HASH] = np.array(_sha256(text.encode("utf-8")))
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as file:  # a file object: no ".npz" added
            np.savez(file, **arrays)
    except OSError as error:
        previous = ("the previous checkpoint there is untouched" if os.path.exists(path)
                    else "there was no previous checkpoint")
        raise OSError(f"checkpoint {path} could not be written ({error.strerror or error}); "
                      f"{previous}.") from error


def load_checkpoint(path, model=None):
    """Read and verify a checkpoint (format version 2, or unverified version 1).

    Args:
        path: the ``.npz`` file.
        model: if given, check the checkpoint's parameter names and shapes against it.

    Returns:
        ``(theta, optimizer_state, metadata)``: ``optimizer_state`` is what
        ``optimizer.restore`` takes (``{}`` for SGD); ``metadata`` is the stored JSON plus
        ``metadata["verified"]`` (True: every hash matched; False: a version 1 file, which
        has none) and ``metadata["optimizer"]["kind"]`` (``"adam"`` or ``"sgd"``, also for
        version 1 files), so a caller can refuse to resume with a different optimiser.

    Raises:
        ValueError: the file is missing, unreadable, damaged, of a newer format version, or
            from a different model; the message names the file.
    """
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path} does not exist.")
    try:
        file = open(path, "rb")
    except OSError as error:
        raise ValueError(f"checkpoint {path} cannot be read ({error.strerror}).") from None
    # Whatever a damaged file makes zipfile, numpy's header parser (ast, tokenize) or json
    # raise becomes the one error below; only running out of memory (not caused by the file:
    # reads are bounded by its size) and Ctrl-C, which is not an Exception, pass through.
    try:
        with file:
            theta, optimizer_state, metadata = _read(file, os.fstat(file.fileno()).st_size)
    except MemoryError:
        raise
    except _Newer as error:
        raise ValueError(f"checkpoint {path} has format_version {error}, newer than the "
                         f"{FORMAT_VERSION} that reptile-np {__version__} reads; upgrade "
                         f"reptile-np to use it.") from None
    except Exception as error:
        what = str(error) if isinstance(error, _Damage) else f"{type(error).__name__}: {error}"
        raise ValueError(f"checkpoint {path} is damaged ({' '.join(what.split())[:300]}); "
                         f"delete it or point --checkpoint elsewhere.") from None
    if model is not None:
        expected = [[name, list(shape)] for name, shape in zip(model.layout.names,
                                                               model.layout.shapes)]
        if metadata["parameters"] != expected:
            raise ValueError(f"checkpoint {path} holds a different model's parameters "
                             f"({len(metadata['parameters'])} tensors, {theta.size} values; "
                             f"this model has {model.num_params} values).")
    return theta, optimizer_state, metadata


def _read(file, size):
    """Read and check the archive in the open ``file`` of ``size`` bytes; see `load_checkpoint`.

    Raises:
        _Damage, or whatever zipfile/numpy/json raise on malformed input.
    """
    with zipfile.ZipFile(file) as archive:
        infos = archive.infolist()
        members = {info.filename: info for info in infos}
        if len(members) != len(infos):
            raise _Damage("a member name appears twice")

        def read(name):
            info = members[f"{name}.npy"]
            # Uncompressed and within the file: a damaged size field cannot make us allocate
            # more than the file holds.
            if (info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size
                    or info.file_size > size):
                raise _Damage(f"member {name} claims {info.file_size} bytes (stored as "
                              f"{info.compress_size}, method {info.compress_type}) in a "
                              f"{size}-byte file")
            return _parse_npy(name, archive.read(info))

        if f"{METADATA}.npy" not in members:
            raise _Damage("it has no metadata member")
        text = _text(METADATA, read(METADATA))
        signed = f"{METADATA_HASH}.npy" in members
        if signed and _text(METADATA_HASH, read(METADATA_HASH)) != _sha256(text.encode("utf-8")):
            raise _Damage("the metadata does not match its SHA-256")
        metadata = json.loads(text)
        if not isinstance(metadata, dict):
            raise _Damage("the metadata is not a JSON object")
        version = metadata.get("format_version")
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise _Newer(version)
        if signed and version != FORMAT_VERSION:
            raise _Damage(f"format_version {version!r} carries a metadata hash, which only "
                          f"version {FORMAT_VERSION} writes")
        if not signed and version != 1:
            raise _Damage(f"format_version {version!r} without the {METADATA_HASH} member")

        if signed:
            kind, entries = metadata["optimizer"]["kind"], metadata["optimizer"]["entries"]
            if OPTIMIZER_ENTRIES.get(kind) != entries:
                raise _Damage(f"optimizer {kind!r} with entries {entries}")
            hashed = {METADATA, METADATA_HASH}
        else:  # version 1: the optimiser is known only from the members present
            entries = sorted(name[len("optimizer/"):-len(".npy")] for name in members
                             if name.startswith("optimizer/") and name.endswith(".npy"))
            kind = _optimizer_kind(entries)
            if kind is None:
                raise _Damage(f"optimizer entries {entries} are neither SGD's nor Adam's")
            metadata["optimizer"] = {"kind": kind, "entries": entries}
            hashed = {METADATA}
        names = ["theta"] + [f"optimizer/{entry}" for entry in entries]
        expected = {f"{name}.npy" for name in [*names, *hashed]}
        if set(members) != expected:
            missing, extra = sorted(expected - set(members)), sorted(set(members) - expected)
            raise _Damage(f"missing members {missing}, unexpected members {extra}")

        arrays = {name: read(name) for name in names}
    if signed:
        for name, array in arrays.items():
            record = metadata["arrays"][name]
            found = {"dtype": str(array.dtype), "shape": list(array.shape),
                     "sha256": _array_hash(array)}
            for field in ("dtype", "shape", "sha256"):
                if found[field] != record[field]:
                    raise _Damage(f"{name} has {field} {found[field]}, the metadata says "
                                  f"{record[field]}")
    theta = arrays.pop("theta")
    # A version 1 file has no records: at least theta must fit the parameter list it names.
    ParameterLayout(metadata["parameters"]).check(theta, "theta")
    metadata["verified"] = signed
    return theta, {name.split("/", 1)[1]: value for name, value in arrays.items()}, metadata


def _parse_npy(name, data):
    """The array in the bytes of one ``.npy`` member, never unpickling, never over-allocating."""
    stream = io.BytesIO(data)
    version = np.lib.format.read_magic(stream)
    if version not in {(1, 0), (2, 0)}:
        raise _Damage(f"member {name} has .npy version {version}")
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    shape, fortran_order, dtype = read_header(stream)
    if dtype.hasobject:
        raise _Damage(f"member {name} holds Python objects")
    body = memoryview(data)[stream.tell():]
    if len(body) != math.prod(shape) * dtype.itemsize:
        raise _Damage(f"member {name} has {len(body)} data bytes for {dtype} of shape {shape}")
    return np.frombuffer(body, dtype).reshape(shape, order="F" if fortran_order else "C").copy()


def _text(name, array):
    """The string held by the 0-d unicode array of member ``name``."""
    if array.shape != () or array.dtype.kind != "U":
        raise _Damage(f"member {name} is {array.dtype} of shape {array.shape}, not a string")
    return str(array[()])
