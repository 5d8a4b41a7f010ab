"""Tests of common.workflows.latent_sampling's intensity mapping and LatentEvaluation's HU figures on both scales."""

from __future__ import annotations

import pytest
import torch

from common.workflows.latent_evaluation import LatentEvaluation
from common.workflows.latent_sampling import checked_range, intensity_to_hu


@pytest.mark.parametrize(
    ("values", "intensity_range", "expected"),
    [
        ([-1.0, -0.5, 0.0, 1.0, 3.0], (-1.0, 1.0), [-1000.0, -500.0, 0.0, 1000.0, 1000.0]),
        ([-1000.0, -250.0, 0.0, 999.0, 2000.0], (-1000.0, 1000.0), [-1000.0, -250.0, 0.0, 999.0, 1000.0]),
        ([0.0, 0.25, 1.0], (0.0, 1.0), [-1000.0, -500.0, 1000.0]),
    ],
    ids=["unit range", "HU (only clipped)", "[0, 1]"],
)
def test_intensity_to_hu(values: list, intensity_range: tuple, expected: list) -> None:
    hu = intensity_to_hu(torch.tensor(values), (-1000.0, 1000.0), intensity_range)
    torch.testing.assert_close(hu, torch.tensor(expected))


@pytest.mark.parametrize(
    ("window", "intensity_range", "message"),
    [
        ((1000.0, -1000.0), (-1.0, 1.0), r"HU window must be \(low, high\) with high > low, got \(1000.0, -1000.0\)"),
        ((-1000.0, 1000.0), (1.0, 1.0), r"intensity_range must be \(low, high\) with high > low, got \(1.0, 1.0\)"),
        ((-1000.0, 1000.0), (-1.0, 0.0, 1.0), r"intensity_range must be \(low, high\) with high > low"),
    ],
    ids=["window", "empty range", "three values"],
)
def test_intensity_to_hu_rejects_bad_ranges(window: tuple, intensity_range: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        intensity_to_hu(torch.zeros(1), window, intensity_range)


def test_checked_range() -> None:
    assert checked_range([-1, 1], "x") == (-1.0, 1.0)


class ShiftAutoencoder(torch.nn.Module):
    """Reconstructs its input plus ``shift`` (model units), with a unit posterior."""

    def __init__(self, shift: float) -> None:
        super().__init__()
        self.shift = shift

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        latent = torch.zeros(x.shape[0], 1, 2, 2, 2)
        return x + self.shift, latent, torch.ones_like(latent)


@pytest.mark.parametrize(("intensity_range", "shift"), [((-1.0, 1.0), 0.01), ((-1000.0, 1000.0), 10.0)])
def test_reconstruction_figures_are_in_hu_on_either_scale(tmp_path, intensity_range: tuple, shift: float) -> None:
    """A reconstruction 10 HU off reads as L1 10 HU and MSE 100 HU^2 whatever the model's intensity scale."""
    low, high = intensity_range
    volume = torch.linspace(low * 0.5, high * 0.5, 8**3).reshape(1, 8, 8, 8)
    evaluation = LatentEvaluation(
        ShiftAutoencoder(shift),
        held_out=[{"image": volume}],
        real=[{"image": volume}],
        samples=None,
        output_dir=str(tmp_path),
        intensity_range=intensity_range,
    )
    figures = evaluation.reconstruction_metrics()
    assert figures["l1_hu"] == pytest.approx(10.0, rel=1e-3)
    assert figures["mse_hu2"] == pytest.approx(100.0, rel=1e-3)
    assert figures["psnr_db"] == pytest.approx(10 * torch.log10(torch.tensor(2000.0**2 / 100.0)).item(), rel=1e-3)
