"""Writing files safely: atomically replaced files and checked output directories."""
import contextlib
import os
import uuid
from pathlib import Path

from .errors import DataError


@contextlib.contextmanager
def atomic_path(path):
    """Give a temporary path that is moved onto `path` only if the block succeeds.

    The temporary file lives in the same directory, so the final `os.replace` is atomic:
    readers see either the old file or the complete new one, never a partial write. On
    any failure (an exception in the block, a full disk at the final flush or `fsync`, a
    failed rename, Ctrl-C) the temporary file is deleted, `path` is left untouched and
    the exception propagates. If the directory cannot be written, the temporary file is
    never created.

    Args:
        path: The final file name.

    Yields:
        The temporary `Path` to write to.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    # O_EXCL never reuses an existing name; mode 0o666 lets the umask decide the final
    # permissions, as for any file the user creates (mkstemp would force 0o600).
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        # Flush the data to disk before the rename, so a crash cannot leave a complete-looking
        # name that points at missing blocks.
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        # If even the deletion fails, the caller still needs the original error, not this one.
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def ensure_writable_dir(directory, argument):
    """Create `directory` if needed and fail clearly if files cannot be written into it.

    Args:
        directory: The directory that will receive files.
        argument: Name of the argument it came from, used in the error message.
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        writable = os.access(directory, os.W_OK)
    except OSError:
        writable = False
    if not writable:
        raise DataError(
            f"{argument}: expected a writable directory, got {directory}; pass another one.")
