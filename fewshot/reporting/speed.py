"""Whether the runs of a report ran at comparable CPU speeds (their ``hardware.speed_probe``)."""

from __future__ import annotations

from collections.abc import Sequence

from fewshot.reporting.runs import RunRecord

# runs whose probe medians differ by more than this factor did not get the same work per CPU-second
SPEED_SPREAD = 1.25


def run_label(run: RunRecord) -> str:
    """``method seed s`` for naming a run in a note."""
    return f"{run.method} seed {run.seed}"


def unsteady_runs(runs: Sequence[RunRecord], spread: float = SPEED_SPREAD) -> list[RunRecord]:
    """Runs whose own probes (start, each validation, each resume) differ by more than ``spread``."""
    unsteady = []
    for run in runs:
        probe = run.speed_probe or {}
        low, high = probe.get("min_ms"), probe.get("max_ms")
        if isinstance(low, (int, float)) and isinstance(high, (int, float)) and low > 0 and high / low > spread:
            unsteady.append(run)
    return unsteady


def setting_speed_line(setting: str, runs: Sequence[RunRecord], spread: float = SPEED_SPREAD) -> str | None:
    """One line on the CPU speeds of a setting's runs, or None where none of them was probed."""
    probed = [r for r in runs if r.speed_ms is not None]
    if not probed:
        return None
    fastest = min(r.speed_ms for r in probed)
    slowest = max(r.speed_ms for r in probed)
    span = f"median {fastest:.1f} ms" if len(probed) == 1 else f"medians {fastest:.1f} to {slowest:.1f} ms"
    line = f"- {setting}: {len(probed)} of {len(runs)} runs probed, {span}"
    slow = sorted((r for r in probed if r.speed_ms / fastest > spread), key=lambda r: -r.speed_ms)
    if slow:
        names = ", ".join(f"{run_label(r)} ({r.speed_ms / fastest:.2f}x)" for r in slow)
        line += f"; slower than the fastest by more than {spread:g}x: {names}"
    unsteady = unsteady_runs(probed, spread)
    if unsteady:
        line += "; speed changed within " + ", ".join(run_label(r) for r in unsteady)
    return line


def speed_note(runs: Sequence[RunRecord], settings: Sequence[str], spread: float = SPEED_SPREAD) -> str:
    """The report's note on CPU speed per setting; empty where no run carries a speed probe."""
    lines = [
        line
        for setting in settings
        if (line := setting_speed_line(setting, [r for r in runs if r.setting == setting], spread)) is not None
    ]
    if not lines:
        return ""
    return (
        "\nCPU speed while training (`hardware.speed_probe`: CPU-milliseconds of a fixed one-thread workload, "
        "median over the run; higher is slower). Where runs differ by more than "
        f"{spread:g}x, their CPU-minutes bought different amounts of work:\n" + "\n".join(lines) + "\n"
    )
