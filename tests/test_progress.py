"""The progress line (`reptile_np.progress`): its format, when it is written, and where."""
import io
import re

import pytest

from reptile_np.progress import Progress, format_duration

# ``label iteration/total  rate it/s  ETA duration  key=value...``; the rate depends on the clock.
LINE = r"{label} {iteration}/{total}  \d+\.\d it/s  ETA {eta}{extra}"


@pytest.mark.parametrize("seconds, text", [
    (0.0, "0.0s"), (12.34, "12.3s"), (59.9, "59.9s"), (60.0, "1m00s"), (185.0, "3m05s"),
    (3599.0, "59m59s"), (3600.0, "1h00m"), (3725.0, "1h02m"),
])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_reports_wait_for_the_interval_except_the_last_and_forced_ones():
    stream = io.StringIO()
    progress = Progress(10, "training", stream, interval=1e9)
    progress.update(3, accuracy="0.500")           # within the interval: not written
    assert stream.getvalue() == ""
    progress.update(4, force=True, accuracy="0.500")
    progress.update(10)                            # the last iteration is always written
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert re.fullmatch(LINE.format(label="training", iteration=4, total=10, eta=r"\S+",
                                    extra="  accuracy=0.500"), lines[0]), lines[0]
    assert re.fullmatch(LINE.format(label="training", iteration=10, total=10, eta="0.0s",
                                    extra=""), lines[1]), lines[1]


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_line_is_redrawn_in_place_and_ended_at_the_last_iteration():
    stream = _Terminal()
    progress = Progress(2, "evaluating test", stream, interval=0.0)
    progress.update(1)
    assert stream.getvalue().startswith("\revaluating test 1/2  ") and "\n" not in stream.getvalue()
    progress.update(2)
    first, second = stream.getvalue()[1:].split("\r")
    assert len(first) == 100 and second.endswith("\n") and len(second) == 101


def test_no_stream_writes_nothing(capsys):
    progress = Progress(1, "quiet", None, interval=0.0)
    progress.update(1, force=True)
    assert capsys.readouterr() == ("", "")
