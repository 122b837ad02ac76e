"""MAML, first-order MAML and Meta-SGD.

One module and one class for the three: ``model=maml``, ``model=fomaml`` (``first_order: true``)
and ``model=metasgd`` (``learn_inner_lr: true``) all build :class:`MAML`, and their tests are
``tests/methods/test_maml.py``.

Finn, Abbeel & Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks",
ICML 2017; Li, Zhou, Chen & Li, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning",
2017.

Flags of the original MAML code (``cbfinn/maml``) and their names here:

=========================  ================================================================
original flag              this project
=========================  ================================================================
``num_classes``            ``data.n_way`` (also the learner head: ``model.learner.n_classes``)
``update_batch_size``      ``data.n_shot`` (``data.train_n_shot`` for training episodes)
``meta_batch_size``        ``data.meta_batch_size``
``num_updates``            ``model.inner_steps`` (training), ``model.eval_inner_steps`` (test)
``update_lr``              ``model.inner_lr``
``meta_lr``                ``model.optimizer.lr``
``metatrain_iterations``   ``trainer.max_steps``, or
                           ``data.train_episodes * trainer.max_epochs / data.meta_batch_size``
``stop_grad``              ``model.first_order``
=========================  ================================================================
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fewshot.data.episode import Episode
from fewshot.methods.base import EpisodicMethod, OptimizerFactory, SchedulerFactory
from fewshot.methods.choices import check_choice
from fewshot.methods.inner_loop import (
    batch_statistics,
    elementary_batch_norm,
    functional_logits,
    functional_loss,
    learning_rate,
    module_state,
    resolve_inner_steps,
    sgd_adapt,
)

BN_MODES = ("transductive",)
TASK_BATCHING = ("loop", "vmap")


def check_head_matches_way(n_outputs: int | None, n_way: int, method: str) -> None:
    """The learner's head must have exactly one output per class of the episode.

    Args:
        n_outputs: the learner's number of outputs (its ``out_features``, or the last
            dimension of its logits); None skips the check.
        n_way: N of the episode.
        method: the method's name, for the message.
    """
    if n_outputs is not None and n_outputs != n_way:
        raise ValueError(
            f"{method}'s learner outputs {n_outputs} logits but the episode is {n_way}-way; "
            f"build the learner with n_classes={n_way} (model.learner.n_classes: ${{data.n_way}})."
        )


class MAML(EpisodicMethod):
    """Model-Agnostic Meta-Learning: meta-learn an initialisation ``theta`` such that a few
    gradient steps on a task's support set give weights that classify its queries well.

    For each task of the meta-batch: ``phi = theta - alpha * grad L_support(theta)``
    (``inner_steps`` times), then the meta-loss is the query cross-entropy of ``phi``,
    averaged over the tasks and queries, and minimised over ``theta`` by the outer optimizer.
    Variants:

    - second order (default): the meta-gradient flows through the inner gradients
      (``create_graph=True``), as in Finn et al. 2017;
    - ``first_order=True`` (FOMAML): inner gradients are constants, so the meta-gradient is
      the query gradient at ``phi``;
    - ``learn_inner_lr=True`` (Meta-SGD, Li et al. 2017): ``alpha`` is a learnable tensor of
      the shape of each parameter, initialised to ``inner_lr`` and meta-trained with
      ``theta``.

    Evaluation adapts a detached copy of ``theta`` with ``eval_inner_steps`` steps and keeps
    no graph; the code path is the same as in training.

    Batch norm (``bn_mode="transductive"``, the only mode): as in the original MAML code,
    every call of the learner normalises with the statistics of its current batch, the
    support set while adapting and the task's whole query set when predicting, in training
    and in evaluation alike. No running statistics are used or updated: the learner's
    batch-norm buffers are handed to functional calls as copies, so they keep their initial
    values (mean 0, variance 1) for the whole run. Consequently predictions depend on the
    query set as a batch (transductive), as in MAML's reported results.

    Differences from the original code: the batch-norm scale and shift are adapted in the
    inner loop like every other parameter (the original has no scale and keeps the shift out
    of the inner loop), and ``Conv4`` down-samples by max-pooling on every dataset (the
    original uses strided convolutions on Omniglot).

    Args:
        learner: the classifier adapted per task, ending in an N-way head (``Conv4`` with
            ``n_classes = data.n_way``); called with ``torch.func.functional_call``.
        optimizer: partial of the outer (meta) optimizer.
        scheduler: optional partial of its learning-rate scheduler.
        inner_steps: gradient steps on the support set in meta-training.
        eval_inner_steps: steps at validation/test (None: ``inner_steps``); the paper
            trains with 1 and tests with 3 on Omniglot 5-way, 5 and 10 on Mini-ImageNet.
        inner_lr: the inner step size ``alpha`` (the initial value for Meta-SGD).
        first_order: drop second derivatives (FOMAML).
        learn_inner_lr: Meta-SGD's per-parameter learned step sizes.
        bn_mode: how batch norm normalises; only ``"transductive"`` (see above).
        task_batching: ``"loop"`` adapts the tasks of a meta-batch one after the other;
            ``"vmap"`` adapts them all at once with ``torch.func.vmap`` (inner gradients by
            ``torch.func.grad``): the same function, batched kernels. Pays on a GPU; on a CPU
            the loop is faster (see ``python -m benchmarks.maml``).
    """

    needs_fixed_n_way = True

    def __init__(
        self,
        learner: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        inner_steps: int = 1,
        eval_inner_steps: int | None = None,
        inner_lr: float = 0.4,
        first_order: bool = False,
        learn_inner_lr: bool = False,
        bn_mode: str = "transductive",
        task_batching: str = "loop",
    ) -> None:
        super().__init__(optimizer, scheduler)
        check_choice("model.task_batching", task_batching, TASK_BATCHING)
        eval_inner_steps = resolve_inner_steps(inner_steps, eval_inner_steps)
        check_choice("model.bn_mode", bn_mode, BN_MODES)
        self.learner = learner
        self.inner_steps = inner_steps
        self.eval_inner_steps = eval_inner_steps
        self.inner_lr = inner_lr
        self.first_order = first_order
        self.learn_inner_lr = learn_inner_lr
        self.bn_mode = bn_mode
        self.task_batching = task_batching
        # ParameterDict keys cannot contain dots: "features.0.weight" -> "features__0__weight"
        self.inner_lrs = (
            nn.ParameterDict(
                {
                    lr_key(name): nn.Parameter(torch.full_like(p.detach(), inner_lr))
                    for name, p in learner.named_parameters()
                }
            )
            if learn_inner_lr
            else None
        )

    @property
    def display_name(self) -> str:
        """The name in results: MAML, FOMAML, Meta-SGD (or FO-Meta-SGD for both options)."""
        if self.learn_inner_lr:
            return "FO-Meta-SGD" if self.first_order else "Meta-SGD"
        return "FOMAML" if self.first_order else "MAML"

    def step_sizes(self) -> float | dict[str, Tensor]:
        """The inner step size: ``inner_lr``, or Meta-SGD's per-parameter tensors keyed by the
        learner's parameter names."""
        if self.inner_lrs is None:
            return self.inner_lr
        return {name: self.inner_lrs[lr_key(name)] for name, _ in self.learner.named_parameters()}

    def adapt_and_predict(
        self, support_images: Tensor, support_labels: Tensor, query_images: Tensor, steps: int, meta_train: bool
    ) -> Tensor:
        """Adapt the learner to one task and score its queries.

        Args:
            support_images: ``[N*K, C, H, W]``; ``support_labels``: ``[N*K]``.
            query_images: ``[N*Q, C, H, W]``.
            steps: inner gradient steps.
            meta_train: keep the graph back to ``theta`` (and the step sizes) for the
                meta-gradient; False adapts detached copies.

        Returns:
            Query logits ``[N*Q, N]``.
        """
        params, buffers = module_state(self.learner, detach=not meta_train)
        lr = self.step_sizes()
        if not meta_train and isinstance(lr, dict):
            lr = {name: a.detach() for name, a in lr.items()}
        create_graph = meta_train and not self.first_order
        with batch_statistics(self.learner):
            adapted = sgd_adapt(self.learner, params, buffers, support_images, support_labels, steps, lr, create_graph)
            return functional_logits(self.learner, adapted, buffers, query_images)

    def adapt_and_predict_batched(
        self, support_images: Tensor, support_labels: Tensor, query_images: Tensor, steps: int, meta_train: bool
    ) -> Tensor:
        """:meth:`adapt_and_predict` for a whole meta-batch at once (``torch.func.vmap``).

        Args:
            support_images: ``[B, N*K, C, H, W]``; ``support_labels``: ``[B, N*K]``.
            query_images: ``[B, N*Q, C, H, W]``.

        Returns:
            Query logits ``[B, N*Q, N]``.
        """
        params, buffers = module_state(self.learner, detach=not meta_train)
        lr = self.step_sizes()
        if not meta_train and isinstance(lr, dict):
            lr = {name: a.detach() for name, a in lr.items()}
        keep_second_order = meta_train and not self.first_order
        # Transductive batch norm never reads its running statistics; the batched path uses none,
        # since the transforms forbid writing to a buffer (see elementary_batch_norm).

        def one_task(params: dict[str, Tensor], xs: Tensor, ys: Tensor, xq: Tensor) -> Tensor:
            adapted = dict(params)
            for _ in range(steps):
                grads = torch.func.grad(lambda p: functional_loss(self.learner, p, buffers, xs, ys))(adapted)
                if not keep_second_order:
                    grads = {name: g.detach() for name, g in grads.items()}
                adapted = {name: p - learning_rate(lr, name) * grads[name] for name, p in adapted.items()}
            return functional_logits(self.learner, adapted, buffers, xq)

        with elementary_batch_norm(self.learner), torch.enable_grad():
            batched = torch.func.vmap(one_task, in_dims=(None, 0, 0, 0))  # weights shared by all tasks
            return batched(params, support_images, support_labels, query_images)

    def forward(self, episode: Episode) -> Tensor:
        """Adapt to each task of the meta-batch (a plain loop, or ``vmap``, see
        ``task_batching``) and return the query logits ``[B, N*Q, N]``; in training they carry
        the graph for the meta-gradient."""
        check_head_matches_way(getattr(self.learner, "out_features", None), episode.n_way, self.display_name)
        meta_train = self.training
        steps = self.inner_steps if meta_train else self.eval_inner_steps
        if self.task_batching == "vmap":
            logits = self.adapt_and_predict_batched(
                episode.support_images, episode.support_labels, episode.query_images, steps, meta_train
            )
        else:
            logits = torch.stack(
                [
                    self.adapt_and_predict(support, labels, query, steps, meta_train)
                    for support, labels, query in zip(
                        episode.support_images, episode.support_labels, episode.query_images
                    )
                ]
            )
        check_head_matches_way(logits.shape[-1], episode.n_way, self.display_name)
        return logits if meta_train else logits.detach()


def lr_key(name: str) -> str:
    """The ``ParameterDict`` key of a parameter's Meta-SGD step size."""
    return name.replace(".", "__")


__all__ = ["MAML", "check_head_matches_way"]
