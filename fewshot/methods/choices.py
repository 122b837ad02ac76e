"""Checking a method's named options (``model.bn_mode=...``) against the values it knows."""

from __future__ import annotations

from collections.abc import Collection


def check_choice(key: str, value: object, choices: Collection[object]) -> None:
    """Raise a ValueError naming ``key``, its allowed ``choices`` and ``value`` unless value is one of them."""
    if value not in choices:
        raise ValueError(f"{key} must be one of {choices}, got {value!r}.")
