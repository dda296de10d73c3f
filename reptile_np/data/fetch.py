"""Get the Omniglot release onto disk, verified, and decode it into the cache.

Downloads use only the standard library. A file reaches its final name only once it is
complete and its MD5 matches; until then it is `<name>.part`, deleted on any failure, so
a broken download can never pass for a good one (the cause of many "cannot reproduce"
reports, see DESIGN.md). Files already in the destination are never overwritten.
"""
import hashlib
import http.client
import os
import shutil
import urllib.request
from pathlib import Path

from reptile_np.data import omniglot
from reptile_np.files import atomic_path, ensure_writable_dir
from reptile_np.errors import DataError

DEFAULT_BASE_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
OMNIGLOT_ZIPS = (f"{omniglot.BACKGROUND}.zip", f"{omniglot.EVALUATION}.zip")
# MD5 of the upstream zips, as published by torchvision and others.
OMNIGLOT_MD5 = dict(zip(OMNIGLOT_ZIPS, ("68d2efa1b9178cc56df9314c21c6e718",
                                        "6b91aef0f799c5bb55b94e3f2daec811")))
_CHUNK = 1 << 20


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


def fetch_omniglot(dest=None, from_dir=None, base_url=DEFAULT_BASE_URL, checksums=OMNIGLOT_MD5):
    """Put `images_background.zip` and `images_evaluation.zip` in `dest` and build the cache.

    Without `from_dir` the zips are downloaded from `base_url` and checked against
    `checksums`. With `from_dir` they are copied from there instead; such copies may be
    repacked (other bytes, same images), so they are checked by content: every expected
    alphabet and character with 20 drawings, nothing misplaced, every PNG decodable. Zips
    already in `dest` are kept as they are and checked by content when the cache is built.

    Args:
        dest: Directory to fill; defaults to `default_data_dir() / "omniglot"`.
        from_dir: Directory that already holds both zips, or None to download.
        base_url: URL prefix of the two zip files.
        checksums: Expected MD5 per zip file name, used for downloads only.

    Returns:
        The destination directory, ready for `load_omniglot(dest)`.
    """
    if set(checksums) != set(OMNIGLOT_ZIPS):
        raise ValueError(
            f"checksums: expected MD5s for exactly {', '.join(OMNIGLOT_ZIPS)}, got keys "
            f"{sorted(checksums)}.")
    dest = Path(dest) if dest is not None else default_data_dir() / "omniglot"
    ensure_writable_dir(dest, "dest")
    if from_dir is not None:
        _import_omniglot(Path(from_dir), dest)
    else:
        for name in OMNIGLOT_ZIPS:
            if not (dest / name).exists():
                download(f"{base_url.rstrip('/')}/{name}", dest / name, checksums[name])
        omniglot.load_characters(dest)
    return dest


def download(url, path, md5, timeout=60.0):
    """Download `url` to `path`, keeping it only if it is complete and its MD5 matches.

    Args:
        url: Source URL (http, https or file).
        path: Final file name; the data streams to `<path>.part` first.
        md5: Expected MD5 hex digest of the whole file.
        timeout: Seconds to wait for the server on each read.

    Returns:
        `path`. A file already at `path` with the expected MD5 is kept without downloading.
    """
    path = Path(path)
    if path.exists():
        if _md5(path) != md5:
            raise DataError(
                f"path: expected {path} to be absent or to have MD5 {md5}, got a different "
                "file; delete it to download again.")
        return path
    part = path.with_name(path.name + ".part")
    digest = hashlib.md5(usedforsecurity=False)
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
            length = response.headers.get("Content-Length")
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
                received += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        # http.client returns a short body without complaint when the connection drops,
        # so the length is checked here.
        if length is not None and received != int(length):
            raise DataError(
                f"url: expected {length} bytes from {url}, got {received} before the "
                "connection closed; retry the download.")
        if digest.hexdigest() != md5:
            raise DataError(
                f"md5: expected {md5} for {url}, got {digest.hexdigest()}; the download is "
                "corrupt or the file changed upstream.")
        os.replace(part, path)
    except (OSError, http.client.HTTPException) as exc:
        part.unlink(missing_ok=True)
        raise DataError(f"url: expected to download {url}, got an error ({exc}).") from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return path


def _import_omniglot(from_dir, dest):
    """Validate the zips in `from_dir` by content, copy them to `dest`, write the cache."""
    for name in OMNIGLOT_ZIPS:
        if not (from_dir / name).is_file():
            raise DataError(f"from_dir: expected {name} in {from_dir}, got no such file.")
    cache = omniglot.cache_file(dest)
    if cache.exists() and all((dest / name).exists() and _same_file(from_dir / name, dest / name)
                              for name in OMNIGLOT_ZIPS):
        # Imported before: the content was validated when this cache was built.
        omniglot.read_cache(cache)
        return
    images, characters = omniglot.decode_omniglot(from_dir)
    for name in OMNIGLOT_ZIPS:
        source, target = from_dir / name, dest / name
        if target.exists():
            if not _same_file(source, target):
                raise DataError(
                    f"dest: expected {target} to be absent or identical to {source}, got a "
                    "different file; delete it or choose another dest.")
            continue
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
    if cache.exists():
        omniglot.read_cache(cache)  # an unreadable cache raises; a good one is kept
    else:
        omniglot.write_cache(cache, images, characters)


def _same_file(first, second):
    if first.resolve() == second.resolve():
        return True
    if first.stat().st_size != second.stat().st_size:
        return False
    return _md5(first) == _md5(second)


def _md5(path):
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
