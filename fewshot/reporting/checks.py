"""Consistency checks of a results file before the report trusts it.

A results.json written by train.py is internally consistent: accuracies are finite fractions,
the test accuracy is the mean of the per-episode accuracies, the episode count is their number,
and the best validation is one of the validations in the history. A file that breaks any of
this was edited, cut, or written by a run that went wrong (a NaN accuracy could otherwise be
marked best in the table); :func:`results_problems` names what does not add up.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# tolerance between a stored mean and the mean recomputed from its episodes (float32 sums)
MEAN_TOLERANCE = 1e-4


def fraction_problem(name: str, value: Any) -> str | None:
    """Why ``value`` is not a finite number in [0, 1] (None when it is)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{name} is {value!r}, not a number"
    if not math.isfinite(value):
        return f"{name} is {value}"
    if not 0.0 <= value <= 1.0:
        return f"{name} is {value}, outside [0, 1]"
    return None


def single_episode(score: Mapping[str, Any]) -> bool:
    """Whether a score is over one episode (its 95% CI is undefined: ``null``)."""
    episode_acc = score.get("episode_acc")
    return score.get("episodes") == 1 or (isinstance(episode_acc, list) and len(episode_acc) == 1)


def score_problems(name: str, score: Mapping[str, Any]) -> list[str]:
    """Problems of one ``{acc, ci95[, episodes, episode_acc, episode_index]}`` section."""
    ci95 = score.get("ci95")
    undefined = ci95 is None or (isinstance(ci95, float) and math.isnan(ci95))
    keys = ("acc",) if undefined and single_episode(score) else ("acc", "ci95")
    problems = [p for key in keys if (p := fraction_problem(f"{name}.{key}", score.get(key)))]
    episode_acc = score.get("episode_acc")
    if episode_acc is None:
        return problems
    if not isinstance(episode_acc, list) or not episode_acc:
        return [*problems, f"{name}.episode_acc is {episode_acc!r}, not a list of accuracies"]
    bad = [p for i, a in enumerate(episode_acc) if (p := fraction_problem(f"{name}.episode_acc[{i}]", a))]
    problems += bad[:3]
    episodes = score.get("episodes")
    if episodes is not None and episodes != len(episode_acc):
        problems.append(f"{name}.episodes is {episodes} but {name}.episode_acc has {len(episode_acc)} entries")
    index = score.get("episode_index")
    if index is not None and (len(index) != len(episode_acc) or len(set(index)) != len(index)):
        problems.append(f"{name}.episode_index has {len(index)} entries (or repeats) for {len(episode_acc)} episodes")
    acc = score.get("acc")
    if not bad and not problems[:1] and isinstance(acc, int | float):
        mean = math.fsum(episode_acc) / len(episode_acc)
        if abs(mean - acc) > MEAN_TOLERANCE:
            problems.append(f"{name}.acc is {acc} but the mean of {name}.episode_acc is {mean:.6f}")
    return problems


def validation_problems(results: Mapping[str, Any]) -> list[str]:
    """Problems of the validation history and the best validation chosen from it."""
    history = results.get("val_history") or []
    problems = [p for i, h in enumerate(history) if (p := fraction_problem(f"val_history[{i}].acc", h.get("acc")))]
    best = results.get("val") or {}
    if best.get("acc") is not None:
        problem = fraction_problem("val.acc", best["acc"])
        if problem:
            problems.append(problem)
        elif history and not problems and best["acc"] > max(h["acc"] for h in history) + MEAN_TOLERANCE:
            problems.append(
                f"val.acc (the best) is {best['acc']} but the best in val_history is {max(h['acc'] for h in history)}"
            )
    return problems


def results_problems(results: Mapping[str, Any]) -> list[str]:
    """Every inconsistency of a results file's test scores and validation history (empty if none)."""
    test = results.get("test") or {}
    problems = score_problems("test", test)
    for k, shot in (test.get("shots") or {}).items():
        problems += score_problems(f"test.shots[{k}]", shot)
    return problems + validation_problems(results)
