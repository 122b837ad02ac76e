"""The learned optimizer of Andrychowicz et al. (2016): a coordinate-wise LSTM that outputs updates.

Every coordinate of the optimizee runs its own copy of one small network (shared weights, a
hidden and cell state per coordinate), on its own preprocessed gradient:

    x_t = preprocess(grad_t)                        (log-magnitude and sign, p = 10)
    h^1_t = LSTM_1(x_t, h^1_{t-1}),  h^2_t = LSTM_2(h^1_t, h^2_{t-1})
    g_t = output_scale * (w . h^2_t + b),           theta_{t+1} = theta_t + g_t

The LSTM layers are this project's fused coordinate-wise LSTM (``fewshot.nn.lstm``), the
same layer 1 as the Meta-Learner LSTM's, and the preprocessing is its ``preprocess``. The
gradient enters as a constant (the paper drops second derivatives), so the meta-gradient flows
through the states and the updates only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fewshot.learned_optimizer.errors import check_positive
from fewshot.nn.lstm import CoordinateLSTM, State
from fewshot.nn.preprocess import preprocess

LSTMState = tuple[State, ...] | None
"""One ``(h, c)`` per layer, each ``[H, B * P]``; ``None`` for the zero initial state."""


class LSTMOptimizer(nn.Module):
    """Coordinate-wise ``layers``-deep LSTM optimizer (Andrychowicz et al., NeurIPS 2016)."""

    def __init__(
        self,
        hidden_size: int = 20,
        layers: int = 2,
        output_scale: float = 0.1,
        preprocess_p: float = 10.0,
        init_range: float = 0.1,
    ) -> None:
        super().__init__()
        check_positive("optimizer_net.hidden_size", hidden_size, "the paper uses 20")
        check_positive("optimizer_net.layers", layers, "the paper uses 2")
        check_positive("optimizer_net.output_scale", output_scale, "the paper uses 0.1")
        check_positive("optimizer_net.preprocess_p", preprocess_p, "the paper uses 10")
        self.output_scale, self.preprocess_p = float(output_scale), float(preprocess_p)
        self.lstm = nn.ModuleList(
            CoordinateLSTM(
                input_size=2 if k == 0 else hidden_size,
                hidden_size=hidden_size,
                init_range=init_range,
                differentiable_input=k > 0,
            )
            for k in range(layers)
        )
        self.head = nn.Linear(hidden_size, 1)

    def forward(self, grad: Tensor, state: LSTMState) -> tuple[Tensor, tuple[State, ...]]:
        """One update of every coordinate from the constant gradients ``grad [B, P]``:
        ``(update [B, P], state)``, with ``theta_{t+1} = theta_t + update``.
        """
        x = preprocess(grad.detach().reshape(-1), self.preprocess_p, dim=0)  # [2, B * P]
        previous = state if state is not None else (None,) * len(self.lstm)
        new_state = []
        for layer, layer_state in zip(self.lstm, previous, strict=True):
            h, c = layer(x, layer_state)
            new_state.append((h, c))
            x = h
        out = torch.addmm(self.head.bias.unsqueeze(1), self.head.weight, x)  # [1, B * P]
        return (self.output_scale * out).view_as(grad), tuple(new_state)


__all__ = ["LSTMOptimizer", "LSTMState"]
