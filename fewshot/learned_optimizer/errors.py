"""The error raised for bad settings of the learned-optimizer family, and its checks."""

from __future__ import annotations


class ConfigError(ValueError):
    """A learned-optimizer setting out of range; the message names the setting, the value and the fix."""


def check_positive(name: str, value: float, hint: str = "") -> None:
    """Raise :class:`ConfigError` unless ``value > 0``; ``name`` is the setting as the config writes it,
    ``hint`` a suggestion for the message (``"the paper uses 20"``).
    """
    if not value > 0:
        extra = f" ({hint})" if hint else ""
        raise ConfigError(f"{name} must be positive, got {value}: set {name} to a value above 0{extra}.")
