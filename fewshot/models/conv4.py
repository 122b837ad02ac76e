"""The standard Conv-4 backbone of few-shot learning."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.methods.choices import check_choice
from fewshot.models.init import initialise

# "valid": a 2x2 max-pool drops an odd last row/column (floor: 84 -> 42 -> 21 -> 10 -> 5);
# "same": it keeps it, pooling it alone (ceil, TensorFlow's padding='same': 84 -> 42 -> 21 -> 11 -> 6)
POOL_PADDINGS = ("valid", "same")
# how a block halves the map: a 2x2 max-pool after a stride-1 conv, or the conv itself with stride 2
# and TensorFlow's padding='SAME' (cbfinn/maml's and openai/supervised-reptile's Omniglot networks)
DOWNSAMPLES = ("maxpool", "stride")
# how the last map becomes the feature vector: flattened (C * H * W), or its spatial mean (C), as
# cbfinn/maml's Omniglot network (tf.reduce_mean over the map)
READOUTS = ("flatten", "mean")


class ShiftOnlyBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d with a learned shift (beta) and no scale (gamma): ``x_hat + beta``, as
    ``tf.contrib.layers.batch_norm`` with its default ``scale=False`` (cbfinn/maml). It has no
    ``weight`` parameter; running statistics as ``nn.BatchNorm2d``."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.register_parameter("weight", None)

    def reset_parameters(self) -> None:
        """Reset the running statistics and zero the shift."""
        self.reset_running_stats()
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, input: Tensor) -> Tensor:
        """``[B, C, H, W]`` -> normalised and shifted, the same shape."""
        # nn.BatchNorm2d's forward, except that the shift is added after F.batch_norm: given a bias
        # without a weight, its double backward (second-order MAML) fails in torch 2.14 ("Expected a
        # proper Tensor but got None").
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch = self.training or (self.running_mean is None and self.running_var is None)
        tracked = not self.training or self.track_running_stats
        mean, var = (self.running_mean, self.running_var) if tracked else (None, None)
        normalised = F.batch_norm(input, mean, var, None, None, use_batch, factor, self.eps)
        return normalised + self.bias.view(1, -1, 1, 1)


def batch_norm(channels: int, momentum: float, eps: float, scale: bool = True) -> nn.BatchNorm2d:
    """BatchNorm2d with a learned weight (gamma) and bias (beta), or only the bias when not ``scale``."""
    if scale:
        return nn.BatchNorm2d(channels, eps=eps, momentum=momentum)
    return ShiftOnlyBatchNorm2d(channels, eps=eps, momentum=momentum)


def block_side(side: int, downsample: str = "maxpool", pool_padding: str = "valid") -> int:
    """Height (= width) after one conv block: ceil(side / 2) for a stride-2 'SAME' conv or a 'same'
    max-pool, floor for a 'valid' one."""
    return math.ceil(side / 2) if downsample == "stride" or pool_padding == "same" else side // 2


def tf_same_padding(size: int, kernel: int = 3, stride: int = 2) -> tuple[int, int]:
    """TensorFlow's padding='SAME' on one side of length ``size``: (before, after), the odd pixel after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameStridedConv2d(nn.Conv2d):
    """A stride-2 convolution padded as TensorFlow's ``padding='SAME'``: the output side is
    ceil(side / 2), and an odd total padding puts its extra row (column) at the bottom (right),
    e.g. 28 -> 14 pads 0 above and 1 below, where PyTorch's ``padding=1`` would pad 1 and 1."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=2, padding=0)

    def forward(self, input: Tensor) -> Tensor:
        """``[B, C, H, W]`` -> ``[B, out_channels, ceil(H / 2), ceil(W / 2)]``."""
        top, bottom = tf_same_padding(input.shape[-2], self.kernel_size[0], self.stride[0])
        left, right = tf_same_padding(input.shape[-1], self.kernel_size[1], self.stride[1])
        return super().forward(F.pad(input, (left, right, top, bottom)))


def conv_block(
    in_channels: int,
    out_channels: int,
    bn_momentum: float,
    bn_eps: float,
    dropout: float = 0.0,
    bn_scale: bool = True,
    pool_padding: str = "valid",
    downsample: str = "maxpool",
) -> nn.Sequential:
    """3x3 conv (padding 1) -> BatchNorm -> ReLU -> 2x2 max-pool (-> Dropout when ``dropout > 0``);
    with ``downsample="stride"``, 3x3 stride-2 'SAME' conv -> BatchNorm -> ReLU (-> Dropout)."""
    if downsample == "stride":
        conv, pool = SameStridedConv2d(in_channels, out_channels), []
    else:
        conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        pool = [nn.MaxPool2d(2, ceil_mode=pool_padding == "same")]
    layers = [conv, batch_norm(out_channels, bn_momentum, bn_eps, scale=bn_scale), nn.ReLU(inplace=False), *pool]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class Conv4(nn.Module):
    """Four conv blocks, flattened (or averaged over the map), with an optional linear head.

    As an embedding (``n_classes=None``) it is the ProtoNet / Matching Network encoder; with
    ``n_classes`` it is the Meta-LSTM / MAML learner. It has no hidden state and no in-place
    parameter tricks, so ``torch.func.functional_call(model, (params, buffers), x)`` works.
    ``bn_momentum`` follows PyTorch's convention (weight of the new batch statistic); ``dropout > 0``
    ends every block with Dropout (after the max-pool, as the Matching Network embedding of Ravi &
    Larochelle's code). ``pool_padding``, ``downsample`` and ``readout`` are described with their
    choices above; ``init`` and ``head_init`` are drawn here, at construction (:mod:`fewshot.models.init`).

    Input ``[B, C, H, W]``; output ``[B, out_features]`` (embedding) or ``[B, n_classes]``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        hidden: int = 64,
        image_size: int = 28,
        n_classes: int | None = None,
        bn_momentum: float = 0.1,
        bn_eps: float = 1e-5,
        dropout: float = 0.0,
        bn_scale: bool = True,
        pool_padding: str = "valid",
        downsample: str = "maxpool",
        readout: str = "flatten",
        init: str = "torch",
        head_init: str | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"Conv4 dropout must be in [0, 1), got {dropout}.")
        check_choice("Conv4 pool_padding", pool_padding, POOL_PADDINGS)
        check_choice("Conv4 downsample", downsample, DOWNSAMPLES)
        check_choice("Conv4 readout", readout, READOUTS)
        if downsample == "stride" and pool_padding != "valid":
            raise ValueError(
                f"Conv4 pool_padding={pool_padding!r} has no max-pool to act on with downsample='stride'; "
                "leave pool_padding at 'valid'."
            )
        block = {
            "bn_momentum": bn_momentum,
            "bn_eps": bn_eps,
            "dropout": dropout,
            "bn_scale": bn_scale,
            "pool_padding": pool_padding,
            "downsample": downsample,
        }
        self.features = nn.Sequential(
            conv_block(in_channels, hidden, **block),
            conv_block(hidden, hidden, **block),
            conv_block(hidden, hidden, **block),
            conv_block(hidden, hidden, **block),
        )
        side = image_size
        for _ in range(4):
            side = block_side(side, downsample, pool_padding)
        if side < 1:
            raise ValueError(f"Conv4 needs images of at least 16x16, got {image_size}x{image_size}.")
        self.readout = readout
        self.embedding_dim = hidden if readout == "mean" else hidden * side * side
        self.head = nn.Linear(self.embedding_dim, n_classes) if n_classes else None
        self.out_features = n_classes or self.embedding_dim
        initialise(self, init, self.head, head_init)

    def embed(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` -> features ``[B, embedding_dim]``: the last map flattened or averaged."""
        maps = self.features(x)
        return maps.mean((2, 3)) if self.readout == "mean" else maps.flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        """Embedding, or logits when the model has a head."""
        z = self.embed(x)
        return self.head(z) if self.head is not None else z


def layer_names(model: nn.Module) -> dict[str, str]:
    """Map each parameter name of a Conv4 to a readable layer name (conv1..4, bn1..4, head)."""
    names = {}
    for name, _ in model.named_parameters():
        parts = name.split(".")
        if parts[0] == "features":
            block = int(parts[1]) + 1
            kind = "conv" if parts[2] == "0" else "bn"
            names[name] = f"{kind}{block}"
        else:
            names[name] = parts[0]
    return names


__all__ = [
    "DOWNSAMPLES",
    "POOL_PADDINGS",
    "READOUTS",
    "SameStridedConv2d",
    "ShiftOnlyBatchNorm2d",
    "Conv4",
    "batch_norm",
    "block_side",
    "conv_block",
    "layer_names",
    "tf_same_padding",
]
