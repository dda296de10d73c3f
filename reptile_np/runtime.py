"""Process-level settings for speed that leave every number unchanged."""
import ctypes
import ctypes.util
import os
import time

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


class OtherProcessesLoad:
    """How many CPUs the machine's other processes keep busy, measured between readings.

    Linux counts, in the first line of ``/proc/stat``, the time every CPU spent busy since
    boot (user, nice, system, irq, softirq and steal: time the hypervisor gave to other
    machines is as unavailable to us as time another process took). The busy time that
    passed between two readings, minus this process's own CPU time (all its threads), over
    the wall time between them, is the number of CPUs the others used meanwhile.

    ``/proc/stat`` counts in clock ticks (usually 10 ms), so a reading over one second is
    good to about 0.01 CPU per CPU. Where there is no ``/proc/stat`` (macOS, Windows),
    `others` is None.
    """

    def __init__(self, stat_path="/proc/stat"):
        self._stat_path = stat_path
        self._last = self._read()

    def _read(self):
        """(wall s, busy CPU-s of the machine, CPU-s of this process), or None."""
        try:
            with open(self._stat_path, encoding="ascii") as stat:
                fields = stat.readline().split()
            ticks = [int(value) for value in fields[1:9]]
            per_second = os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, AttributeError):
            return None
        if len(ticks) < 8 or fields[0] != "cpu":
            return None
        idle = ticks[3] + ticks[4]   # idle, iowait (fields 9 and 10, guest time, are in user)
        return time.monotonic(), (sum(ticks) - idle) / per_second, time.process_time()

    def others(self):
        """CPUs the other processes used on average since the last call (or since this
        object was made), never below 0; None where it cannot be measured."""
        now = self._read()
        last, self._last = self._last, now
        if now is None or last is None or now[0] <= last[0]:
            return None
        machine, ours = now[1] - last[1], now[2] - last[2]
        return max(0.0, (machine - ours) / (now[0] - last[0]))
