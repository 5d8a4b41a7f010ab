"""Tests of tools/bench/harness.py: the bare-loop clock and the markdown table."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import DiffusionModelUNet

from tools.bench.harness import loop_intervals, markdown_table
from tools.bench.semantic_mri import _bare_loop_intervals, bench_semantic_mri_clipping


def test_loop_intervals_counts_steps_across_epochs() -> None:
    seen = []
    intervals = loop_intervals([1, 2, 3], seen.append, iterations=7)
    assert seen == [1, 2, 3, 1, 2, 3, 1]
    assert len(intervals) == 7 - 3  # the first iteration of each of the 3 epochs is not clocked
    assert all(i >= 0 for i in intervals)


def test_semantic_mri_bare_loop_trains_the_network() -> None:
    torch.manual_seed(0)
    network = DiffusionModelUNet(
        spatial_dims=3,
        in_channels=3,
        out_channels=1,
        channels=(8, 8),
        attention_levels=(False, False),
        num_res_blocks=1,
        norm_num_groups=8,
    )
    before = [p.detach().clone() for p in network.parameters()]
    loader = [{"image": torch.randn(1, 1, 8, 8, 8), "condition": torch.zeros(1, 2, 8, 8, 8)}] * 2
    intervals = _bare_loop_intervals(network, loader, iterations=3, lr=1e-3, timesteps=10)
    assert len(intervals) == 3 - 2
    assert any(not torch.equal(a, b) for a, b in zip(before, network.parameters()))


def test_markdown_table() -> None:
    table = markdown_table([["a", "1"]], ["name", "value"])
    assert table.splitlines()[0].startswith("| name") and "| a" in table


def test_clipping_bench_names_a_missing_weights_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="ckpt_path '.*missing.pt': no such weights file"):
        bench_semantic_mri_clipping(ckpt_path=str(tmp_path / "missing.pt"), workdir=str(tmp_path))
