"""The sequence model: stacked variant layers (an LSTM variant, the GRU or the simple RNN) and a linear output head.

Shapes: inputs (T, B, I) -> outputs (T, B, O), one output vector per step; the task decides
which steps are scored and how (softmax, Bernoulli, regression).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from odyssey.cells import VariantSpec, variant_layer

if TYPE_CHECKING:  # pragma: no cover
    from odyssey.config import TrialConfig
    from odyssey.tasks import Task

__all__ = ["SequenceModel", "build_model"]


class SequenceModel(nn.Module):
    """``num_layers`` variant layers (each bidirectional if asked) and a linear head.

    Args:
        spec: the variant (its ``family`` picks the layer: LSTM, GRU or RNN).
        input_size: I.
        output_size: O, the task's output units.
        hidden_size: H, blocks per direction per layer.
        num_layers: stacked layers; layer k > 0 reads layer k-1's outputs (H * directions).
        bidirectional: the paper uses bidirectional networks for speech and handwriting.
        init_std: every weight (head included) starts N(0, init_std^2), the paper's protocol.
    """

    def __init__(
        self,
        spec: VariantSpec,
        input_size: int,
        output_size: int,
        *,
        hidden_size: int,
        num_layers: int = 1,
        bidirectional: bool = False,
        init_std: float = 0.1,
        fused: bool = True,
    ):
        super().__init__()
        directions = 2 if bidirectional else 1
        self.layers = nn.ModuleList(
            variant_layer(
                spec,
                input_size if k == 0 else hidden_size * directions,
                hidden_size,
                bidirectional,
                fused=fused,
                init_std=init_std,
            )
            for k in range(num_layers)
        )
        self.head = nn.Linear(hidden_size * directions, output_size)
        nn.init.normal_(self.head.weight, 0.0, init_std)
        nn.init.normal_(self.head.bias, 0.0, init_std)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            x, _ = layer(x, lengths)  # (T, B, H * directions)
        return self.head(x)  # (T, B, O)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_model(cfg: "TrialConfig", task: "Task") -> SequenceModel:
    """The model of a trial: the config's variant and shape, the task's input and output sizes."""
    m = cfg.model
    return SequenceModel(
        cfg.variant,
        task.input_size,
        task.output_size,
        hidden_size=m.hidden_size,
        num_layers=m.num_layers,
        bidirectional=m.bidirectional,
        init_std=m.init_std,
    )
