"""How a report shows its methods, read from data: the row order of the tables and each method's
colour in the figures (``fewshot/reporting/methods.yaml``, or a results folder's ``report.yaml``
``methods:`` list, which replaces it for that folder)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from matplotlib.colors import is_color_like, to_rgb

DEFAULT_METHODS_FILE = Path(__file__).with_name("methods.yaml")


class MethodDisplayError(ValueError):
    """A methods list that cannot be used: not a list of {name, colour}, a repeated name or a bad colour."""


def split_variant(method: str) -> tuple[str, str]:
    """``"MAML (meta-batch 4)"`` -> ``("MAML", "meta-batch 4")``; a plain method has variant ``""``."""
    base, _, variant = method.partition(" (")
    return base, variant.removesuffix(")")


@dataclass(frozen=True)
class MethodDisplay:
    """The methods in display order, each with its colour, and colours for methods not listed."""

    order: tuple[str, ...]
    colours: dict[str, tuple[float, float, float]]
    spare_colours: tuple[tuple[float, float, float], ...] = ()

    def sort_key(self, method: str) -> tuple[int, str, str]:
        """Position of a method in a table (listed order first; a variant ``M (v)`` right after ``M``)."""
        base, variant = split_variant(method)
        if base in self.order:
            return (self.order.index(base), "", variant.lower())
        return (len(self.order), base.lower(), variant.lower())

    def colour_of(self, bases: list[str]) -> dict[str, tuple[float, float, float]]:
        """A colour per base method: its listed colour, else the spare colours in turn, then those of
        listed methods absent from ``bases``; every base its own colour while any is left."""
        absent = [self.colours[m] for m in self.order if m not in bases]
        free = iter(self.spare_colours + tuple(absent))
        fallback = self.spare_colours + tuple(self.colours.values())
        chosen = {}
        for number, base in enumerate(bases):
            listed = self.colours.get(base)
            chosen[base] = listed if listed is not None else next(free, fallback[number % len(fallback)])
        return chosen


def parse_colour(value: Any, where: str) -> tuple[float, float, float]:
    """A matplotlib colour as RGB (a one-line error naming ``where`` otherwise)."""
    if not isinstance(value, str) or not is_color_like(value):
        raise MethodDisplayError(
            f"{where}: colour {value!r} is not a matplotlib colour; use a name such as tab:blue or a hex "
            "such as #1f77b4."
        )
    return to_rgb(value)


def method_display(methods: Any, spare: Any = (), source: str = "methods") -> MethodDisplay:
    """A display from a ``methods:`` list of ``{name, colour}`` and a list of spare colours."""
    if not isinstance(methods, list) or not methods:
        raise MethodDisplayError(f"{source}: methods must be a non-empty list of {{name: ..., colour: ...}}.")
    order, colours = [], {}
    for entry in methods:
        if not isinstance(entry, dict) or set(entry) != {"name", "colour"} or not isinstance(entry["name"], str):
            raise MethodDisplayError(
                f"{source}: each method is {{name: <table name>, colour: <matplotlib colour>}}; got {entry!r}."
            )
        name = entry["name"]
        if name in colours:
            raise MethodDisplayError(f"{source}: method {name!r} is listed twice; list each method once.")
        order.append(name)
        colours[name] = parse_colour(entry["colour"], f"{source}: {name}")
    if not isinstance(spare, (list, tuple)):
        raise MethodDisplayError(f"{source}: spare_colours must be a list of matplotlib colours; got {spare!r}.")
    spares = tuple(parse_colour(c, f"{source}: spare_colours") for c in spare)
    return MethodDisplay(tuple(order), colours, spares)


def load_default_display(path: Path = DEFAULT_METHODS_FILE) -> MethodDisplay:
    """The package's display (``methods.yaml``)."""
    data = yaml.safe_load(path.read_text()) or {}
    return method_display(data.get("methods"), data.get("spare_colours", ()), str(path))


DEFAULT_DISPLAY = load_default_display()


def with_methods(methods: Any, source: str) -> MethodDisplay:
    """The package's display with its methods list replaced by ``methods`` (its spare colours kept)."""
    return replace(method_display(methods, (), source), spare_colours=DEFAULT_DISPLAY.spare_colours)
