"""argparse types for the commands outside `reptile_np.cli` (``theory``, ``experiment``).

A bad value becomes an ``argparse.ArgumentTypeError`` saying what was expected, which the
parser prints as one line naming the flag, with exit status 2.
"""
import argparse
import math


def _describe(kind, minimum, strict):
    """"an integer of at least 1", "a finite number above 0"."""
    noun = "an integer" if kind is int else "a finite number"
    return f"{noun} {'above' if strict else 'of at least'} {minimum:g}"


def _convert(text, kind, minimum, strict):
    """``kind(text)`` when it is finite and at least (``strict``: above) ``minimum``, else None."""
    try:
        value = kind(text)
    except ValueError:
        return None
    if not math.isfinite(value) or value < minimum or (strict and value == minimum):
        return None
    return value


def number(kind, minimum, strict=False):
    """An argparse type for one ``kind`` (int or float) of at least ``minimum``
    (``strict``: above it)."""
    def parse(text):
        value = _convert(text, kind, minimum, strict)
        if value is None:
            raise argparse.ArgumentTypeError(
                f"expected {_describe(kind, minimum, strict)}, got {text!r}")
        return value
    return parse


def numbers(kind, minimum, strict=False):
    """An argparse type for comma-separated ``kind`` values, each as `number`; a tuple."""
    def parse(text):
        values = tuple(_convert(v, kind, minimum, strict) for v in text.split(","))
        if None in values:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated values, each {_describe(kind, minimum, strict)}, "
                f"got {text!r}")
        return values
    return parse
