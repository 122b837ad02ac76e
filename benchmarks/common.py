"""Plain timing helpers shared by the benchmark scripts."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fewshot.io import write_json_atomic


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` says elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def time_call(
    fn: Callable[[], Any], repeats: int = 5, warmup: int = 1, clock: Callable[[], float] = time.perf_counter
) -> dict[str, float]:
    """Run ``fn`` ``warmup`` times, then time ``repeats`` calls on ``clock``: median, min, max seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def time_pair(
    ours: Callable[[], Any], floor: Callable[[], Any], repeats: int = 5, warmup: int = 1
) -> tuple[dict[str, float], dict[str, float]]:
    """Like :func:`time_call` for two functions, alternating them call by call, so that both
    see the same machine (on a shared or throttled machine the speed drifts between runs)."""
    for _ in range(warmup):
        ours()
        floor()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, bucket in zip((ours, floor), times, strict=True):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return tuple({"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t)} for t in times)


def peak_resident_bytes() -> int:
    """This process's peak resident memory (``VmHWM``; unlike ``ru_maxrss`` it is not inherited
    from a large parent across ``fork`` + ``exec``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource  # not Linux: the closest figure there

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write benchmark figures as strict JSON, atomically."""
    return write_json_atomic(path, payload)
