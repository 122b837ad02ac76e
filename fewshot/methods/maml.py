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
``xent`` (CE / K, summed)  ``model.inner_loss_scale: official``, ``model.outer_loss_scale: official``
``batch_norm`` variables   not adapted per task: ``model.inner_adapt_bn: false``
``clip_by_value(-10, 10)`` ``model.grad_clip_value: 10`` (Mini-ImageNet presets)
=========================  ================================================================
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.data.episode import Episode
from fewshot.methods.base import EpisodicMethod, OptimizerFactory, SchedulerFactory
from fewshot.methods.choices import BatchNormModes, check_choice
from fewshot.methods.inner_loop import (
    batch_norm_parameter_names,
    batch_statistics,
    elementary_batch_norm,
    functional_logits,
    functional_loss,
    learning_rate,
    module_state,
    resolve_inner_steps,
    sgd_adapt,
)

TASK_BATCHING = ("loop", "vmap")
LOSS_SCALES = ("official", "mean")


def official_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """The inner loss of ``cbfinn/maml``: each support example's cross-entropy divided by K,
    summed (``tf.gradients`` of the per-example vector sums it), i.e. N times the mean
    cross-entropy of an N-way K-shot support set.

    Args:
        logits: ``[N*K, N]``; ``labels``: ``[N*K]``.
    """
    return logits.shape[-1] * F.cross_entropy(logits, labels)


INNER_LOSSES = {"official": official_cross_entropy, "mean": F.cross_entropy}


def with_scaled_gradient(loss: Tensor, factor: float) -> Tensor:
    """``loss`` with its value unchanged and its gradient multiplied by ``factor``."""
    return loss.detach() + factor * (loss - loss.detach())


class MAML(EpisodicMethod):
    """Model-Agnostic Meta-Learning: meta-learn an initialisation ``theta`` such that a few
    gradient steps on a task's support set give weights that classify its queries well.

    For each task of the meta-batch: ``phi = theta - alpha * grad L_support(theta)``
    (``inner_steps`` times), then the meta-loss is the query cross-entropy of ``phi``,
    averaged over the tasks and queries, and minimised over ``theta`` by the outer optimizer.

    Loss scales (``inner_loss_scale``, ``outer_loss_scale``): the original code's loss is each
    example's cross-entropy divided by K, summed over the examples. ``"official"`` keeps its
    scale: an inner step is ``alpha * N * grad(mean support CE)``, and the meta-gradient is
    ``N*Q/K`` times that of the mean query cross-entropy (Q training queries per class; the
    sum over a task's queries, averaged over the tasks). ``"mean"`` uses the mean cross-entropy
    (the paper's equations with ``L`` a mean): an N times smaller inner step, and the
    meta-gradient of the mean. The logged ``train/loss`` is the mean query cross-entropy either
    way. Adam makes the outer scale nearly irrelevant (only its ``eps`` sees it), but the
    meta-gradient clipping of ``grad_clip_value`` clips the gradient at that scale.

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

    Batch norm (``train_bn`` and ``eval_bn`` ``"transductive"``, the only mode): as in the original MAML code,
    every call of the learner normalises with the statistics of its current batch, the
    support set while adapting and the task's whole query set when predicting, in training
    and in evaluation alike. No running statistics are used or updated: the learner's
    batch-norm buffers are handed to functional calls as copies, so they keep their initial
    values (mean 0, variance 1) for the whole run. Consequently predictions depend on the
    query set as a batch (transductive), as in MAML's reported results. With
    ``inner_adapt_bn=False`` (the original code's choice) the batch-norm parameters are not
    adapted per task: the inner steps leave them as they are, and they are meta-learned
    with the other weights.

    Differences from the original code: ``Conv4`` down-samples by max-pooling on every
    dataset (the original uses strided convolutions on Omniglot); the batch-norm layers,
    their initialisation and eps are the backbone's (``conf/backbone``); evaluation episodes
    and validation follow the project's protocol (``docs/reproduce.md``, Deviations).

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
        train_bn, eval_bn: how batch norm normalises in training and in evaluation; only
            ``"transductive"`` (see above).
        task_batching: ``"loop"`` adapts the tasks of a meta-batch one after the other;
            ``"vmap"`` adapts them all at once with ``torch.func.vmap`` (inner gradients by
            ``torch.func.grad``): the same function, batched kernels. Pays on a GPU; on a CPU
            the loop is faster (see ``python -m benchmarks.maml``).
        inner_adapt_bn: whether the inner steps adapt the batch-norm parameters too (False:
            they stay at their meta-learned values within a task, as in the original code).
        inner_loss_scale: ``"official"`` (N times the mean support cross-entropy) or
            ``"mean"``, see above.
        outer_loss_scale: ``"official"`` (the meta-gradient of the original code's meta-loss,
            N*Q/K times the mean's) or ``"mean"``, see above.
        grad_clip_value: clip each meta-gradient coordinate to ``[-value, value]`` before the
            outer step (the original code clips at 10 on Mini-ImageNet); None: no clipping.
            The Trainer's ``gradient_clip_val``, when set, replaces it.

    The defaults of these four options are the behaviour from before they existed, so the stored
    config of an older run rebuilds the method it trained; ``conf/model/maml.yaml`` sets the
    original code's values (``inner_adapt_bn: false``, both scales ``official``).
    """

    needs_fixed_n_way = True
    bn_modes = BatchNormModes(train=("transductive",), eval=("transductive",))

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
        train_bn: str = "transductive",
        eval_bn: str = "transductive",
        task_batching: str = "loop",
        inner_adapt_bn: bool = True,
        inner_loss_scale: str = "mean",
        outer_loss_scale: str = "mean",
        grad_clip_value: float | None = None,
    ) -> None:
        super().__init__(optimizer, scheduler)
        check_choice("model.task_batching", task_batching, TASK_BATCHING)
        eval_inner_steps = resolve_inner_steps(inner_steps, eval_inner_steps)
        self.bn_modes.check(type(self).__name__, train_bn, eval_bn)
        check_choice("model.inner_loss_scale", inner_loss_scale, LOSS_SCALES)
        check_choice("model.outer_loss_scale", outer_loss_scale, LOSS_SCALES)
        if grad_clip_value is not None and not grad_clip_value > 0:
            raise ValueError(f"model.grad_clip_value must be > 0 or null (no clipping), got {grad_clip_value}.")
        self.learner = learner
        self.inner_steps = inner_steps
        self.eval_inner_steps = eval_inner_steps
        self.inner_lr = inner_lr
        self.first_order = first_order
        self.learn_inner_lr = learn_inner_lr
        self.train_bn = train_bn
        self.eval_bn = eval_bn
        self.task_batching = task_batching
        self.inner_adapt_bn = inner_adapt_bn
        self.inner_loss_scale = inner_loss_scale
        self.inner_loss = INNER_LOSSES[inner_loss_scale]
        self.outer_loss_scale = outer_loss_scale
        self.grad_clip_value = grad_clip_value
        # parameters the inner steps leave alone (still meta-learned)
        self.frozen_in_inner_loop = frozenset() if inner_adapt_bn else frozenset(batch_norm_parameter_names(learner))
        # ParameterDict keys cannot contain dots: "features.0.weight" -> "features__0__weight"
        self.inner_lrs = (
            nn.ParameterDict(
                {
                    lr_key(name): nn.Parameter(torch.full_like(p.detach(), inner_lr))
                    for name, p in learner.named_parameters()
                    if name not in self.frozen_in_inner_loop
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
        names of the learner's adapted parameters."""
        if self.inner_lrs is None:
            return self.inner_lr
        return {
            name: self.inner_lrs[lr_key(name)]
            for name, _ in self.learner.named_parameters()
            if name not in self.frozen_in_inner_loop
        }

    def adapt(
        self, support_images: Tensor, support_labels: Tensor, steps: int, meta_train: bool
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The learner's weights adapted to one support set, and the buffers to call it with.

        Args:
            support_images: ``[N*K, C, H, W]``; ``support_labels``: ``[N*K]``.
            steps: inner gradient steps.
            meta_train: keep the graph back to ``theta`` (and the step sizes) for the
                meta-gradient; False adapts detached copies.

        Returns:
            ``(weights, buffers)`` for ``torch.func.functional_call`` (call it in batch-statistics
            mode, see :func:`~fewshot.methods.inner_loop.batch_statistics`).
        """
        params, buffers = module_state(self.learner, detach=not meta_train)
        lr = self.step_sizes()
        if not meta_train and isinstance(lr, dict):
            lr = {name: a.detach() for name, a in lr.items()}
        create_graph = meta_train and not self.first_order
        with batch_statistics(self.learner):
            adapted = sgd_adapt(
                self.learner,
                params,
                buffers,
                support_images,
                support_labels,
                steps,
                lr,
                create_graph,
                loss_fn=self.inner_loss,
                frozen=self.frozen_in_inner_loop,
            )
        return adapted, buffers

    def adapt_and_predict(
        self, support_images: Tensor, support_labels: Tensor, query_images: Tensor, steps: int, meta_train: bool
    ) -> Tensor:
        """Adapt the learner to one task (:meth:`adapt`) and score its queries ``[N*Q, C, H, W]``.

        Returns:
            Query logits ``[N*Q, N]``.
        """
        adapted, buffers = self.adapt(support_images, support_labels, steps, meta_train)
        with batch_statistics(self.learner):
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

        frozen = self.frozen_in_inner_loop

        def one_task(params: dict[str, Tensor], xs: Tensor, ys: Tensor, xq: Tensor) -> Tensor:
            fixed = {name: p for name, p in params.items() if name in frozen}
            adapted = {name: p for name, p in params.items() if name not in frozen}

            def support_loss(weights: dict[str, Tensor]) -> Tensor:
                return functional_loss(self.learner, {**fixed, **weights}, buffers, xs, ys, self.inner_loss)

            for _ in range(steps):
                grads = torch.func.grad(support_loss)(adapted)
                if not keep_second_order:
                    grads = {name: g.detach() for name, g in grads.items()}
                adapted = {name: p - learning_rate(lr, name) * grads[name] for name, p in adapted.items()}
            return functional_logits(self.learner, {**fixed, **adapted}, buffers, xq)

        with elementary_batch_norm(self.learner), torch.enable_grad():
            batched = torch.func.vmap(one_task, in_dims=(None, 0, 0, 0))  # weights shared by all tasks
            return batched(params, support_images, support_labels, query_images)

    def forward(self, episode: Episode) -> Tensor:
        """Adapt to each task of the meta-batch (a plain loop, or ``vmap``, see
        ``task_batching``) and return the query logits ``[B, N*Q, N]``; in training they carry
        the graph for the meta-gradient."""
        self.check_head_matches_way(getattr(self.learner, "out_features", None), episode.n_way)
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
        self.check_head_matches_way(logits.shape[-1], episode.n_way)
        return logits if meta_train else logits.detach()

    def episode_loss(self, episode: Episode) -> tuple[Tensor, Tensor]:
        """Mean query cross-entropy of the meta-batch (its value) and the query logits; with
        ``outer_loss_scale="official"`` its gradient is that of the original code's meta-loss,
        ``N*Q/K`` times the mean's."""
        loss, logits = super().episode_loss(episode)
        if self.outer_loss_scale == "official":
            n_shot = episode.support_labels.shape[1] / episode.n_way
            loss = with_scaled_gradient(loss, episode.query_labels.shape[1] / n_shot)
        return loss, logits

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip each meta-gradient coordinate to ``[-grad_clip_value, grad_clip_value]`` (the original
        code on Mini-ImageNet), unless the Trainer's own ``gradient_clip_val`` is set."""
        if gradient_clip_val is not None:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
        elif self.grad_clip_value is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.grad_clip_value, gradient_clip_algorithm="value")


def lr_key(name: str) -> str:
    """The ``ParameterDict`` key of a parameter's Meta-SGD step size."""
    return name.replace(".", "__")


__all__ = ["MAML", "official_cross_entropy", "with_scaled_gradient"]
