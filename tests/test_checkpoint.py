"""Checkpoints: exact round trips, and any damage refused with one ValueError naming the file;
from the command line, a damaged or another model's checkpoint is refused with exit 2 and a
version 1 one is evaluated with a warning."""
import errno
import hashlib
import io
import json
import os
import zipfile

import numpy as np
import pytest

from reptile_np import models
from reptile_np.checkpoint import load_checkpoint, save_checkpoint
from reptile_np.optim import SGD, Adam

from test_train_cli import SMALL, run_cli

CONFIG = {"seed": 3, "train": {"num_classes": 5}}


def _run_state(optimizer_kind="adam", dtype=np.float32):
    """A tiny model, its parameters and an optimiser that has taken two steps."""
    model = models.sine_mlp(hidden=(4,))
    rng = np.random.default_rng(0)
    theta = model.init(rng, dtype)
    optimizer = (Adam(model.num_params, dtype=dtype) if optimizer_kind == "adam" else SGD(0.1))
    for _ in range(2):
        optimizer.step(theta.copy(), rng.standard_normal(model.num_params).astype(dtype))
    return model, theta, optimizer


def _saved(tmp_path, optimizer_kind="adam", dtype=np.float32):
    """Save a checkpoint of `_run_state`; return (path, model, theta, optimizer_state)."""
    model, theta, optimizer = _run_state(optimizer_kind, dtype)
    path = str(tmp_path / "checkpoint.npz")
    save_checkpoint(path, model, theta, optimizer.snapshot(), 7, CONFIG)
    return path, model, theta, optimizer.snapshot()


def _npy(array):
    """The bytes of `array` as a .npy file."""
    stream = io.BytesIO()
    np.lib.format.write_array(stream, np.asarray(array))
    return stream.getvalue()


def _rewrite(path, change):
    """Rewrite the zip at `path` with ``change(members)`` applied to its {name: bytes}.

    zipfile computes fresh CRC-32s, so only the checkpoint's own checks can notice."""
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    change(members)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def _edit_metadata(members, edit, rehash=False):
    """Apply ``edit(metadata)`` to the metadata member; optionally recompute its hash entry."""
    metadata = json.loads(str(np.load(io.BytesIO(members["metadata.npy"]))))
    edit(metadata)
    text = json.dumps(metadata, sort_keys=True)
    members["metadata.npy"] = _npy(np.array(text))
    if rehash:
        members["metadata_sha256.npy"] = _npy(np.array(hashlib.sha256(text.encode()).hexdigest()))


def _assert_refused(path, *fragments):
    with pytest.raises(ValueError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert f"checkpoint {path} " in message and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message


def _assert_same_load(loaded, theta, state):
    theta_back, state_back, _ = loaded
    assert theta_back.dtype == theta.dtype and np.array_equal(theta_back, theta)
    assert sorted(state_back) == sorted(state)
    for key, value in state.items():
        assert state_back[key].dtype == np.asarray(value).dtype
        np.testing.assert_array_equal(state_back[key], value)


@pytest.mark.parametrize("optimizer_kind", ["adam", "sgd"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_is_exact_and_records_the_optimizer(tmp_path, optimizer_kind, dtype):
    path, model, theta, state = _saved(tmp_path, optimizer_kind, dtype)
    loaded = load_checkpoint(path, model)
    _assert_same_load(loaded, theta, state)
    metadata = loaded[2]
    assert metadata["verified"] is True and metadata["format_version"] == 2
    assert metadata["optimizer"] == {"kind": optimizer_kind,
                                     "entries": ["m", "t", "v"] if optimizer_kind == "adam" else []}
    assert metadata["iteration"] == 7 and metadata["config"] == CONFIG
    # A fresh optimiser restored from it holds exactly the saved state.
    fresh = Adam(model.num_params, dtype=dtype) if optimizer_kind == "adam" else SGD(0.1)
    fresh.restore(loaded[1])
    _assert_same_load((theta, fresh.snapshot(), None), theta, state)
    # The documented format: plain numpy.load reads it without pickle.
    with np.load(path, allow_pickle=False) as archive:
        np.testing.assert_array_equal(archive["theta"], theta)


def test_every_single_byte_flip_is_refused_or_harmless(tmp_path):
    """XOR 0xFF at every offset: the load raises one ValueError naming the file, or (a byte
    zipfile never reads, e.g. a local header's copy of the sizes) gives the same arrays and
    metadata; never a different result, never another exception."""
    path, model, theta, state = _saved(tmp_path)
    original = open(path, "rb").read()
    metadata = load_checkpoint(path, model)[2]
    damaged = str(tmp_path / "damaged.npz")
    refused, harmless = 0, []
    for offset in range(len(original)):
        flipped = bytearray(original)
        flipped[offset] ^= 0xFF
        with open(damaged, "wb") as file:
            file.write(flipped)
        try:
            loaded = load_checkpoint(damaged, model)
        except ValueError as error:
            assert f"checkpoint {damaged} is damaged (" in str(error), (offset, str(error))
            assert "\n" not in str(error), (offset, str(error))
            refused += 1
            continue
        _assert_same_load(loaded, theta, state)
        assert loaded[2] == metadata, offset
        harmless.append(offset)
    # Only bytes outside the members' data can be harmless: all of it is read and checked.
    assert refused > 0 and not set(harmless) & _member_data_offsets(path)


def _member_data_offsets(path):
    """The file offsets of every member's data (its .npy bytes) in the zip at `path`."""
    offsets = set()
    with zipfile.ZipFile(path) as archive, open(path, "rb") as file:
        for info in archive.infolist():
            file.seek(info.header_offset)
            local_header = file.read(30)  # fixed part; name and extra lengths at bytes 26-29
            start = (info.header_offset + 30 + int.from_bytes(local_header[26:28], "little")
                     + int.from_bytes(local_header[28:30], "little"))
            offsets.update(range(start, start + info.compress_size))
    return offsets


def test_truncation_at_every_length_is_refused(tmp_path):
    path, model, _, _ = _saved(tmp_path)
    original = open(path, "rb").read()
    damaged = str(tmp_path / "truncated.npz")
    for length in range(len(original)):
        with open(damaged, "wb") as file:
            file.write(original[:length])
        _assert_refused(damaged, "is damaged")


@pytest.mark.parametrize("change, fragment", [
    (lambda members: members.pop("optimizer/v.npy"), "missing members ['optimizer/v.npy']"),
    (lambda members: members.pop("theta.npy"), "missing members ['theta.npy']"),
    (lambda members: members.update({"optimizer/w.npy": _npy(np.zeros(3))}),
     "unexpected members ['optimizer/w.npy']"),
    (lambda members: members.update({"notes.npy": _npy(np.zeros(3))}),
     "unexpected members ['notes.npy']"),
    (lambda members: members.update({"optimizer/V.npy": members.pop("optimizer/v.npy")}),
     "missing members ['optimizer/v.npy'], unexpected members ['optimizer/V.npy']"),
])
def test_missing_extra_or_renamed_member_is_refused(tmp_path, change, fragment):
    path = _saved(tmp_path)[0]
    _rewrite(path, change)
    _assert_refused(path, "is damaged", fragment)


@pytest.mark.parametrize("name, replacement, fragment", [
    ("theta.npy", lambda theta: theta + np.float32(2.0 ** -20), "theta has sha256"),
    ("theta.npy", lambda theta: theta.astype(np.float64), "theta has dtype float64"),
    ("optimizer/v.npy", lambda v: v[:-1], "optimizer/v has shape"),
    ("optimizer/t.npy", lambda t: t + 1, "optimizer/t has sha256"),
])
def test_member_rewritten_with_a_valid_crc_is_caught_by_its_record(tmp_path, name, replacement,
                                                                    fragment):
    path = _saved(tmp_path)[0]

    def change(members):
        members[name] = _npy(replacement(np.load(io.BytesIO(members[name]))))
    _rewrite(path, change)
    _assert_refused(path, "is damaged", fragment)


def test_metadata_edited_with_a_valid_crc_is_caught_by_its_hash(tmp_path):
    path = _saved(tmp_path)[0]
    _rewrite(path, lambda members: _edit_metadata(members, lambda m: m["config"].update(seed=4)))
    _assert_refused(path, "the metadata does not match its SHA-256")


def test_header_claiming_a_huge_array_is_refused_without_allocating_it(tmp_path):
    """A .npy header whose shape claims 2^40 values (4 TiB) with a valid zip CRC."""
    path = _saved(tmp_path)[0]

    def change(members):
        stream = io.BytesIO(members["theta.npy"])
        np.lib.format.read_magic(stream)
        np.lib.format.read_array_header_1_0(stream)
        body = stream.read()
        huge = io.BytesIO()
        np.lib.format.write_array_header_1_0(huge, {"descr": "<f4", "fortran_order": False,
                                                    "shape": (2 ** 40,)})
        members["theta.npy"] = huge.getvalue() + body
    _rewrite(path, change)
    _assert_refused(path, "member theta has 52 data bytes for float32 of shape (1099511627776,)")


def test_zip_size_field_beyond_the_file_is_refused_before_reading(tmp_path):
    """The central directory entry of theta claims 2 GiB (both size fields, so they agree)."""
    path = _saved(tmp_path)[0]
    data = bytearray(open(path, "rb").read())
    # theta's central directory entry: its name follows the 46-byte fixed part.
    entry = data.index(b"theta.npy", data.index(b"PK\x01\x02")) - 46
    assert data[entry:entry + 4] == b"PK\x01\x02"
    data[entry + 20:entry + 28] = (2 ** 31 - 1).to_bytes(4, "little") * 2
    open(path, "wb").write(data)
    _assert_refused(path, f"member theta claims 2147483647 bytes (stored as 2147483647, method 0) "
                          f"in a {len(data)}-byte file")


def _save_version_1(path, model, theta, optimizer_state, iteration, config):
    """The format version 1 writer exactly as reptile-np 0.1.0 shipped it (no hashes)."""
    metadata = {
        "format_version": 1,
        "reptile_np_version": "0.1.0",
        "iteration": int(iteration),
        "parameters": [[name, list(shape)] for name, shape in zip(model.layout.names,
                                                                 model.layout.shapes)],
        "dtype": str(theta.dtype),
        "config": config,
    }
    arrays = {"theta": theta, "metadata": np.array(json.dumps(metadata, sort_keys=True))}
    arrays.update({f"optimizer/{key}": np.asarray(value) for key, value in optimizer_state.items()})
    with open(path, "wb") as file:
        np.savez(file, **arrays)


@pytest.mark.parametrize("optimizer_kind, entries", [("adam", ["m", "t", "v"]), ("sgd", [])])
def test_version_1_file_loads_marked_unverified(tmp_path, optimizer_kind, entries):
    model, theta, optimizer = _run_state(optimizer_kind)
    path = str(tmp_path / "checkpoint.npz")
    _save_version_1(path, model, theta, optimizer.snapshot(), 5, CONFIG)
    loaded = load_checkpoint(path, model)
    _assert_same_load(loaded, theta, optimizer.snapshot())
    metadata = loaded[2]
    assert metadata["verified"] is False and metadata["iteration"] == 5
    assert metadata["optimizer"] == {"kind": optimizer_kind, "entries": entries}


def test_version_1_file_missing_an_adam_entry_is_refused(tmp_path):
    model, theta, optimizer = _run_state("adam")
    path = str(tmp_path / "checkpoint.npz")
    state = optimizer.snapshot()
    del state["v"]
    _save_version_1(path, model, theta, state, 5, CONFIG)
    _assert_refused(path, "optimizer entries ['m', 't'] are neither SGD's nor Adam's")


def test_version_1_file_whose_theta_does_not_fit_its_parameters_is_refused(tmp_path):
    model, theta, optimizer = _run_state("sgd")
    path = str(tmp_path / "checkpoint.npz")
    _save_version_1(path, model, theta[:-1], optimizer.snapshot(), 5, CONFIG)
    _assert_refused(path, "is damaged", "theta must be a 1-D array of 13 parameters, got (12,)")


@pytest.mark.parametrize("rehash, fragment", [
    (False, "the metadata does not match its SHA-256"),
    (True, "format_version 1 carries a metadata hash, which only version 2 writes"),
])
def test_version_2_relabelled_as_version_1_is_refused(tmp_path, rehash, fragment):
    path = _saved(tmp_path)[0]
    _rewrite(path, lambda members: _edit_metadata(
        members, lambda m: m.update(format_version=1), rehash))
    _assert_refused(path, "is damaged", fragment)


def test_version_2_without_its_metadata_hash_is_refused(tmp_path):
    path = _saved(tmp_path)[0]
    _rewrite(path, lambda members: members.pop("metadata_sha256.npy"))
    _assert_refused(path, "is damaged", "format_version 2 without the metadata_sha256 member")


def test_newer_format_is_refused_as_newer_not_damaged(tmp_path):
    path = _saved(tmp_path)[0]
    _rewrite(path, lambda members: _edit_metadata(
        members, lambda m: m.update(format_version=3), rehash=True))
    with pytest.raises(ValueError, match="format_version 3, newer than .*upgrade") as error:
        load_checkpoint(path)
    assert path in str(error.value) and "damaged" not in str(error.value)


def _fail_after_partial_write(file, **arrays):
    """Stands in for numpy.savez on a full disk: some bytes land, then ENOSPC."""
    file.write(b"PK\x03\x04 partial")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_failed_save_keeps_the_previous_checkpoint_and_no_temporary_file(tmp_path, monkeypatch):
    path, model, theta, state = _saved(tmp_path)
    before = open(path, "rb").read()
    monkeypatch.setattr(np, "savez", _fail_after_partial_write)
    with pytest.raises(OSError, match="No space left on device") as error:
        save_checkpoint(path, model, theta + 1, state, 8, CONFIG)
    assert str(error.value).startswith(f"checkpoint {path} could not be written")
    assert "the previous checkpoint there is untouched" in str(error.value)
    assert os.listdir(tmp_path) == ["checkpoint.npz"]
    assert open(path, "rb").read() == before


def test_failed_first_save_leaves_no_file(tmp_path, monkeypatch):
    model, theta, optimizer = _run_state()
    path = str(tmp_path / "run" / "checkpoint.npz")
    monkeypatch.setattr(np, "savez", _fail_after_partial_write)
    with pytest.raises(OSError, match="there was no previous checkpoint"):
        save_checkpoint(path, model, theta, optimizer.snapshot(), 1, CONFIG)
    assert os.listdir(tmp_path / "run") == []


def test_unknown_optimizer_state_is_refused_at_save(tmp_path):
    model, theta, _ = _run_state()
    with pytest.raises(ValueError, match=r"optimizer_state must .* exactly m, t, v \(Adam\), got \['m'\]"):
        save_checkpoint(str(tmp_path / "c.npz"), model, theta, {"m": theta}, 1, CONFIG)
    assert not (tmp_path / "c.npz").exists()


def test_evaluating_a_version_1_checkpoint_warns_that_it_is_unverified(tmp_path):
    run = tmp_path / "run"
    trained = run_cli("train", *SMALL, "--meta-iters", "2", "--eval-samples", "0",
                      "--checkpoint", str(run))
    assert trained.returncode == 0, trained.stderr
    path = str(run / "checkpoint.npz")
    theta, state, metadata = load_checkpoint(path)
    model = models.omniglot_cnn(3)
    _save_version_1(path, model, theta, state, metadata["iteration"], metadata["config"])
    done = run_cli("eval", "--checkpoint", str(run), "--eval-samples", "2")
    assert done.returncode == 0, done.stderr
    assert f"warning: {path} was written by an older reptile-np without checksums" in done.stderr


def test_checkpoint_of_another_model_or_damaged_is_refused(tmp_path):
    first = run_cli("train", *SMALL, "--meta-iters", "3", "--eval-samples", "0",
                    "--checkpoint", str(tmp_path))
    assert first.returncode == 0, first.stderr
    path = tmp_path / "checkpoint.npz"
    _, state, metadata = load_checkpoint(str(path))
    model = models.omniglot_cnn(4)  # recorded as 3-way
    save_checkpoint(str(path), model, model.init(np.random.default_rng(0)), state,
                    metadata["iteration"], metadata["config"])
    other = run_cli("eval", "--eval-samples", "1", "--checkpoint", str(tmp_path))
    assert other.returncode == 2 and "different model" in other.stderr
    path.write_bytes(path.read_bytes()[:200])
    damaged = run_cli("eval", "--eval-samples", "1", "--checkpoint", str(tmp_path))
    assert damaged.returncode == 2 and "damaged" in damaged.stderr
