"""The error raised for bad settings of the learned-optimizer family, and its checks."""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting of the learned-optimizer family is out of range.

    Messages name the setting, the value and the fix.
    """


def check_positive(name: str, value: float, hint: str = "") -> None:
    """Raise :class:`ConfigError` unless ``value > 0``.

    Args:
        name: the setting as it is written in the config, e.g. ``meta_train.truncation``.
        value: its value.
        hint: a suggestion appended to the message, e.g. ``"the paper uses 20"``.
    """
    if not value > 0:
        extra = f" ({hint})" if hint else ""
        raise ConfigError(f"{name} must be positive, got {value}: set {name} to a value above 0{extra}.")
