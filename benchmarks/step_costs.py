"""Reference cost of a training step of every line of a run queue, measured side by side in one
process on one machine, and the step cap that one reference budget gives each line.

    python -m benchmarks.step_costs scripts/omniglot_converged.txt --out results/omniglot/reference_costs.json
    python -m benchmarks.step_costs scripts/omniglot_converged.txt --costs results/omniglot/reference_costs.json \\
        --reference-minutes 60 [--write-queue scripts/omniglot_capped.txt]

Measuring: each line's config (its ``@common`` overrides, preset and overrides) is composed and
trained in this process for ``--warmup`` + ``--steps`` steps (no test, no logger, no CPU cap);
a callback reads the process CPU time after every training step and around every validation.
A line's **step cost** is the CPU-seconds per training step over the timed steps (data sampling,
forward, backward and optimiser step, as training runs them) plus one validation's CPU-seconds
amortised over the steps between two validations of that line (one validation is run after
the timed steps when none fell inside them). Lines that differ only in ``seed``,
``trainer.max_steps`` or ``callbacks.cpu_budget.minutes`` do the same work per step and are
measured once; so are lines that differ only in a ``--same-work`` key (a variant's switch that
does not change what a step computes, e.g. ``model.grad_scale``), which then get one cap: a
variant trains as long as its method, and a repeated measurement's noise cannot split them.
The costs file names the CPU, the platform and torch's threads (run it with one thread,
``OMP_NUM_THREADS=1``, as the queue trains). Only the ratios between lines matter: a reference
CPU-minute is a CPU-minute of that machine.

Caps: ``--reference-minutes M`` gives each line ``floor(60 M / step cost)`` steps, the work that
M minutes of the reference machine do; ``--write-queue`` writes the queue with every line's
``trainer.max_steps`` set to its cap and no CPU cap (``callbacks.cpu_budget.minutes=null``, so
the plateau rule or the cap ends a run on any machine after the same work; the CPU time is still
recorded in results.json).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from benchmarks.common import cpu_name
from fewshot.reporting.costs import COSTS_VERSION, CostsError, read_costs

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(PROJECT_ROOT / "conf")
# overrides that change how long a line trains, not what a step costs
LENGTH_KEYS = ("seed", "trainer.max_steps", "callbacks.cpu_budget.minutes")
# overrides the measurement sets itself (a line's own value is dropped)
MEASUREMENT_KEYS = (*LENGTH_KEYS, "test", "logger", "trainer.enable_progress_bar")


def load_run_queue() -> Any:
    """``scripts/run_queue.py`` as a module (the queue file format lives there)."""
    spec = importlib.util.spec_from_file_location("run_queue", PROJECT_ROOT / "scripts" / "run_queue.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("run_queue", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def override_key(override: str) -> str:
    """The key an override sets: ``trainer.max_steps=9`` -> ``trainer.max_steps`` (``+``/``~`` dropped)."""
    return override.split("=", 1)[0].lstrip("+~")


def without_keys(overrides: Sequence[str], keys: Sequence[str]) -> tuple[str, ...]:
    """``overrides`` less those that set one of ``keys``."""
    return tuple(o for o in overrides if override_key(o) not in keys)


def work_key(overrides: Sequence[str], same_work: Sequence[str] = ()) -> tuple[str, ...]:
    """What decides a line's work per step: its overrides less seed, training length and the
    ``same_work`` keys (those that name a variant without changing what a step computes)."""
    return without_keys(overrides, (*LENGTH_KEYS, *same_work))


class StepCostTimer(pl.Callback):
    """Process CPU time after every training step and of every validation, written as JSON to
    ``out`` when training or validation ends."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.steps: list[tuple[int, float]] = []  # (global step, CPU s) after each training batch
        self.validations: list[dict[str, float]] = []  # start and end CPU s of each validation
        self.loop: dict[str, float] = {}
        self._validation_start: float | None = None

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        """Read the CPU clock after a training step."""
        self.steps.append((int(trainer.global_step), time.process_time()))

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start a validation's clock (not the sanity check's)."""
        if not trainer.sanity_checking:
            self._validation_start = time.process_time()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Stop the validation's clock and save what was read."""
        if self._validation_start is not None:
            self.validations.append({"start": self._validation_start, "end": time.process_time()})
            self._validation_start = None
        self.write(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Save what was read, with the trainer's validation schedule of training."""
        batches, interval = trainer.num_training_batches, trainer.val_check_batch
        self.loop = {
            "num_training_batches": batches if math.isfinite(batches) else None,
            "val_check_batch": interval if interval is not None and math.isfinite(interval) else None,
            "check_val_every_n_epoch": trainer.check_val_every_n_epoch,
        }
        self.write(trainer)

    def write(self, trainer: pl.Trainer) -> None:
        """Write the readings and the validation schedule (once training has ended)."""
        payload = {"steps": self.steps, "validations": self.validations, "loop": self.loop}
        self.out.write_text(json.dumps(payload))


def compose_line(overrides: Sequence[str], output_dir: Path) -> Any:
    """The config a line trains with, composed as ``train.py`` would, writing into ``output_dir``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from fewshot.run.resolvers import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.paths.output_dir = str(output_dir)
    return cfg


def steps_per_validation(loop: dict[str, Any], steps_per_batch: float) -> float | None:
    """Training steps between two validations of a trainer's schedule (None when it never validates)."""
    per_epoch, every, interval = loop["num_training_batches"], loop["check_val_every_n_epoch"], loop["val_check_batch"]
    if interval is None:
        return None
    batches = interval * (every or 1) if per_epoch is not None and interval >= per_epoch else interval
    return batches * steps_per_batch


def line_cost(readings: dict[str, Any], warmup: int) -> dict[str, float]:
    """A line's CPU-seconds per training step (validations inside the timed steps taken out),
    one validation's CPU-seconds, the steps between validations, and the step cost with the
    validation amortised over them."""
    steps = readings["steps"]
    if len(steps) < warmup + 2:
        raise RuntimeError(f"only {len(steps)} training steps ran; at least {warmup + 2} are needed to time one.")
    (step0, cpu0), (step1, cpu1) = steps[warmup], steps[-1]
    validations = readings["validations"]
    inside = sum(v["end"] - v["start"] for v in validations if cpu0 <= v["start"] <= cpu1)
    if step1 <= step0:
        raise RuntimeError("the global step did not advance over the timed batches.")
    train_step = (cpu1 - cpu0 - inside) / (step1 - step0)
    steps_per_batch = (step1 - step0) / (len(steps) - 1 - warmup)
    if not validations:
        raise RuntimeError("no validation ran; the step cost needs one.")
    validation = validations[-1]["end"] - validations[-1]["start"]
    between = steps_per_validation(readings["loop"], steps_per_batch)
    amortised = validation / between if between else 0.0
    return {
        "train_step_cpu_s": train_step,
        "validation_cpu_s": validation,
        "steps_per_validation": between,
        "step_cpu_s": train_step + amortised,
    }


def measure_line(overrides: Sequence[str], warmup: int, steps: int, extra: Sequence[str] = ()) -> dict[str, Any]:
    """Train a line for ``warmup + steps`` steps in this process and time it; its method and
    setting (as the report names them) and :func:`line_cost`."""
    from fewshot.run.process import silence_library_noise
    from fewshot.run.signals import StopFlag
    from fewshot.run.training import build_run, check_before_work, method_name

    silence_library_noise()
    with tempfile.TemporaryDirectory(prefix="step_costs_") as folder:
        readings_path = Path(folder) / "readings.json"
        timed = [
            *without_keys(overrides, MEASUREMENT_KEYS),
            f"trainer.max_steps={warmup + steps}",
            "callbacks.cpu_budget.minutes=null",
            "test=false",
            "logger=none",
            "trainer.enable_progress_bar=false",
            "+callbacks.step_cost_timer._target_=benchmarks.step_costs.StepCostTimer",
            f"+callbacks.step_cost_timer.out={readings_path}",
            *extra,
        ]
        cfg = compose_line(timed, Path(folder) / "run")
        check_before_work(cfg)
        run = build_run(cfg, StopFlag())
        run.trainer.fit(run.method, datamodule=run.datamodule)
        if not json.loads(readings_path.read_text())["validations"]:
            run.trainer.validate(run.method, datamodule=run.datamodule, verbose=False)
        readings = json.loads(readings_path.read_text())
        described = run.datamodule.describe()
    return {
        "method": method_name(run.method, cfg.get("variant")),
        "setting": f"{described['dataset']} {described['n_way']}-way {described['n_shot']}-shot",
        **line_cost(readings, warmup),
    }


def machine() -> dict[str, Any]:
    """What the costs were measured on."""
    import torch

    return {
        "cpu": cpu_name(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def measure_queue(
    runs: Sequence[Any],
    warmup: int,
    steps: int,
    extra: Sequence[str] = (),
    log: Any = print,
    same_work: Sequence[str] = (),
) -> dict[str, Any]:
    """The costs file of a queue's runs: each distinct line's work measured once, in queue order."""
    measured: dict[tuple[str, ...], dict[str, Any]] = {}
    for run in runs:
        key = work_key(run.overrides, same_work)
        if key in measured:
            measured[key]["lines"].append(run.name)
            continue
        started = time.process_time()
        cost = measure_line(run.overrides, warmup, steps, extra)
        measured[key] = {"lines": [run.name], **cost}
        log(
            f"{run.name}: {cost['method']}, {cost['setting']}: {cost['step_cpu_s']:.3f} CPU-s per step "
            f"({cost['train_step_cpu_s']:.3f} training + {cost['validation_cpu_s']:.1f} per validation every "
            f"{cost['steps_per_validation'] or 0:g} steps; measured in {time.process_time() - started:.0f} CPU-s)"
        )
    return {
        "version": COSTS_VERSION,
        "about": (
            "CPU-seconds per training step of each queue line (validation amortised), measured side by side in "
            "one process; python -m benchmarks.step_costs"
        ),
        "machine": machine(),
        "warmup_steps": warmup,
        "timed_steps": steps,
        "same_work_keys": list(same_work),
        "rows": list(measured.values()),
    }


def step_caps(runs: Sequence[Any], costs: dict[str, Any], reference_minutes: float) -> dict[str, int]:
    """Each queue line's step cap: the steps ``reference_minutes`` of the reference machine train."""
    cost_of = {name: row["step_cpu_s"] for row in costs["rows"] for name in row["lines"]}
    missing = [run.name for run in runs if run.name not in cost_of]
    if missing:
        raise CostsError(
            f"the costs file has no cost for {', '.join(missing)}; measure them: python -m benchmarks.step_costs."
        )
    return {run.name: max(1, math.floor(60.0 * reference_minutes / cost_of[run.name])) for run in runs}


def quote_word(word: str) -> str:
    """A word of a queue line as a person writes it: bare, else in double quotes where that is
    safe (``"variant='meta-batch 4'"``), else in shell quoting."""
    if shlex.quote(word) == word:
        return word
    if not any(c in word for c in '"\\$`'):
        return f'"{word}"'
    return shlex.quote(word)


def capped_line(line: str, cap: int) -> str:
    """A queue run line with its step cap and without a CPU cap (an own ``trainer.max_steps`` and
    ``callbacks.cpu_budget.minutes`` are replaced)."""
    words = shlex.split(line, comments=True)
    kept = without_keys(words[1:], ("trainer.max_steps", "callbacks.cpu_budget.minutes"))
    return " ".join(
        quote_word(w) for w in [words[0], *kept, f"trainer.max_steps={cap}", "callbacks.cpu_budget.minutes=null"]
    )


def capped_queue(text: str, caps: dict[str, int]) -> str:
    """The queue file ``text`` with every run line that has a cap capped in steps (comments,
    ``@common`` and lines without a cap unchanged)."""
    lines = []
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        lines.append(capped_line(line, caps[words[0]]) if words and words[0] in caps else line)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.step_costs", description=__doc__.splitlines()[0])
    parser.add_argument("queue", type=Path, help="the queue file, e.g. scripts/omniglot_converged.txt")
    parser.add_argument("--out", type=Path, help="measure, and write the costs file here")
    parser.add_argument("--costs", type=Path, help="read the costs from this file instead of measuring")
    parser.add_argument("--lines", nargs="+", default=None, help="only these queue lines (by name)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed training steps first")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--override", action="append", default=[], help="an extra override for every line")
    parser.add_argument(
        "--same-work",
        action="append",
        default=[],
        metavar="KEY",
        help="an override key that names a variant without changing a step's work (e.g. model.grad_scale): "
        "lines that differ only in such keys share one measurement, and so one cap; repeatable",
    )
    parser.add_argument("--reference-minutes", type=float, help="print each line's step cap for this budget")
    parser.add_argument("--write-queue", type=Path, help="write the queue capped in steps here")
    args = parser.parse_args(argv)
    if (args.out is None) == (args.costs is None):
        parser.error("give --out (measure) or --costs (read a costs file), one of them")
    if args.write_queue and args.reference_minutes is None:
        parser.error("--write-queue needs --reference-minutes")
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")
    os.environ.setdefault("FEWSHOT_PROJECT_ROOT", str(PROJECT_ROOT))
    runs = load_run_queue().read_queue(args.queue)
    if args.lines:
        unknown = sorted(set(args.lines) - {r.name for r in runs})
        if unknown:
            parser.error(f"--lines {', '.join(unknown)}: not in {args.queue}")
        runs = [r for r in runs if r.name in args.lines]
    try:
        if args.out is not None:
            costs = measure_queue(runs, args.warmup, args.steps, args.override, same_work=args.same_work)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(costs, indent=2) + "\n")
            print(f"wrote {args.out} ({costs['machine']['cpu']}, {costs['machine']['torch_threads']} thread(s))")
        else:
            costs = read_costs(args.costs)
        if args.reference_minutes is not None:
            caps = step_caps(runs, costs, args.reference_minutes)
            for name, cap in caps.items():
                print(f"{name}: trainer.max_steps={cap}")
            replaced = [r.name for r in runs if any(override_key(o) == "trainer.max_steps" for o in r.overrides)]
            if replaced:
                print(f"note: these lines set their own trainer.max_steps, replaced by the cap: {', '.join(replaced)}")
            if args.write_queue:
                args.write_queue.write_text(capped_queue(args.queue.read_text(), caps))
                print(f"wrote {args.write_queue}")
    except CostsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
