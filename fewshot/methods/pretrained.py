"""The shared base of Ravi & Larochelle's Table-1 baselines: a backbone pre-trained as a plain
classifier over all meta-training classes."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from fewshot.data.classification import LabelledImages
from fewshot.data.datamodule import EpisodicDataModule
from fewshot.data.episode import Episode
from fewshot.methods.base import EpisodicMethod, OptimizerFactory, SchedulerFactory


def inverse_time_lr(lr: float, decay: float, step: int) -> float:
    """Learning rate of SGD step ``step`` (0-based) under Torch7's ``optim.sgd`` decay,
    ``lr / (1 + step * decay)``."""
    return lr / (1.0 + step * decay)


def inverse_time_decay(optimizer: Optimizer, decay: float) -> LambdaLR:
    """The ``learningRateDecay`` of Torch7's ``optim.sgd`` as a scheduler stepped once per
    optimiser step (see ``PretrainedClassifier.configure_optimizers``)."""
    return LambdaLR(optimizer, lambda step: inverse_time_lr(1.0, decay, step))


class PretrainedClassifier(EpisodicMethod):
    """A backbone trained with cross-entropy to classify every meta-training class; subclasses
    say how its embedding is used on a meta-test episode.

    Ravi & Larochelle, "Optimization as a Model for Few-Shot Learning", ICLR 2017, Table 1
    baselines. Training reads image batches (``train_batches = "images"``, drawn as
    ``data.image_sampling`` says), not episodes; validation and test stay episodic. The
    optimiser and its schedule are configured (``conf/pretrained_baseline.yaml``): the final
    official config (twitter/meta-learning-lstm, ``config/baselines/``) pre-trains with Adam, lr
    1e-3, batches of 64, for 30,000 iterations. The repository's first 2016 commit used
    ``optim.sgd`` with ``learningRate = 0.01``, ``learningRateDecay = 1e-4`` and batches of 32;
    in Torch7's ``optim.sgd`` that decay is a learning-rate decay, ``lr_t = lr / (1 + t *
    decay)`` per step, not weight decay (that option is ``weightDecay``), available here as the
    ``inverse_time_decay`` scheduler, stepped per optimiser step.

    Args:
        backbone: embedding network ``[B, C, H, W] -> [B, D]`` with an ``out_features`` (D)
            attribute, e.g. ``Conv4(n_classes=None)``.
        optimizer: optimiser partial, bound to the parameters in ``configure_optimizers``.
        n_train_classes: number of meta-training classes (the head's outputs); None takes it from
            the data (``fill_from_data``), or builds no head when the method is used without data.
        scheduler: optional scheduler partial, stepped after every optimiser step.
    """

    train_batches = "images"

    def __init__(
        self,
        backbone: nn.Module,
        optimizer: OptimizerFactory,
        n_train_classes: int | None = None,
        scheduler: SchedulerFactory | None = None,
    ) -> None:
        if type(self) is PretrainedClassifier:
            raise TypeError(
                "PretrainedClassifier is the shared base of the pre-trained baselines; "
                "use model=baseline_nn or model=baseline_finetune."
            )
        super().__init__(optimizer, scheduler)
        self.backbone = backbone
        self.n_train_classes = n_train_classes
        self.classifier = nn.Linear(backbone.out_features, n_train_classes) if n_train_classes else None

    def fill_from_data(self, datamodule: EpisodicDataModule) -> dict[str, Any]:
        """Build the classifier head over the data's meta-training classes when ``n_train_classes`` is null."""
        if self.n_train_classes is not None:
            return {}
        self.n_train_classes = datamodule.n_train_classes
        self.classifier = nn.Linear(self.backbone.out_features, self.n_train_classes)
        return {"n_train_classes": self.n_train_classes}

    def forward(self, episode: Episode) -> Tensor:
        """Adapt to each support set and return query logits ``[B, N*Q, N]``."""
        raise NotImplementedError

    def training_step(self, batch: LabelledImages, batch_idx: int) -> Tensor:
        """One SGD step of plain classification over all meta-training classes."""
        if self.classifier is None:
            raise ValueError(
                f"{type(self).__name__} needs n_train_classes to train its classifier head; "
                "train through fewshot.run.training.train, which sets it from the data (fill_from_data)."
            )
        logits = self.classifier(self.backbone(batch.images))
        loss = F.cross_entropy(logits, batch.labels)
        self.check_finite(loss)
        acc = (logits.detach().argmax(-1) == batch.labels).float().mean()
        batch_size = batch.labels.numel()
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log("train/acc", acc, prog_bar=True, batch_size=batch_size)
        return loss

    def configure_optimizers(self):
        """As the base class, with the scheduler stepped per optimiser step, as Torch7's
        ``optim.sgd`` decays its learning rate."""
        config = super().configure_optimizers()
        if isinstance(config, dict):
            config["lr_scheduler"]["interval"] = "step"
        return config


__all__ = ["PretrainedClassifier", "inverse_time_decay", "inverse_time_lr"]
