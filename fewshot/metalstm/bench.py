"""Time one Meta-Learner LSTM meta-training episode against the learner alone, on synthetic data.

    python -m fewshot.metalstm.bench [--repeats 5] [--device cpu] [--variants fused reference]

For each shape the *episode* is ``meta_loss`` + ``backward`` (all meta-parameters get their
gradient); the *floor* is the learner's own work in the same process: ``T`` times forward +
backward on the support set, then forward + backward on the query set. Both are the median of
``--repeats`` runs after two warm-up runs (``time.perf_counter``). The episode is split into:

* learner: the ``T`` support gradients + the query forward (timed inside the episode),
* meta forward: the rest of the forward (preprocessing, LSTM, cell, gate statistics),
* meta backward: ``loss.backward()`` (query backward + backward through the unrolled meta-learner).

``--clock cpu`` times with ``time.process_time`` (CPU seconds of the process, all threads)
instead of the wall clock: on a shared machine, with ``--threads 1``, it is what the wall time
would be on an idle one.

Variants: ``fused`` (the default code path) and ``reference`` (the plain, unfused code). The
first episode (warm-up) is reported separately.

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
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fewshot.metalstm.metalearner import MetaLearner
from fewshot.models.conv4 import Conv4


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
        Shape("omniglot-5w1s-T12", 1, 64, 28, 5, 1, 15, 12, 0.9),
        Shape("miniimagenet-5w5s-T8", 3, 32, 84, 5, 5, 15, 8, 0.95),
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


def _median_of(fn: Callable[[], dict[str, float]], repeats: int) -> dict[str, float]:
    fn()
    fn()
    runs = [fn() for _ in range(repeats)]
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


VARIANTS = ("fused", "reference")


def run_shape(
    shape: Shape, repeats: int, device: torch.device, variant: str, clock: Callable[[], float] = time.perf_counter
) -> dict[str, float | str]:
    """Measure one shape in this process; returns times in milliseconds and peaks in MiB."""
    torch.manual_seed(0)
    learner = Conv4(shape.in_channels, shape.hidden, shape.image_size, shape.n_way, shape.bn_momentum, 1e-3)
    meta = MetaLearner(learner, n_steps=shape.n_steps, fused=variant == "fused")
    meta = meta.to(device).train()
    image = (shape.in_channels, shape.image_size, shape.image_size)
    support_x = torch.randn(shape.n_way * shape.n_shot, *image, device=device)
    support_y = torch.arange(shape.n_way, device=device).repeat_interleave(shape.n_shot)
    query_x = torch.randn(shape.n_way * shape.n_query, *image, device=device)
    query_y = torch.arange(shape.n_way, device=device).repeat_interleave(shape.n_query)

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
    result |= _median_of(floor, repeats)
    result |= _median_of(episode, repeats)
    result |= {"floor_peak_mib": floor_peak, "episode_peak_mib": episode_peak}
    return result


def _format(results: list[dict[str, float | str]]) -> str:
    header = (
        f"{'shape':<22}{'variant':<10}{'coords':>7}{'floor ms':>10}{'episode ms':>12}{'ratio':>7}"
        f"{'learner':>9}{'meta fwd':>10}{'meta bwd':>10}{'1st ep ms':>11}{'peak MiB floor/episode':>24}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r['shape']:<22}{r['variant']:<10}{int(r['n_coords']):>7}{r['floor']:>10.1f}{r['episode']:>12.1f}"
            f"{r['episode'] / r['floor']:>7.2f}{r['learner']:>9.1f}{r['meta_forward']:>10.1f}"
            f"{r['meta_backward']:>10.1f}{r['first_episode']:>11.0f}"
            f"{r['floor_peak_mib']:>13.0f} / {r['episode_peak_mib']:<8.0f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shapes", nargs="*", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--variants", nargs="*", default=["fused"], choices=VARIANTS)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    if args.child:
        for name in args.shapes:
            for variant in args.variants:
                clock = time.perf_counter if args.clock == "wall" else time.process_time
                print(json.dumps(run_shape(SHAPES[name], args.repeats, device, variant, clock)))
        return

    print(
        f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
        f"{args.clock} clock, median of {args.repeats}, load average before {os.getloadavg()[0]:.2f}"
    )
    results = []
    for name in args.shapes:
        for variant in args.variants:
            command = [sys.executable, "-m", "fewshot.metalstm.bench", "--child", "--shapes", name]
            command += ["--variants", variant, "--repeats", str(args.repeats), "--device", args.device]
            command += ["--threads", str(args.threads)] if args.threads else []
            command += ["--clock", args.clock]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
    print(_format(results))
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
