"""A one-line progress report: iteration, iterations per second, ETA, and extra fields."""
import sys
import time


def format_duration(seconds):
    """``1h02m``, ``3m05s`` or ``12.3s``."""
    if seconds >= 3600:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    if seconds >= 60:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{seconds:.1f}s"


class Progress:
    """Prints ``label 1200/30000  2950 it/s  ETA 9.8s  key=value`` at most every ``interval`` s.

    On a terminal the line is redrawn in place; otherwise (logs, CI) one line is
    written per report. ``stream=None`` disables output.
    """

    def __init__(self, total, label="", stream=sys.stderr, interval=1.0, start=0):
        self.total, self.label, self.stream, self.interval = total, label, stream, interval
        self.start_iteration = start
        self.start_time = self.last_report = time.perf_counter()
        self.in_place = stream is not None and getattr(stream, "isatty", lambda: False)()

    def rate(self, iteration):
        """Iterations per second since the start."""
        elapsed = time.perf_counter() - self.start_time
        done = iteration - self.start_iteration
        return done / elapsed if elapsed > 0 else 0.0

    def update(self, iteration, force=False, **fields):
        """Report that ``iteration`` iterations are done (1-based count)."""
        now = time.perf_counter()
        if self.stream is None or (not force and now - self.last_report < self.interval
                                   and iteration < self.total):
            return
        self.last_report = now
        rate = self.rate(iteration)
        eta = (self.total - iteration) / rate if rate > 0 else float("inf")
        extra = "".join(f"  {key}={value}" for key, value in fields.items())
        line = (f"{self.label} {iteration}/{self.total}  {rate:.1f} it/s  "
                f"ETA {format_duration(eta) if eta != float('inf') else '?'}{extra}")
        if self.in_place:
            end = "\n" if iteration >= self.total else ""
            self.stream.write("\r" + line.ljust(100) + end)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
