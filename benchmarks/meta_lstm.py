"""Time one Meta-Learner LSTM meta-training episode against the learner alone, on synthetic data.

    python -m benchmarks.meta_lstm [--repeats 5] [--device cpu] [--variants fused torch checkpoint reference]
                                     [--eval-episodes 600] [--memory] [--out bench_results/meta_lstm.json]

For each shape the *episode* is ``meta_loss`` + ``backward`` (all meta-parameters get their
gradient); the *floor* is the learner's own work in the same process: ``T`` times forward +
backward on the support set, then forward + backward on the query set. The *nn floor* is the same
work done by a plain ``nn.Module`` Conv-4 called normally (not from a flat parameter vector):
``ratio`` is episode / floor, ``vs nn`` episode / nn floor, the distance to the real limit. All
are the median of ``--repeats`` runs after two warm-up runs (``time.perf_counter``), called in
turn so that all see the same machine. The episode is split into:

* learner: the ``T`` support gradients + the query forward (timed inside the episode),
* meta forward: the rest of the forward (preprocessing, LSTM, cell, gate statistics),
* meta backward: ``loss.backward()`` (query backward + backward through the unrolled meta-learner).

Every process keeps its freed memory, as ``train.py`` does (:mod:`fewshot.run.process`);
``--return-freed-memory`` leaves glibc's default, which hands the meta-graph back to the OS after
every episode and faults it in again on the next.

``--threads 1 2`` runs the training shapes once per thread count (the first as asked, the others
with the wall clock) and prints each part's speed-up over the first. Unless ``--no-layer1``, the
CPU run ends with :mod:`benchmarks.layer1`: one layer-1 step's achieved GFLOP/s next to a plain
``torch.matmul`` of the same shapes. The first line names the CPU.

``--clock cpu`` times with ``time.process_time`` (CPU seconds of the process, all threads)
instead of the wall clock: on a shared machine, with ``--threads 1``, it is what the wall time
would be on an idle one.

Variants: ``fused`` (the default code path: the C++ operators where they build), ``torch`` (the
fused path with torch operations instead of the C++ operators), ``checkpoint`` (fused, gates
recomputed in the backward) and ``reference`` (the plain, unfused code). The first episode
(warm-up) is reported separately.

Evaluation (``--eval-episodes``, default 600, on the first shape; 0 skips it): that many
episodes of ``adapt`` + query prediction in eval mode without a meta-graph, as testing runs,
against its floor: ``T`` x learner forward + backward on the support set + forward on the query.

Memory (``--memory``): peak memory of one meta-training episode at ``T`` = 5, 12 and 50 on the
Omniglot 1-shot shape, with and without ``checkpoint``, each in its own process.

Peak memory: on CPU, ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` minus its value before the
run; every shape runs in a fresh subprocess so the high-water mark is its own (tracemalloc does
not see torch's allocations). On CUDA, ``torch.cuda.max_memory_allocated`` over the run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from benchmarks.common import cpu_name
from fewshot.io import write_json_atomic
from fewshot.methods.meta_lstm.metalearner import MetaLearner
from fewshot.models.conv4 import Conv4
from fewshot.nn import native
from fewshot.run.process import retain_freed_memory


@dataclass(frozen=True)
class Shape:
    """One benchmark configuration."""

    name: str
    in_channels: int
    hidden: int
    image_size: int
    n_way: int
    n_shot: int
    n_query: int
    n_steps: int
    bn_momentum: float


SHAPES = {
    s.name: s
    for s in (
        Shape("omniglot-5w1s-T5", 1, 64, 28, 5, 1, 15, 5, 0.9),
        Shape("omniglot-5w5s-T8", 1, 64, 28, 5, 5, 15, 8, 0.95),
        Shape("omniglot-5w1s-T12", 1, 64, 28, 5, 1, 15, 12, 0.9),
        Shape("miniimagenet-5w1s-T5", 3, 32, 84, 5, 1, 15, 5, 0.9),
        Shape("miniimagenet-5w5s-T8", 3, 32, 84, 5, 5, 15, 8, 0.95),
        Shape("miniimagenet-5w1s-T12", 3, 32, 84, 5, 1, 15, 12, 0.9),
    )
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_start(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _peak_mib(device: torch.device, start: int) -> float:
    if device.type == "cuda":
        return (torch.cuda.max_memory_allocated(device) - start) / 2**20
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - start) / 2**20


def _interleaved_medians(fns: list[Callable[[], dict[str, float]]], repeats: int) -> dict[str, float]:
    """Two warm-up runs of each, then ``repeats`` rounds calling each once in turn (so all see
    the same machine); the median of every reported key."""
    for fn in fns:
        fn()
        fn()
    runs: list[list[dict[str, float]]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, runs, strict=True):
            bucket.append(fn())
    return {key: statistics.median(r[key] for r in bucket) for bucket in runs for key in bucket[0]}


VARIANTS = ("fused", "torch", "checkpoint", "reference")
MEMORY_STEPS = (5, 12, 50)


def build(shape: Shape, variant: str, device: torch.device) -> MetaLearner:
    """The meta-learner of ``shape`` in the code path ``variant`` (see the module docstring)."""
    learner = Conv4(shape.in_channels, shape.hidden, shape.image_size, shape.n_way, shape.bn_momentum, 1e-3)
    native.select("torch" if variant == "torch" else "auto")  # each variant runs in a process of its own
    meta = MetaLearner(learner, n_steps=shape.n_steps, fused=variant != "reference", checkpoint=variant == "checkpoint")
    return meta.to(device).train()


def synthetic_episode(shape: Shape, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Random images and labels of the shape: ``(support_x, support_y, query_x, query_y)``."""
    image = (shape.in_channels, shape.image_size, shape.image_size)
    support_x = torch.randn(shape.n_way * shape.n_shot, *image, device=device)
    support_y = torch.arange(shape.n_way, device=device).repeat_interleave(shape.n_shot)
    query_x = torch.randn(shape.n_way * shape.n_query, *image, device=device)
    query_y = torch.arange(shape.n_way, device=device).repeat_interleave(shape.n_query)
    return support_x, support_y, query_x, query_y


def run_shape(
    shape: Shape, repeats: int, device: torch.device, variant: str, clock: Callable[[], float] = time.perf_counter
) -> dict[str, float | str]:
    """Measure one shape in this process; returns times in milliseconds and peaks in MiB."""
    torch.manual_seed(0)
    meta = build(shape, variant, device)
    support_x, support_y, query_x, query_y = synthetic_episode(shape, device)

    def floor() -> dict[str, float]:
        theta = meta.c0.detach().clone().requires_grad_(True)
        buffers = meta.fresh_buffers()
        _sync(device)
        start = clock()
        for _ in range(shape.n_steps):
            loss = F.cross_entropy(meta.learner_forward(theta, buffers, support_x, train=True), support_y)
            torch.autograd.grad(loss, theta)
        loss = F.cross_entropy(meta.learner_forward(theta, buffers, query_x, train=True), query_y)
        torch.autograd.grad(loss, theta)
        _sync(device)
        return {"floor": 1e3 * (clock() - start)}

    module = Conv4(shape.in_channels, shape.hidden, shape.image_size, shape.n_way, shape.bn_momentum, 1e-3)
    module = module.to(device).train()

    def module_floor() -> dict[str, float]:
        module.zero_grad(set_to_none=True)
        _sync(device)
        start = clock()
        for _ in range(shape.n_steps):
            F.cross_entropy(module(support_x), support_y).backward()
        F.cross_entropy(module(query_x), query_y).backward()
        _sync(device)
        return {"module_floor": 1e3 * (clock() - start)}

    def episode() -> dict[str, float]:
        meta.zero_grad(set_to_none=True)
        learner_time = 0.0

        def timed_grad(theta: torch.Tensor, buffers: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
            nonlocal learner_time
            _sync(device)
            start = clock()
            out = meta.learner_loss_and_grad(theta, buffers, support_x, support_y)
            _sync(device)
            learner_time += clock() - start
            return out

        _sync(device)
        t0 = clock()
        theta, buffers, _ = meta.adapt(support_x, support_y, learner_grad=timed_grad)
        _sync(device)
        t1 = clock()
        loss = F.cross_entropy(meta.predict(theta, buffers, query_x), query_y)
        _sync(device)
        t2 = clock()
        loss.backward()
        _sync(device)
        t3 = clock()
        return {
            "episode": 1e3 * (t3 - t0),
            "learner": 1e3 * (learner_time + t2 - t1),
            "meta_forward": 1e3 * (t1 - t0 - learner_time),
            "meta_backward": 1e3 * (t3 - t2),
        }

    start = _peak_start(device)
    floor()
    floor_peak = _peak_mib(device, start)
    if device.type == "cuda":
        start = _peak_start(device)
    first = episode()["episode"]
    episode_peak = _peak_mib(device, start)

    result: dict[str, float | str] = {
        "shape": shape.name,
        "variant": variant,
        "n_coords": float(meta.layout.n_coords),
        "first_episode": first,
    }
    result |= _interleaved_medians([floor, module_floor, episode], repeats)
    result |= {"floor_peak_mib": floor_peak, "episode_peak_mib": episode_peak}
    return result


def run_eval(
    shape: Shape, episodes: int, device: torch.device, variant: str, clock: Callable[[], float] = time.perf_counter
) -> dict[str, float | str]:
    """Seconds for ``episodes`` evaluation episodes (no autograd, as testing runs) and their floor,
    in alternating blocks of 50 episodes (so that both see the same machine)."""
    torch.manual_seed(0)
    meta = build(shape, variant, device).eval()
    support_x, support_y, query_x, _ = synthetic_episode(shape, device)

    def evaluate() -> None:
        with torch.no_grad():  # as testing runs (trainer.inference_mode is false)
            theta, buffers, _ = meta.adapt(support_x, support_y)
            meta.predict(theta, buffers, query_x).argmax(1)

    def floor() -> None:
        theta, buffers = meta.c0.detach(), meta.fresh_buffers()
        for _ in range(shape.n_steps):
            meta.learner_loss_and_grad(theta, buffers, support_x, support_y)
        with torch.no_grad():
            meta.learner_forward(theta, buffers, query_x, train=False).argmax(1)

    def timed(fn: Callable[[], None], count: int) -> float:
        _sync(device)
        start = clock()
        for _ in range(count):
            fn()
        _sync(device)
        return clock() - start

    for fn in (evaluate, floor):
        timed(fn, 3)
    ours = base = 0.0
    for start in range(0, episodes, 50):
        count = min(50, episodes - start)
        ours += timed(evaluate, count)
        base += timed(floor, count)
    return {"shape": shape.name, "variant": variant, "episodes": episodes, "eval_s": ours, "floor_s": base}


def run_memory(n_steps: int, checkpoint: bool, device: torch.device) -> dict[str, float]:
    """Peak memory (MiB above the state before it) of one Omniglot 1-shot meta-training episode."""
    shape = replace(SHAPES["omniglot-5w1s-T5"], name=f"omniglot-5w1s-T{n_steps}", n_steps=n_steps)
    meta = build(shape, "checkpoint" if checkpoint else "fused", device)
    support_x, support_y, query_x, query_y = synthetic_episode(shape, device)
    start = _peak_start(device)
    meta.meta_loss(support_x, support_y, query_x, query_y).loss.backward()
    return {"n_steps": n_steps, "checkpoint": checkpoint, "peak_mib": _peak_mib(device, start)}


PARTS = ("floor", "episode", "learner", "meta_forward", "meta_backward")


def _thread_scaling(args: argparse.Namespace, child: Callable[..., dict], first: list[dict]) -> list[dict]:
    """Rerun the training shapes with each further ``--threads`` value (wall clock: CPU time adds the
    threads up) and print every part's speed-up over the first value."""
    base = first if args.clock == "wall" else None
    runs: dict[int, list[dict]] = {}
    for threads in args.threads if base is None else args.threads[1:]:
        options = ["--repeats", str(args.repeats), "--device", args.device, "--clock", "wall"]
        options += ["--threads", str(threads)]
        runs[threads] = [
            child("--child", "train", "--shapes", name, "--variants", variant, options=options)
            for name in args.shapes
            for variant in args.variants
        ]
    if base is not None:
        runs = {args.threads[0]: base, **runs}
    one, *others = args.threads
    print(f"\nthread scaling (wall clock): speed-up of each part with N threads over {one}")
    print(f"{'shape':<22}{'variant':<10}{'N':>3}" + "".join(f"{part:>15}" for part in PARTS))
    table = []
    for n in others:
        for ref, run in zip(runs[one], runs[n], strict=True):
            ratios = {part: ref[part] / run[part] for part in PARTS}
            table.append({"shape": run["shape"], "variant": run["variant"], "threads": n, **ratios})
            print(f"{run['shape']:<22}{run['variant']:<10}{n:>3}" + "".join(f"{ratios[p]:>15.2f}" for p in PARTS))
    return table


def _format(results: list[dict[str, float | str]]) -> str:
    header = (
        f"{'shape':<22}{'variant':<10}{'coords':>7}{'floor ms':>10}{'episode ms':>12}{'ratio':>7}"
        f"{'nn ms':>8}{'vs nn':>7}{'learner':>9}{'meta fwd':>10}{'meta bwd':>10}{'1st ep ms':>11}"
        f"{'peak MiB floor/episode':>24}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r['shape']:<22}{r['variant']:<10}{int(r['n_coords']):>7}{r['floor']:>10.1f}{r['episode']:>12.1f}"
            f"{r['episode'] / r['floor']:>7.2f}{r['module_floor']:>8.1f}{r['episode'] / r['module_floor']:>7.2f}"
            f"{r['learner']:>9.1f}{r['meta_forward']:>10.1f}{r['meta_backward']:>10.1f}{r['first_episode']:>11.0f}"
            f"{r['floor_peak_mib']:>13.0f} / {r['episode_peak_mib']:<8.0f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shapes", nargs="*", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--variants", nargs="*", default=["fused"], choices=VARIANTS)
    parser.add_argument(
        "--threads", type=int, nargs="*", default=None, help="torch.set_num_threads; several: also their scaling"
    )
    parser.add_argument("--no-layer1", action="store_true", help="skip layer 1's GFLOP/s (benchmarks.layer1)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    parser.add_argument("--eval-episodes", type=int, default=600, help="0: skip the evaluation timing")
    parser.add_argument("--memory", action="store_true", help="peak memory vs T, with and without checkpointing")
    parser.add_argument("--out", default="bench_results/meta_lstm.json")
    parser.add_argument(
        "--return-freed-memory", action="store_true", help="leave glibc's allocator as it is (train.py retains)"
    )
    parser.add_argument("--child", choices=["train", "eval", "memory"], help=argparse.SUPPRESS)
    parser.add_argument("--memory-steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads[0])
    if not args.return_freed_memory:
        retain_freed_memory()  # as train.py does (retain_freed_memory: true)
    device = torch.device(args.device)

    clock = time.perf_counter if args.clock == "wall" else time.process_time
    if args.child == "train":
        print(json.dumps(run_shape(SHAPES[args.shapes[0]], args.repeats, device, args.variants[0], clock)))
        return
    if args.child == "eval":
        print(json.dumps(run_eval(SHAPES[args.shapes[0]], args.eval_episodes, device, args.variants[0], clock)))
        return
    if args.child == "memory":
        print(json.dumps(run_memory(args.memory_steps, args.checkpoint, device)))
        return

    print(
        f"{cpu_name()}; torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
        f"{args.clock} clock, median of {args.repeats}, load average before {os.getloadavg()[0]:.2f}"
    )
    common = ["--repeats", str(args.repeats), "--device", args.device, "--clock", args.clock]
    common += ["--threads", str(args.threads[0])] if args.threads else []
    common += ["--return-freed-memory"] if args.return_freed_memory else []

    def child(*extra: str, module: str = "benchmarks.meta_lstm", options: list[str] = common) -> dict:
        command = [sys.executable, "-m", module, *options, *extra]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    results = [
        child("--child", "train", "--shapes", name, "--variants", variant)
        for name in args.shapes
        for variant in args.variants
    ]
    print(_format(results))
    payload: dict = {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads()}
    payload |= {"cpu": cpu_name(), "clock": args.clock, "train": results}
    if args.threads and len(args.threads) > 1:
        payload["scaling"] = _thread_scaling(args, child, results)
    if device.type == "cpu" and not args.no_layer1:
        threads = str(args.threads[0] if args.threads else torch.get_num_threads())
        layer1 = child("--json", "--threads", threads, module="benchmarks.layer1", options=[])
        print(f"\nlayer 1, one Omniglot step ({threads} thread(s)): products' GFLOP/s, step vs plain torch.matmul")
        for direction in ("forward", "backward"):
            print(
                f"{direction:<9} step {layer1[f'{direction}_ms']:7.2f} ms {layer1[f'{direction}_gflops']:6.1f} GFLOP/s"
                f" | torch.matmul {layer1[f'matmul_{direction}_ms']:7.2f} ms"
                f" {layer1[f'matmul_{direction}_gflops']:6.1f} GFLOP/s"
            )
        payload["layer1"] = layer1
    if args.eval_episodes > 0:
        shape = args.shapes[0]
        runs = [
            child("--child", "eval", "--shapes", shape, "--variants", v, "--eval-episodes", str(args.eval_episodes))
            for v in args.variants
        ]
        print(f"\nevaluation of {args.eval_episodes} episodes, {shape} (no autograd, no meta-graph)")
        print(f"{'variant':<12}{'seconds':>9}{'floor s':>9}{'ratio':>7}{'episodes/s':>12}")
        for run in runs:
            print(
                f"{run['variant']:<12}{run['eval_s']:>9.1f}{run['floor_s']:>9.1f}{run['eval_s'] / run['floor_s']:>7.2f}"
                f"{run['episodes'] / run['eval_s']:>12.1f}"
            )
        payload["eval"] = runs
    if args.memory:
        runs = [
            child("--child", "memory", "--memory-steps", str(t), *(["--checkpoint"] if ckpt else []))
            for t in MEMORY_STEPS
            for ckpt in (False, True)
        ]
        print("\npeak memory of one meta-training episode, omniglot 5-way 1-shot (MiB above the state before it)")
        print(f"{'T':>4}{'kept gates':>12}{'checkpoint':>12}")
        for t in MEMORY_STEPS:
            kept, ckpt = (next(r for r in runs if r["n_steps"] == t and r["checkpoint"] is c) for c in (False, True))
            print(f"{t:>4}{kept['peak_mib']:>12.0f}{ckpt['peak_mib']:>12.0f}")
        payload["memory"] = runs
    print(f"load average after {os.getloadavg()[0]:.2f}")
    target = write_json_atomic(args.out, payload)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
