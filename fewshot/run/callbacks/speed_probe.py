"""How fast a CPU-second is while a run trains: a fixed workload timed at the start and at every validation.

CPU budgets and the training table's CPU-minutes assume a CPU-second buys the same work
throughout. On a shared virtual machine it does not: the same Meta-LSTM code once took 0.74 and
later 1.86 CPU-seconds per episode. A run that records the probe says whether its CPU-minutes
are comparable with another run's.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import pytorch_lightning as pl
import torch

# the workload: one 64-channel 3x3 convolution layer of a Conv-4 on a small batch, forward and backward
PROBE_INPUT_SHAPE = (16, 64, 14, 14)
PROBE_WEIGHT_SHAPE = (64, 64, 3, 3)


def probe_cpu_ms(repeats: int = 7, passes: int = 3) -> float:
    """Median CPU-milliseconds of ``passes`` forward-backward passes of the fixed workload, on one thread.

    Timed with the calling thread's CPU clock on a single torch thread, so neither other
    processes nor the run's thread count change what is measured: only the speed of the core.
    """
    if repeats < 1 or passes < 1:
        raise ValueError(f"probe_cpu_ms needs repeats >= 1 and passes >= 1, got {repeats} and {passes}.")
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(PROBE_INPUT_SHAPE, generator=generator)
    weight = torch.randn(PROBE_WEIGHT_SHAPE, generator=generator).requires_grad_()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.enable_grad():
            _forward_backward(inputs, weight)  # warm-up: allocations and kernel selection
            times = []
            for _ in range(repeats):
                start = time.thread_time()
                for _ in range(passes):
                    _forward_backward(inputs, weight)
                times.append(1000.0 * (time.thread_time() - start))
    finally:
        torch.set_num_threads(threads)
    return statistics.median(times)


def _forward_backward(inputs: torch.Tensor, weight: torch.Tensor) -> None:
    out = torch.nn.functional.conv2d(inputs, weight, padding=1)
    out.square().mean().backward()
    weight.grad = None


class CpuSpeedProbe(pl.Callback):
    """Time the fixed workload (``probe_cpu_ms``) when training starts and after every validation.

    The measurements (training step and CPU-milliseconds) are kept in checkpoints, so a resumed
    run, possibly on another day or machine, keeps its earlier ones; the results file stores
    them under ``hardware.speed_probe``. Each probe costs about 0.3 CPU-seconds here.
    """

    def __init__(self, repeats: int = 7, passes: int = 3) -> None:
        if repeats < 1 or passes < 1:
            raise ValueError(f"callbacks.speed_probe needs repeats >= 1 and passes >= 1, got {repeats} and {passes}.")
        self.repeats = repeats
        self.passes = passes
        self.history: list[dict[str, float]] = []

    def measure(self, step: int) -> None:
        """Time the workload now and record it against training step ``step``."""
        self.history.append({"step": int(step), "cpu_ms": round(probe_cpu_ms(self.repeats, self.passes), 2)})

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Measure at the start (and at each resume)."""
        self.measure(trainer.global_step)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Measure after each validation during training (not the sanity check or a test)."""
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.measure(trainer.global_step)

    def summary(self) -> dict[str, Any]:
        """What the results file keeps: the workload, its median and range, and every measurement."""
        values = [m["cpu_ms"] for m in self.history]
        return {
            "workload": f"conv2d {PROBE_WEIGHT_SHAPE} on {PROBE_INPUT_SHAPE}, forward+backward x{self.passes}, "
            "one thread",
            "median_ms": round(statistics.median(values), 2) if values else None,
            "min_ms": min(values) if values else None,
            "max_ms": max(values) if values else None,
            "history": list(self.history),
        }

    def state_dict(self) -> dict[str, Any]:
        """The measurements so far (a resumed run keeps them)."""
        return {"history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the measurements of a checkpoint."""
        self.history = list(state_dict.get("history", []))
