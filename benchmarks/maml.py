"""MAML meta-training speed against a plain per-task ``torch.autograd.grad`` loop (the floor).

    python -m benchmarks.maml [--meta-batch 32] [--repeats 5] [--threads N] [--device cpu|cuda]
                              [--out bench_results/maml.json]

For first and second order, 1 and 5 inner steps, on the Omniglot shape (Conv-4-64, 28x28,
5-way 1-shot, 15 queries): one meta-training step of our ``MAML`` method (forward over the
meta-batch, loss, backward) against the same maths written directly as a loop over tasks
with ``torch.autograd.grad``, timed in the same process on the same random episode. Prints
a table (tasks/s, ratio to the floor) and writes JSON. The same step with
``task_batching=vmap`` (all tasks at once) is timed too, with its speed-up over the loop.
Peak memory of second-order 5 steps at meta-batch 32 is measured in a child process
(``VmHWM``; on CUDA, ``torch.cuda.max_memory_allocated``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call

from benchmarks.common import time_call, time_pair, write_json
from fewshot.data.episode import Episode
from fewshot.methods.inner_loop import batch_statistics
from fewshot.methods.maml import MAML
from fewshot.models.conv4 import Conv4


@dataclass(frozen=True)
class Setting:
    """One benchmarked MAML variant."""

    steps: int
    first_order: bool

    @property
    def name(self) -> str:
        """``MAML-2nd 5 steps`` etc."""
        return f"MAML-{'1st' if self.first_order else '2nd'} {self.steps} step{'s' if self.steps > 1 else ''}"


def random_episode(
    meta_batch: int, n_way: int = 5, n_shot: int = 1, n_query: int = 15, size: int = 28, device: str = "cpu"
) -> Episode:
    """A meta-batch of random normalised images of the Omniglot shape."""
    g = torch.Generator().manual_seed(0)
    episode = Episode(
        support_images=torch.randn(meta_batch, n_way * n_shot, 1, size, size, generator=g),
        support_labels=torch.arange(n_way).repeat_interleave(n_shot).repeat(meta_batch, 1),
        query_images=torch.randn(meta_batch, n_way * n_query, 1, size, size, generator=g),
        query_labels=torch.arange(n_way).repeat_interleave(n_query).repeat(meta_batch, 1),
        n_way=n_way,
        index=torch.arange(meta_batch),
    )
    return episode.to(device)


def build_method(setting: Setting, task_batching: str = "loop", device: str = "cpu") -> MAML:
    """Our MAML on a Conv-4-64 learner."""
    torch.manual_seed(0)
    learner = Conv4(in_channels=1, hidden=64, image_size=28, n_classes=5)
    optimizer = torch.optim.Adam
    return (
        MAML(
            learner,
            optimizer=lambda params: optimizer(params, lr=1e-3),
            inner_steps=setting.steps,
            inner_lr=0.4,
            first_order=setting.first_order,
            task_batching=task_batching,
        )
        .to(device)
        .train()
    )


def method_step(method: MAML, episode: Episode) -> None:
    """One meta-training step's compute: forward over the meta-batch, loss, backward."""
    method.zero_grad(set_to_none=True)
    loss, _ = method.episode_loss(episode)
    loss.backward()


def floor_step(learner: torch.nn.Module, episode: Episode, setting: Setting, lr: float = 0.4) -> None:
    """The same maths as a direct loop over tasks with ``torch.autograd.grad``."""
    learner.zero_grad(set_to_none=True)
    buffers = {n: b.clone() for n, b in learner.named_buffers()}
    total = 0.0
    with batch_statistics(learner):
        for xs, ys, xq, yq in zip(
            episode.support_images, episode.support_labels, episode.query_images, episode.query_labels
        ):
            params = dict(learner.named_parameters())
            for _ in range(setting.steps):
                loss = F.cross_entropy(functional_call(learner, (params, buffers), (xs,)), ys)
                grads = torch.autograd.grad(loss, list(params.values()), create_graph=not setting.first_order)
                params = {n: p - lr * g for (n, p), g in zip(params.items(), grads)}
            total = total + F.cross_entropy(functional_call(learner, (params, buffers), (xq,)), yq)
    (total / len(episode.support_images)).backward()


def synced(fn, device: str):
    """``fn`` followed by a device synchronisation (CUDA kernels run asynchronously)."""

    def run() -> None:
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    return run


def measure(setting: Setting, meta_batch: int, repeats: int, device: str = "cpu") -> dict[str, float | str]:
    """Tasks/s of our method (loop and vmap) and of the floor loop, and their ratios."""
    episode = random_episode(meta_batch, device=device)
    method = build_method(setting, device=device)
    batched = build_method(setting, "vmap", device)
    ours, floor = time_pair(
        synced(lambda: method_step(method, episode), device),
        synced(lambda: floor_step(method.learner, episode, setting), device),
        repeats=repeats,
    )
    vmapped = time_call(synced(lambda: method_step(batched, episode), device), repeats=repeats)
    return {
        "vmap_tasks_per_s": meta_batch / vmapped["median_s"],
        "vmap_speedup_over_loop": ours["median_s"] / vmapped["median_s"],
        "setting": setting.name,
        "meta_batch": meta_batch,
        "ours_tasks_per_s": meta_batch / ours["median_s"],
        "floor_tasks_per_s": meta_batch / floor["median_s"],
        "ratio_to_floor": ours["median_s"] / floor["median_s"],
        "ours_min_max_s": [ours["min_s"], ours["max_s"]],
        "floor_min_max_s": [floor["min_s"], floor["max_s"]],
    }


def peak_memory_gib(meta_batch: int, device: str = "cpu") -> float:
    """Peak memory of one second-order 5-step meta-training step, in a child process: resident
    memory (``VmHWM``) on CPU, allocated memory on CUDA."""
    code = (
        "import torch\n"
        "from benchmarks.maml import Setting, build_method, method_step, random_episode\n"
        f"s = Setting(5, False); m = build_method(s, device={device!r})\n"
        f"method_step(m, random_episode({meta_batch}, device={device!r}))\n"
        "from benchmarks.common import peak_resident_bytes\n"
        f"print(torch.cuda.max_memory_allocated() if {device!r}.startswith('cuda') else peak_resident_bytes())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 2**30


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.maml", description=__doc__.splitlines()[0])
    parser.add_argument("--meta-batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="bench_results/maml.json")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory child process")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [
        measure(Setting(steps, first_order), args.meta_batch, args.repeats, args.device)
        for first_order in (True, False)
        for steps in (1, 5)
    ]
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"torch {torch.__version__}, {name}, threads {torch.get_num_threads()}, meta-batch {args.meta_batch}")
    header = f"{'setting':<20} {'ours tasks/s':>13} {'floor tasks/s':>14} {'ratio':>7}"
    print(header + f" {'vmap tasks/s':>13} {'speed-up':>9}")
    for row in rows:
        print(
            f"{row['setting']:<20} {row['ours_tasks_per_s']:>13.2f} {row['floor_tasks_per_s']:>14.2f} "
            f"{row['ratio_to_floor']:>7.3f} {row['vmap_tasks_per_s']:>13.2f} {row['vmap_speedup_over_loop']:>9.2f}"
        )
    payload: dict = {"rows": rows, "torch": torch.__version__, "threads": torch.get_num_threads(), "device": name}
    if not args.no_memory:
        payload["peak_rss_gib_2nd_order_5_steps"] = peak_memory_gib(args.meta_batch, args.device)
        print(
            f"peak memory, second order 5 steps, meta-batch {args.meta_batch}: "
            f"{payload['peak_rss_gib_2nd_order_5_steps']:.2f} GiB"
        )
    print(f"wrote {write_json(args.out, payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
