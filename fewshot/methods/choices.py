"""Checking a method's named options against the values it knows, and the batch-norm modes that
every method shares (``model.train_bn`` / ``model.eval_bn``; docs/configuration.md, Shared options)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

# How batch norm normalises the images a method classifies, one meaning for every method. The support
# set a method adapts on is always normalised with its own batch statistics.
BN_MODES: dict[str, str] = {
    "transductive": "the queries in one batch of their own, normalised with its statistics "
    "(a query's prediction depends on the other queries)",
    "joint": "the support set and the queries in one batch, normalised with its statistics",
    "support_plus_query": "each query in a batch of the support set plus that one query, normalised with its "
    "statistics",
    "support": "the running statistics gathered by the episode's support forwards while adapting, reset every episode",
    "running": "the running statistics accumulated in training (batch norm in eval mode)",
}


class OptionError(ValueError):
    """A method option set to a value the method does not take."""


def check_choice(key: str, value: object, choices: Collection[object]) -> None:
    """Raise an OptionError naming ``key``, its allowed ``choices`` and ``value`` unless value is one of them."""
    if value not in choices:
        raise OptionError(f"{key} must be one of {choices}, got {value!r}.")


@dataclass(frozen=True)
class BatchNormModes:
    """The shared batch-norm modes (:data:`BN_MODES`) a method takes while training and while evaluating."""

    train: tuple[str, ...]
    eval: tuple[str, ...]

    def check(self, method: str, train_bn: str, eval_bn: str) -> None:
        """Refuse, in one line naming the key, the value and what ``method`` takes, a mode it does not take."""
        for key, value, taken in (("model.train_bn", train_bn, self.train), ("model.eval_bn", eval_bn, self.eval)):
            if value in taken:
                continue
            what = f"'{value}' ({BN_MODES[value]})" if value in BN_MODES else f"{value!r} (not a batch-norm mode)"
            raise OptionError(
                f"{key}={what} is not one {method} takes; it takes {', '.join(repr(v) for v in taken)} "
                "(the modes: docs/configuration.md, Shared options)."
            )


__all__ = ["BN_MODES", "BatchNormModes", "OptionError", "check_choice"]
