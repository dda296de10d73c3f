"""Process-level settings for speed that leave every number unchanged."""
import ctypes
import ctypes.util

# glibc mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def keep_freed_memory():
    """Let glibc keep freed heap memory for reuse instead of returning it to the OS.

    A training step allocates and frees the same few megabytes of temporaries again and
    again. With glibc's defaults large blocks are mmap'ed and unmapped, and the heap top
    is trimmed, so every step faults its pages back in: about 1,000 page faults (1.5 ms)
    per Omniglot step and 5,600 (17 ms) per Mini-ImageNet step. Raising the trim and mmap
    thresholds removes them; the cost is that the process keeps up to a few hundred MB of
    freed memory. Results are unaffected. A no-op where glibc is not the C library.

    Returns:
        True if the setting was applied.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(M_TRIM_THRESHOLD, 256 << 20)) and bool(mallopt(M_MMAP_THRESHOLD, 32 << 20))
