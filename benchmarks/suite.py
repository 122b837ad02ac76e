"""Every method's speed against its floor, on the Omniglot shape, in one table.

    python -m benchmarks.suite [--repeats 5] [--eval-episodes 50] [--threads N] [--methods ...]
                               [--out bench_results/suite.json]

Each method is built from its ``experiment=omniglot/<method>_5w1s`` preset (so the numbers are
those of the configuration people run) on random 5-way 1-shot episodes with 15 queries per class
(28x28, Conv-4-64). For each method, in one process:

* **meta-training**: one training step's compute (loss forward + backward over what the method
  trains on: an episode, a meta-batch of tasks, or a batch of 32 images for the pre-trained
  baselines), median of ``--repeats`` after three warm-up runs, as episodes (or tasks, or
  images) per s;
* **evaluation**: ``--eval-episodes`` test episodes under ``torch.no_grad``, as testing runs
  (median of 3);
* ours and the floor alternate call by call, so that both see the same machine;
* **floor**: the learner's own work on the same tensors, written directly with torch
  (ProtoNet / Matching Net: the backbone's forward + backward on the episode's images, or its
  forward for evaluation; MAML: the plain ``torch.autograd.grad`` loop over tasks of
  ``benchmarks.maml``; Meta-LSTM: ``T`` x learner forward + backward on the support set +
  query forward (+ backward when training); fine-tune: the same number of SGD steps of
  backbone + head on the support set, plus the query forward); the ratio is ours / floor;
* the process keeps freed memory, as ``train.py`` does (``fewshot.run.process``;
  ``--return-freed-memory`` leaves glibc's default);
* **peak memory**: peak resident memory (``VmHWM``) of a child process that builds the
  method and runs one training step and one evaluation episode; it includes Python, torch and
  the configs, about 0.4 GiB, so compare methods by their differences.

Prints the table and writes JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.func import functional_call

from benchmarks.common import time_pair, write_json
from benchmarks.maml import Setting, floor_step, random_episode
from fewshot.data.classification import LabelledImages
from fewshot.data.episode import Episode
from fewshot.methods.baseline_finetune import FinetuneSettings
from fewshot.methods.inner_loop import batch_statistics
from fewshot.run.process import retain_freed_memory

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")
N_WAY, N_SHOT, N_QUERY, SIZE = 5, 1, 15, 28


@dataclass(frozen=True)
class Case:
    """One benchmarked method: its preset, overrides and the unit of its training step."""

    name: str
    preset: str
    overrides: tuple[str, ...] = ()
    meta_batch: int = 1


CASES = {
    c.name: c
    for c in (
        Case("ProtoNet", "protonet_5w1s"),
        Case("MatchingNet", "matchingnet_5w1s"),
        Case("MatchingNet-FCE", "matchingnet_fce_5w1s"),
        Case("Baseline-finetune", "baseline_finetune_5w1s", ("model.n_train_classes=964",)),
        Case("MAML-1st 1 step", "maml_5w1s", ("model.first_order=true", "model.eval_inner_steps=1"), 32),
        Case("MAML-1st 5 steps", "maml_5w1s", ("model.first_order=true", "model.inner_steps=5"), 32),
        Case("MAML-2nd 1 step", "maml_5w1s", ("model.eval_inner_steps=1",), 32),
        Case("MAML-2nd 5 steps", "maml_5w1s", ("model.inner_steps=5",), 32),
        Case("Meta-LSTM T5", "meta_lstm_5w1s", ("model.inner_steps=5",)),
        Case("Meta-LSTM T12", "meta_lstm_5w1s", ("model.inner_steps=12",)),
    )
}


def build(case: Case):
    """The method of ``case``, instantiated from its preset (no data is loaded)."""
    overrides = [f"experiment=omniglot/{case.preset}", *case.overrides, "data.n_query=15"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    method = instantiate(cfg.model)
    if hasattr(method, "settings"):  # fine-tune: the grid's longest setting, as the grid search scores
        method.settings = FinetuneSettings(lr=0.01, decay=0.0, updates=max(cfg.model.grid.updates))
    return method


def episode_of(meta_batch: int) -> Episode:
    """Random normalised images of the Omniglot shape."""
    return random_episode(meta_batch, N_WAY, N_SHOT, N_QUERY, SIZE)


def train_step(method, case: Case) -> Callable[[], None]:
    """One training step's compute of ``method``, as a closure."""
    method.train()
    if getattr(method, "train_batches", "episodes") == "images":
        g = torch.Generator().manual_seed(1)
        batch = LabelledImages(torch.randn(32, 1, SIZE, SIZE, generator=g), torch.randint(0, 964, (32,), generator=g))

        def step() -> None:
            method.zero_grad(set_to_none=True)
            F.cross_entropy(method.classifier(method.backbone(batch.images)), batch.labels).backward()

        return step
    episode = episode_of(case.meta_batch)

    def step() -> None:
        method.zero_grad(set_to_none=True)
        method.episode_loss(episode)[0].backward()

    return step


def eval_episodes(method, episodes: int) -> Callable[[], None]:
    """``episodes`` single test episodes through the method, without autograd."""
    method.eval()
    episode = episode_of(1)

    def run() -> None:
        for _ in range(episodes):
            with torch.no_grad():  # as testing runs (trainer.inference_mode is false)
                method(episode).argmax(-1)

    return run


def train_floor(method, case: Case) -> Callable[[], None]:
    """The learner's own work for one training step, written directly."""
    if case.name.startswith("MAML"):
        setting = Setting(method.inner_steps, method.first_order)
        episode = episode_of(case.meta_batch)
        return lambda: floor_step(method.learner, episode, setting, lr=method.inner_lr)
    if case.name.startswith("Meta-LSTM"):
        return metalstm_floor(method, train=True)
    if case.name == "Baseline-finetune":
        images, labels = torch.randn(32, 1, SIZE, SIZE), torch.randint(0, 964, (32,))
        head = copy.deepcopy(method.classifier)
        return lambda: F.cross_entropy(head(method.backbone(images)), labels).backward()
    backbone = method.backbone
    episode = episode_of(1)
    images = torch.cat([episode.support_images.flatten(0, 1), episode.query_images.flatten(0, 1)])
    return lambda: backbone(images).square().mean().backward()


def eval_floor(method, case: Case, episodes: int) -> Callable[[], None]:
    """The learner's own work for ``episodes`` test episodes, written directly."""
    episode = episode_of(1).unbatch()[0]
    xs, ys, xq = episode.support_images, episode.support_labels, episode.query_images
    if case.name.startswith("MAML"):
        learner, steps, lr = method.learner, method.eval_inner_steps, method.inner_lr

        def one() -> None:
            buffers = {n: b.clone() for n, b in learner.named_buffers()}
            params = {n: p.detach().requires_grad_(True) for n, p in learner.named_parameters()}
            with batch_statistics(learner):
                for _ in range(steps):
                    loss = F.cross_entropy(functional_call(learner, (params, buffers), (xs,)), ys)
                    grads = torch.autograd.grad(loss, list(params.values()))
                    params = {n: (p - lr * g).detach().requires_grad_(True) for (n, p), g in zip(params.items(), grads)}
                with torch.no_grad():
                    functional_call(learner, (params, buffers), (xq,)).argmax(-1)

    elif case.name.startswith("Meta-LSTM"):
        one = metalstm_floor(method, train=False)
    elif case.name == "Baseline-finetune":
        updates = method.settings.updates

        def one() -> None:
            learner = torch.nn.Sequential(copy.deepcopy(method.backbone), torch.nn.Linear(64, N_WAY))
            params = list(learner.parameters())
            for _ in range(updates):
                learner.train()
                grads = torch.autograd.grad(F.cross_entropy(learner(xs), ys), params)
                with torch.no_grad():
                    torch._foreach_sub_(params, grads, alpha=0.01)
            with torch.no_grad():
                learner.eval()(xq).argmax(-1)

    else:
        backbone = method.backbone.eval()
        images = torch.cat([xs, xq])

        def one() -> None:
            with torch.no_grad():
                backbone(images)

    def run() -> None:
        for _ in range(episodes):
            one()

    return run


def metalstm_floor(method, train: bool) -> Callable[[], None]:
    """``T`` x learner forward + backward on the support set, then the query forward (+ backward)."""
    meta = method.metalearner
    episode = episode_of(1).unbatch()[0]
    xs, ys, xq, yq = episode.support_images, episode.support_labels, episode.query_images, episode.query_labels

    def run() -> None:
        theta, buffers = meta.c0.detach().requires_grad_(train), meta.fresh_buffers()
        for _ in range(meta.n_steps):
            meta.learner_loss_and_grad(theta, buffers, xs, ys)
        if train:
            loss = F.cross_entropy(meta.learner_forward(theta, buffers, xq, train=True), yq)
            torch.autograd.grad(loss, theta)
        else:
            with torch.no_grad():
                meta.learner_forward(theta, buffers, xq, train=False).argmax(-1)

    return run


def measure(case: Case, repeats: int, episodes: int) -> dict:
    """Speed of ``case`` and of its floors, in this process."""
    torch.manual_seed(0)
    method = build(case)
    ours, floor = time_pair(train_step(method, case), train_floor(method, case), repeats=repeats, warmup=3)
    unit = 32 if getattr(method, "train_batches", "episodes") == "images" else case.meta_batch
    ours_eval, floor_eval = time_pair(eval_episodes(method, episodes), eval_floor(method, case, episodes), repeats=3)
    return {
        "method": case.name,
        "train_unit": "images" if unit == 32 and case.meta_batch == 1 else ("tasks" if unit > 1 else "episodes"),
        "train_per_s": unit / ours["median_s"],
        "train_floor_per_s": unit / floor["median_s"],
        "train_ratio": ours["median_s"] / floor["median_s"],
        "train_min_max_s": [ours["min_s"], ours["max_s"]],
        "eval_episodes_per_s": episodes / ours_eval["median_s"],
        "eval_floor_episodes_per_s": episodes / floor_eval["median_s"],
        "eval_ratio": ours_eval["median_s"] / floor_eval["median_s"],
    }


def peak_memory_mib(case: Case) -> float:
    """Peak resident memory of a child that builds ``case`` and runs one training step and one test episode."""
    code = (
        "import sys\n"
        "from benchmarks.suite import CASES, build, eval_episodes, train_step\n"
        f"case = CASES[{case.name!r}]; method = build(case)\n"
        "train_step(method, case)(); eval_episodes(method, 1)()\n"
        "from benchmarks.common import peak_resident_bytes\n"
        "print(peak_resident_bytes())\n"
    )
    env = os.environ | {"OMP_NUM_THREADS": str(torch.get_num_threads())}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return int(out.stdout.strip().splitlines()[-1]) / 2**20


def main(argv: list[str] | None = None) -> int:
    """Run the suite, print the table, write JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.suite", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--eval-episodes", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--methods", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    parser.add_argument("--out", default="bench_results/suite.json")
    parser.add_argument(
        "--return-freed-memory", action="store_true", help="leave glibc's allocator as it is (train.py retains)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.return_freed_memory:
        retain_freed_memory()  # as train.py does (retain_freed_memory: true)
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}, "
        f"Omniglot shape 5-way 1-shot 15 queries, median of {args.repeats}"
    )
    header = (
        f"{'method':<19}{'train /s':>10}{'unit':>9}{'floor /s':>10}{'ratio':>7}"
        f"{'eval ep/s':>11}{'floor ep/s':>11}{'ratio':>7}{'peak RSS MiB':>14}"
    )
    print(header + "\n" + "-" * len(header))
    rows = []
    for name in args.methods:
        start = time.perf_counter()
        row = measure(CASES[name], args.repeats, args.eval_episodes)
        row["peak_mib"] = None if args.no_memory else peak_memory_mib(CASES[name])
        row["bench_s"] = time.perf_counter() - start
        rows.append(row)
        peak = "-" if row["peak_mib"] is None else f"{row['peak_mib']:.0f}"
        print(
            f"{name:<19}{row['train_per_s']:>10.2f}{row['train_unit']:>9}{row['train_floor_per_s']:>10.2f}"
            f"{row['train_ratio']:>7.2f}{row['eval_episodes_per_s']:>11.2f}{row['eval_floor_episodes_per_s']:>11.2f}"
            f"{row['eval_ratio']:>7.2f}{peak:>14}",
            flush=True,
        )
    payload = {"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}
    print(f"wrote {write_json(args.out, payload)}")
    print(json.dumps({"load_average_after": os.getloadavg()[0]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
