"""How close is first-order MAML's meta-gradient to second-order MAML's, on real training tasks?

    python scripts/meta_gradient_alignment.py CKPT [CKPT ...] [--batches 8] [--init] [--inner-lr A]

For each MAML/FOMAML checkpoint (``train.py`` output; its own config gives the data and the
method), and with ``--init`` for the same learner freshly initialised (seed 0): draws
``--batches`` meta-batches of training tasks from the checkpoint's training episodes and computes,
on each, the meta-gradient of the query loss after the training inner loop twice: second order
(through the inner gradients) and first order (inner gradients held constant). Prints, per
parameter group (the learner's body, its head, all), the mean cosine between the two and the
ratio of their norms, and the cosine between consecutive batches' first-order gradients
(how much of that gradient is shared by different tasks rather than noise).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Iterator, Mapping
from itertools import islice

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import Tensor

import fewshot
from fewshot.data.episode import Episode
from fewshot.methods.maml import MAML
from fewshot.run.checkpoint import checkpoint_config


def head_names(method: MAML) -> set[str]:
    """Names (as in ``method.named_parameters()``) of the learner's classifier: its ``head``, or
    else its last module that holds parameters."""
    learner = method.learner
    head = getattr(learner, "head", None)
    if head is None:
        head = [m for m in learner.modules() if next(m.parameters(recurse=False), None) is not None][-1]
    ids = {id(p) for p in head.parameters()}
    return {f"learner.{n}" for n, p in learner.named_parameters() if id(p) in ids}


def meta_gradient(method: MAML, episode: Episode, first_order: bool) -> dict[str, Tensor]:
    """The gradient of the meta-batch's mean query loss w.r.t. the learner's initial weights."""
    kept, method.first_order = method.first_order, first_order
    method.train()
    try:
        logits = method(episode)
    finally:
        method.first_order = kept
    loss = F.cross_entropy(logits.flatten(0, 1), episode.query_labels.flatten())
    names, params = zip(*[(n, p) for n, p in method.named_parameters() if n.startswith("learner.")])
    grads = torch.autograd.grad(loss, params)
    return dict(zip(names, grads))


def flat(grads: Mapping[str, Tensor], names: set[str]) -> Tensor:
    """The gradients of the named parameters as one vector."""
    return torch.cat([g.flatten() for n, g in grads.items() if n in names])


def cosine(a: Tensor, b: Tensor) -> float:
    """Cosine similarity of two vectors."""
    return float(F.cosine_similarity(a, b, dim=0))


def training_batches(ckpt: str, count: int) -> Iterator[Episode]:
    """``count`` meta-batches of the checkpoint's training episodes, normalised as in training."""
    cfg = checkpoint_config(ckpt)
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    for batch in islice(iter(datamodule.train_dataloader()), count):
        yield datamodule.on_after_batch_transfer(batch, 0)


def alignment(method: MAML, batches: list[Episode]) -> dict[str, dict[str, float]]:
    """Per group (body, head, all): the mean cosine of the first- and second-order gradients of
    each batch, the mean ratio of their norms, and the mean cosine of consecutive batches'
    gradients of each order (at least two batches)."""
    if len(batches) < 2:
        raise ValueError(f"alignment needs at least 2 meta-batches, got {len(batches)}.")
    pairs = [(meta_gradient(method, b, True), meta_gradient(method, b, False)) for b in batches]
    every = set(pairs[0][0])
    head = head_names(method)
    groups = {"body": every - head, "head": head, "all": every}
    rows: dict[str, dict[str, float]] = {}
    for group, names in groups.items():
        fo = [flat(f, names) for f, _ in pairs]
        so = [flat(s, names) for _, s in pairs]
        rows[group] = {
            "cos_fo_so": statistics.mean(cosine(f, s) for f, s in zip(fo, so)),
            "norm_fo_over_so": statistics.mean(float(f.norm() / s.norm()) for f, s in zip(fo, so)),
            "cos_fo_consecutive": statistics.mean(cosine(a, b) for a, b in zip(fo, fo[1:])),
            "cos_so_consecutive": statistics.mean(cosine(a, b) for a, b in zip(so, so[1:])),
        }
    return rows


def print_rows(title: str, rows: dict[str, dict[str, float]]) -> None:
    """One line per group."""
    print(f"\n{title}")
    print(f"{'group':6} {'cos(FO,SO)':>10} {'|FO|/|SO|':>10} {'cos FO b,b+1':>13} {'cos SO b,b+1':>13}")
    for group, r in rows.items():
        print(
            f"{group:6} {r['cos_fo_so']:10.3f} {r['norm_fo_over_so']:10.3f} "
            f"{r['cos_fo_consecutive']:13.3f} {r['cos_so_consecutive']:13.3f}"
        )


def main(argv: list[str] | None = None) -> None:
    """Print the alignment table for each checkpoint (and a fresh initialisation)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="MAML or FOMAML checkpoints written by train.py")
    parser.add_argument("--batches", type=int, default=8, help="meta-batches of training tasks per state")
    parser.add_argument("--init", action="store_true", help="also a fresh initialisation of the first one")
    parser.add_argument("--inner-lr", type=float, default=None, help="inner step size (default: each checkpoint's)")
    args = parser.parse_args(argv)
    if args.batches < 2:
        parser.error(f"--batches must be at least 2 (consecutive batches are compared), got {args.batches}.")
    batches = list(training_batches(args.checkpoints[0], args.batches))
    print(f"{len(batches)} meta-batches of {batches[0].support_images.shape[0]} training tasks")
    states = []
    if args.init:
        torch.manual_seed(0)
        states.append(("fresh initialisation (seed 0)", instantiate(checkpoint_config(args.checkpoints[0]).model)))
    states += [(ckpt, fewshot.load(ckpt)) for ckpt in args.checkpoints]
    for title, method in states:
        if not isinstance(method, MAML):
            raise SystemExit(f"{title} holds a {type(method).__name__}, not a MAML/FOMAML method.")
        if args.inner_lr is not None:
            method.inner_lr = args.inner_lr
        print_rows(f"{title}, inner step {method.inner_lr}", alignment(method, batches))


if __name__ == "__main__":
    main()
