"""The convolutional twin of Koch, Zemel & Salakhutdinov's Siamese networks (ICML 2015 workshop)."""

from __future__ import annotations

from torch import Tensor, nn


class KochNet(nn.Module):
    """conv 64@10x10-ReLU-maxpool, 128@7x7-ReLU-maxpool, 128@4x4-ReLU-maxpool, 256@4x4-ReLU,
    flatten, Linear -> ``embedding_dim`` (4096) with a sigmoid: the twin of Koch et al. 2015,
    built for 105x105 Omniglot images (``data.image_size=105``).

    With ``paper_init`` the weights are drawn as in the paper (conv weights N(0, 1e-2), all biases
    N(0.5, 1e-2), the linear layer's weights N(0, 0.2)); otherwise PyTorch's defaults are kept. No
    batch norm, as in the paper. The paper's affine distortions of the training pairs and its
    layer-wise learning rates are not reproduced.
    """

    def __init__(
        self, in_channels: int = 1, image_size: int = 105, embedding_dim: int = 4096, paper_init: bool = True
    ) -> None:
        super().__init__()
        side = image_size  # of the last feature map: three conv -> 2x2 max-pool blocks, then a 4x4 conv
        for kernel in (10, 7, 4):
            side = (side - kernel + 1) // 2
        side = side - 4 + 1
        if side < 1:
            raise ValueError(f"KochNet needs images of at least 65x65 (105x105 in the paper), got {image_size}.")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=10),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, kernel_size=7),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(128, 128, kernel_size=4),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(128, 256, kernel_size=4),
            nn.ReLU(),
        )
        self.fc = nn.Linear(256 * side * side, embedding_dim)
        self.out_features = embedding_dim
        if paper_init:
            self.reset_parameters_as_in_paper()

    def reset_parameters_as_in_paper(self) -> None:
        """Koch et al.'s initialisation (the paper's paragraph 'Weight initialization')."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(module.weight, 0.0, 0.2 if module is self.fc else 1e-2)
                nn.init.normal_(module.bias, 0.5, 1e-2)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` -> ``[B, embedding_dim]`` in (0, 1)."""
        return self.fc(self.features(x).flatten(1)).sigmoid()
