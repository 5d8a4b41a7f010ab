"""The time-to-quality benchmark's pieces: FLOPs of a training step, the summary of runs."""

from __future__ import annotations

import torch
from torch import nn

from tools.bench.semantic_mri_ttq import _summary, training_step_flops


class OneConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, 5, kernel_size=3, padding=1, bias=False)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_training_step_flops_counts_forward_and_weight_gradient_of_a_convolution() -> None:
    net = OneConv()
    forward = 2 * 2 * 3 * 5 * 27 * 4**3  # 2 FLOPs per multiply-add: batch, in, out, kernel, output voxels
    # the input needs no gradient: the backward pass is the weight gradient alone, as many FLOPs as the forward
    assert training_step_flops(net, batch_size=2, in_channels=3, spatial=[4, 4, 4]) == 2 * forward
    assert net.conv.weight.grad is None  # counted on a copy: the network itself is untouched


def test_summary_takes_the_median_over_the_seeds_that_reached_the_target() -> None:
    runs = [
        {"reached": {"train_s": 60.0, "flops": 10.0, "epoch": 20}},
        {"reached": {"train_s": 180.0, "flops": 30.0, "epoch": 30}},
        {"reached": None},
    ]
    summary = _summary(runs)
    assert summary == {"seeds": 3, "reached": 2, "train_min_median": 2.0, "flops_median": 20.0, "epochs": [20, 30]}
    assert _summary([{"reached": None}])["train_min_median"] is None
