"""One training per checkpoint directory: an exclusive ``flock`` on a lock file inside it.

Two trainings writing the same checkpoint would overwrite each other's progress, each
thinking it continues the run. The lock is taken before the checkpoint is read or written
and held until the process exits; the operating system releases it when the process
dies, however it dies (SIGKILL included), so a stale lock never blocks the next run.
The file's text names the holder (pid, host, start time) for the error message; the lock
itself is the ``flock``, not the file's existence.
"""
import datetime
import fcntl
import os
import socket

LOCK_NAME = ".reptile-np.lock"


class RunLockedError(ValueError):
    """Another process holds the checkpoint directory's lock."""


def lock_run_directory(directory):
    """Take the exclusive lock of ``directory`` (which must exist) for this process.

    Args:
        directory: a ``--checkpoint`` directory.

    Returns:
        The open lock file; the lock lasts while it stays open (keep a reference to it).

    Raises:
        RunLockedError: another process holds the lock (the message names it).
        OSError: the lock file cannot be created.
    """
    path = os.path.join(directory, LOCK_NAME)
    handle = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunLockedError(f"--checkpoint {directory} is in use by {holder}; wait for that "
                             f"run to finish or choose another --checkpoint.") from None
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}")
    handle.flush()
    return handle
