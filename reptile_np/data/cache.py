"""Where decoded data sets are cached, and how a cache is tied to the source it came from.

A loader decodes a release once and keeps the arrays in a cache file. The cache is only
valid for the exact files it was decoded from, so every cache is

* named by its source: `<prefix>_<key>`, the key a short hash of the resolved source
  directory and the decoding parameters. Two sources never share or overwrite a cache,
  and the cache of one source is replaced in place when that source changes, so stale
  copies do not pile up (each Omniglot cache is 31 MB, a Mini-ImageNet one 1.1 GB);
* stamped with a fingerprint: a hash of that path, the parameters and, for every source
  file, its name, size and modification time in nanoseconds. A cache is used only when
  the fingerprint of the directory given now equals the stamped one; otherwise it is
  rebuilt. File stats, not content hashes: a Mini-ImageNet tree is 60,000 JPEGs and
  several GB, which a content hash would reread on every load, while an edit, a copy or
  a fresh download always changes a file's size or mtime.
"""
import contextlib
import hashlib
import json
import os
from pathlib import Path

from reptile_np.errors import DataError
from reptile_np.files import ensure_writable_dir

# The argument named when the cache directory cannot be written: the API's `cache_dir`,
# whose default (and the command line's only choice) follows $REPTILE_NP_DATA.
CACHE_DIR_LABEL = "cache directory (cache_dir, default under $REPTILE_NP_DATA)"


def default_data_dir():
    """Return where data sets live when no directory is given.

    Returns:
        `$REPTILE_NP_DATA` if set, else `$XDG_CACHE_HOME/reptile-np`, else
        `~/.cache/reptile-np`.
    """
    if os.environ.get("REPTILE_NP_DATA"):
        return Path(os.environ["REPTILE_NP_DATA"]).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache_home).expanduser() / "reptile-np"


def default_cache_dir(dataset):
    """Return the directory of the decoded caches of `dataset` ("omniglot", ...).

    It is our own directory, never the user's data folder, which may be shared or
    read-only; `fetch-data` and `train` both use it, so a fetched cache is found again.
    """
    return default_data_dir() / dataset


def source_dir(data_dir, flag, hint):
    """Check that the data directory exists and is a directory; return it resolved.

    Args:
        data_dir: The directory given by the user.
        flag: The command-line flag it came from (e.g. "--data-dir"), named in errors.
        hint: How to get the data, appended to the error for a missing directory.

    Returns:
        The absolute, resolved `Path`, the identity of the source in its cache key.

    Raises:
        DataError: The path does not exist or is not a directory.
    """
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise DataError(f"{flag} {path} does not exist; {hint}.")
    if not path.is_dir():
        raise DataError(f"{flag} {path} is not a directory: pass the folder that holds the data.")
    return path.resolve()


def cache_name(prefix, source, **params):
    """Return `<prefix>_<key>`, the key hashing the source directory and `params`."""
    identity = json.dumps([str(source), params], sort_keys=True)
    return f"{prefix}_{hashlib.sha256(identity.encode()).hexdigest()[:12]}"


def fingerprint(source, files, **params):
    """Return a hex digest of `source`, `params` and each file's name, size and mtime_ns.

    Args:
        source: The resolved source directory.
        files: Every file the decoder reads, in a fixed order.
        **params: Decoding parameters (JSON-serialisable) that change the decoded arrays.
    """
    digest = hashlib.sha256(json.dumps([str(source), params], sort_keys=True).encode())
    for path in files:
        stat = os.stat(path)
        digest.update(f"\0{path}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def shorten(text, width=60):
    """Cut `text` to `width` characters, ending in "..." when cut."""
    text = str(text)
    return text if len(text) <= width else f"{text[:width - 3]}..."


def listing(items, budget=100, sep=", ", more="more"):
    """Join `items` while they fit in about `budget` characters, then say how many were
    left out ("a, b and 1,234 more"), so an error message stays one short line. An item
    longer than `budget` is cut; `more` names what was left out ("more problems").
    """
    items = [shorten(item, budget) for item in items]
    shown = items[:1]
    for item in items[1:]:
        if len(sep.join(shown + [item])) > budget:
            break
        shown.append(item)
    rest = len(items) - len(shown)
    return sep.join(shown) + (f"{sep}and {rest:,} {more}" if rest else "")


def prepare_dir(cache_dir, stale):
    """Make `cache_dir` ready for a build: writable, and without the `stale` files.

    The stale files are an earlier cache of the same source, built from files that have
    changed since; removing them first means a failed rebuild leaves no cache at all.
    """
    ensure_writable_dir(cache_dir, CACHE_DIR_LABEL)
    for path in stale:
        Path(path).unlink(missing_ok=True)


@contextlib.contextmanager
def reporting_write_errors(cache_dir):
    """Turn an OSError while writing a cache into a DataError naming the directory.

    The raw error would name the hidden temporary file, which means nothing to the user.
    """
    try:
        yield
    except OSError as exc:
        raise DataError(
            f"could not write the decoded cache into {cache_dir} ({exc.strerror}); free some "
            "space there or set $REPTILE_NP_DATA to another directory.") from None
