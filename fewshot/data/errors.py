"""Errors raised for bad data or bad episode settings."""


class DataError(ValueError):
    """A dataset is missing, corrupt, or cannot serve the requested episodes.

    Messages name the problem and the fix.
    """
