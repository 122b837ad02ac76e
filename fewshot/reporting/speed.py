"""Whether the runs of a report ran at comparable CPU speeds (their ``hardware.speed_probe``)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from fewshot.reporting.display import DEFAULT_DISPLAY, MethodDisplay
from fewshot.reporting.runs import RunRecord

# Probe medians (of runs, or of a run's first and second half) further apart than this factor mean
# a CPU-second bought different work. One probe varies by up to 1.7x on the busy 2-core reference
# machine; a median over a run's probes by much less; the change between days that prompted the
# probe was 2.5x.
PROBE_SPREAD = 1.5
# CPU-seconds per training step of one method's seeds further apart than this (a whole-run average:
# less noisy than a probe)
PACE_SPREAD = 1.25


def run_label(run: RunRecord) -> str:
    """``method seed s`` for naming a run in a note."""
    return f"{run.method} seed {run.seed}"


def half_medians(run: RunRecord) -> tuple[float, float] | None:
    """Medians of the first and the second half of a run's probes, or None with fewer than 4."""
    values = [
        m["cpu_ms"] for m in (run.speed_probe or {}).get("history", []) if isinstance(m.get("cpu_ms"), (int, float))
    ]
    if len(values) < 4:
        return None
    middle = len(values) // 2
    return statistics.median(values[:middle]), statistics.median(values[middle:])


def setting_speed_line(setting: str, runs: Sequence[RunRecord]) -> str | None:
    """One line on the CPU speeds of a setting's runs, or None where none of them was probed."""
    probed = [r for r in runs if r.speed_ms is not None]
    if not probed:
        return None
    fastest = min(r.speed_ms for r in probed)
    slowest = max(r.speed_ms for r in probed)
    span = f"median {fastest:.1f} ms" if len(probed) == 1 else f"medians {fastest:.1f} to {slowest:.1f} ms"
    line = f"- {setting}: {len(probed)} of {len(runs)} runs probed, {span}"
    slow = sorted((r for r in probed if r.speed_ms / fastest > PROBE_SPREAD), key=lambda r: -r.speed_ms)
    if slow:
        names = ", ".join(f"{run_label(r)} ({r.speed_ms / fastest:.2f}x)" for r in slow)
        line += f"; slower than the fastest by more than {PROBE_SPREAD:g}x: {names}"
    # probes of the first and second half of training further apart: a resume on a slower day, or
    # the machine's speed changing under the run
    unsteady = [r for r in probed if (h := half_medians(r)) and min(h) > 0 and max(h) / min(h) > PROBE_SPREAD]
    if unsteady:
        line += "; speed changed within " + ", ".join(run_label(r) for r in unsteady)
    return line


def platform_line(setting: str, runs: Sequence[RunRecord], display: MethodDisplay = DEFAULT_DISPLAY) -> str | None:
    """A line naming which runs of a setting trained on which platform, where there were several
    (two hosts of one cloud can differ twice in speed: CPU-minute caps then buy different work)."""
    by_platform: dict[str, list[RunRecord]] = {}
    for run in runs:
        if run.platform:
            by_platform.setdefault(run.platform, []).append(run)
    if len(by_platform) < 2:
        return None
    groups = []
    for platform, group in sorted(by_platform.items(), key=lambda item: -len(item[1])):
        ordered = sorted(group, key=lambda r: (display.sort_key(r.method), r.seed))
        groups.append(f"{platform} ({', '.join(run_label(r) for r in ordered)})")
    return f"- {setting}: trained on {len(by_platform)} platforms: " + "; ".join(groups)


def seconds_per_step(run: RunRecord) -> float | None:
    """CPU-seconds of training (validations included) per training step, or None where not recorded."""
    cpu, steps = run.train.get("cpu_s"), run.train.get("steps")
    if isinstance(cpu, (int, float)) and isinstance(steps, int) and steps > 0 and math.isfinite(cpu) and cpu > 0:
        return float(cpu) / steps
    return None


def seed_pace_line(setting: str, method: str, runs: Sequence[RunRecord]) -> str | None:
    """A line where the seeds of one method, which do the same work per step, took CPU-seconds per
    step differing by more than ``PACE_SPREAD`` (the machine's speed, also for runs without a probe)."""
    paces = {run.seed: pace for run in runs if (pace := seconds_per_step(run)) is not None}
    if len(paces) < 2 or max(paces.values()) / min(paces.values()) <= PACE_SPREAD:
        return None
    fast, slow = min(paces, key=paces.get), max(paces, key=paces.get)
    line = (
        f"- {setting}, {method}: the seeds took {paces[fast]:.2f} (seed {fast}) to {paces[slow]:.2f} (seed {slow}) "
        f"CPU-seconds per training step, {paces[slow] / paces[fast]:.2f}x, for the same work per step"
    )
    platforms = {run.seed: run.platform for run in runs}
    if platforms.get(fast) and platforms.get(slow) and platforms[fast] != platforms[slow]:
        line += f"; they trained on different platforms ({platforms[fast]}; {platforms[slow]})"
    return line


def speed_note(runs: Sequence[RunRecord], settings: Sequence[str], display: MethodDisplay = DEFAULT_DISPLAY) -> str:
    """The report's note on CPU speed per setting: the probes' figures, the platforms where there were
    several, and the seeds of one method whose CPU-seconds per step differ; empty where there is
    nothing to say."""
    lines = []
    for setting in settings:
        in_setting = [r for r in runs if r.setting == setting]
        for line in (setting_speed_line(setting, in_setting), platform_line(setting, in_setting, display)):
            if line is not None:
                lines.append(line)
        for method in sorted({r.method for r in in_setting}, key=display.sort_key):
            pace_line = seed_pace_line(setting, method, [r for r in in_setting if r.method == method])
            if pace_line is not None:
                lines.append(pace_line)
    if not lines:
        return ""
    return (
        "\nCPU speed while training: `hardware.speed_probe` is the CPU-milliseconds of a fixed one-thread "
        "workload, median over the run (higher is slower); seeds of one method do the same work per training "
        f"step. Runs named here (probe medians more than {PROBE_SPREAD:g}x apart, or seeds' CPU-seconds per step "
        f"more than {PACE_SPREAD:g}x apart) got different amounts of work from a CPU-minute; runs of one setting "
        "on different platforms (`hardware.platform`) may have too:\n" + "\n".join(lines) + "\n"
    )
