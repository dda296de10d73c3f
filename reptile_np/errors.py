"""Exceptions shared across reptile_np."""


class DataError(ValueError):
    """A data set or cache on disk is missing, incomplete or corrupt.

    It subclasses ValueError so callers that only catch bad-input errors still catch it.
    """
