"""Get the Omniglot release onto disk, verified, and decode it into the cache.

Downloads use only the standard library. A file reaches its final name only once it is
complete and its MD5 matches; until then it is `<name>.part`, deleted on any failure, so
a broken download can never pass for a good one, which would otherwise surface much later
as a run that cannot reproduce the paper. Files already in the destination are never
overwritten. The decoded cache goes where `load_omniglot` looks for it by default
(`cache.default_cache_dir("omniglot")`, keyed by the destination directory), so training
on the destination reuses it instead of decoding again.
"""
import hashlib
import http.client
import os
import shutil
import urllib.request
from pathlib import Path

from reptile_np.data import cache, omniglot
from reptile_np.data.cache import default_data_dir
from reptile_np.files import atomic_path, ensure_writable_dir
from reptile_np.errors import DataError

DEFAULT_BASE_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
OMNIGLOT_ZIPS = (f"{omniglot.BACKGROUND}.zip", f"{omniglot.EVALUATION}.zip")
# MD5 of the upstream zips, as published by torchvision and others.
OMNIGLOT_MD5 = dict(zip(OMNIGLOT_ZIPS, ("68d2efa1b9178cc56df9314c21c6e718",
                                        "6b91aef0f799c5bb55b94e3f2daec811")))
_CHUNK = 1 << 20


def fetch_omniglot(dest=None, from_dir=None, base_url=DEFAULT_BASE_URL, checksums=OMNIGLOT_MD5,
                   cache_dir=None):
    """Put `images_background.zip` and `images_evaluation.zip` in `dest` and build the cache.

    Without `from_dir` the zips are downloaded from `base_url` and checked against
    `checksums`. With `from_dir` they are copied from there instead; such copies may be
    repacked (other bytes, same images), so they are checked by content before anything is
    copied: every expected alphabet and character with 20 drawings, nothing misplaced,
    every PNG decodable. Zips already in `dest` are kept as they are and checked by content
    when the cache is built. Errors name the command's flags, `--dest` and `--from`.

    Args:
        dest: Directory to fill; defaults to `default_data_dir() / "omniglot"`.
        from_dir: Directory that already holds both zips, or None to download.
        base_url: URL prefix of the two zip files.
        checksums: Expected MD5 per zip file name, used for downloads only.
        cache_dir: Directory of the decoded caches, as for `load_omniglot` (same default).

    Returns:
        The destination directory, ready for `load_omniglot(dest)`.

    Raises:
        DataError: A download fails or is corrupt, or a zip is missing, different from one
            already in `dest`, or not a complete Omniglot release.
    """
    if set(checksums) != set(OMNIGLOT_ZIPS):
        raise ValueError(
            f"checksums: expected MD5s for exactly {', '.join(OMNIGLOT_ZIPS)}, got keys "
            f"{sorted(checksums)}.")
    dest = Path(dest) if dest is not None else default_data_dir() / "omniglot"
    ensure_writable_dir(dest, "--dest")
    if from_dir is not None:
        _import_omniglot(from_dir, dest, cache_dir)
    else:
        for name in OMNIGLOT_ZIPS:
            if not (dest / name).exists():
                download(f"{base_url.rstrip('/')}/{name}", dest / name, checksums[name])
        omniglot.load_characters(dest, cache_dir, flag="--dest")
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

    Raises:
        DataError: A different file is already at `path`, or the download fails, is cut
            short or has another MD5 (then nothing is left behind).
    """
    path = Path(path)
    if path.exists():
        actual = _md5(path)
        if actual != md5:
            raise DataError(
                f"{path} already exists with MD5 {actual}, not the expected {md5}; move it "
                "elsewhere to download the file again.")
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
                f"the download of {url} stopped after {received} of {length} bytes when the "
                "connection closed; retry it.")
        if digest.hexdigest() != md5:
            raise DataError(
                f"the download of {url} has MD5 {digest.hexdigest()}, not the expected {md5}: "
                "it is corrupt or the file changed upstream.")
        os.replace(part, path)
    except (OSError, http.client.HTTPException) as exc:
        part.unlink(missing_ok=True)
        raise DataError(f"could not download {url} ({exc}).") from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return path


def _import_omniglot(from_dir, dest, cache_dir):
    """Validate the zips in `from_dir` by content, copy them to `dest`, cache the decode."""
    from_dir = cache.source_dir(from_dir, "--from", omniglot.FETCH_HINT)
    for name in OMNIGLOT_ZIPS:
        source, target = from_dir / name, dest / name
        if not source.is_file():
            raise DataError(f"--from {from_dir} has no {name}; pass the folder that holds "
                            f"{' and '.join(OMNIGLOT_ZIPS)}.")
        if target.exists() and not _same_file(source, target):
            raise DataError(
                f"--dest {dest} already holds an {name} that differs from the one in --from "
                f"{from_dir}; choose another --dest.")
    if all((dest / name).exists() for name in OMNIGLOT_ZIPS):
        # Imported before: reuse the cache if it still matches, else decode the copies.
        omniglot.load_characters(dest, cache_dir, flag="--dest")
        return
    images, characters = omniglot.decode_omniglot(from_dir, flag="--from")
    for name in OMNIGLOT_ZIPS:
        if not (dest / name).exists():
            with atomic_path(dest / name) as tmp:
                shutil.copyfile(from_dir / name, tmp)
    omniglot.cache_characters(dest, images, characters, cache_dir, flag="--dest")


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
