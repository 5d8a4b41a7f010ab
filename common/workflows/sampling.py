"""Inference workflow of mask-conditioned bundles: N samples per label mask, written as a ready-to-use dataset.

For every mask, ``num_samples`` images are generated and written with the mask's (resampled) affine, each next to a
copy of its label map, in the same folder layout the bundles read (``imagesTr/`` + ``labelsTr/`` or BraTS), with a
``dataset.json`` datalist and a PNG montage of central slices. The output folder is therefore a synthetic training
set a segmentation model can use directly. Existing files are never overwritten: the run stops before any sampling
if one of its outputs exists.
"""

from __future__ import annotations

import glob
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.networks.schedulers import Scheduler

from common.checkpoint import file_hash
from common.data.layouts import NIFTI_SUFFIXES, case_id_from_path, case_paths
from common.data.prepare import ensure_phantom_dataset
from common.inferers.conditional import ConditionalDiffusionInferer
from common.inferers.per_sample import per_sample_noise
from common.io import atomic_write_nifti, read_nifti, save_preview_png
from common.workflows.base import SamplingItem, SamplingWorkflow

__all__ = ["list_masks", "MaskConditionedSampling"]


def list_masks(
    masks: str | Sequence[str], config_key: str = "masks", phantom: Mapping[str, Any] | None = None
) -> list[dict[str, str]]:
    """Resolve a folder, a glob pattern or a list of files into ``[{"case_id", "label"}]`` sorted by case id.

    ``phantom``: the bundle's phantom settings (``{"dir", "kind", ...}``, as training has them). When ``masks`` is the
    ``labelsTr`` folder of ``phantom["dir"]`` and that dataset is missing or empty (e.g. an unpacked release), the
    phantom dataset training would write is written first (:func:`common.data.ensure_phantom_dataset`).

    Raises:
        FileNotFoundError: a named folder or file does not exist.
        ValueError: nothing matched.
    """
    is_default = phantom is not None and isinstance(masks, (str, Path))
    if is_default and Path(masks) == Path(str(phantom["dir"])) / "labelsTr":
        ensure_phantom_dataset(phantom["dir"], dict(phantom))
    if isinstance(masks, (str, Path)):
        path = Path(masks)
        if path.is_dir():
            files = [p for p in sorted(path.iterdir()) if p.name.endswith(NIFTI_SUFFIXES)]
        elif any(ch in str(masks) for ch in "*?["):
            files = [Path(p) for p in sorted(glob.glob(str(masks)))]
        elif path.is_file():
            files = [path]
        else:
            raise FileNotFoundError(f"config key '{config_key}': '{masks}' is neither a folder, a file nor a glob")
    else:
        files = [Path(p) for p in masks]
        absent = [str(p) for p in files if not p.is_file()]
        if absent:
            raise FileNotFoundError(f"config key '{config_key}': mask files do not exist: {absent[:10]}")
    if not files:
        raise ValueError(f"config key '{config_key}': no NIfTI mask files found in '{masks}'")
    return sorted(({"case_id": case_id_from_path(p), "label": str(p)} for p in files), key=lambda c: c["case_id"])


class MaskConditionedSampling(SamplingWorkflow):
    """Generate ``num_samples`` images per label mask and write them with their masks.

    Args:
        network: trained denoiser (eval mode, weights loaded).
        inferer: :class:`common.inferers.conditional.ConditionalDiffusionInferer` (concat conditioning).
        scheduler: sampling scheduler (paper: ``DDPMScheduler`` with all T steps; fast: DDIM / DPM-Solver).
        masks: ``[{"case_id", "label", ...}]`` (see :func:`list_masks`).
        preprocessing: transform turning a mask entry into ``{"label": (1, *spatial), "condition": (C_c, *spatial)}``
            on the model grid (MetaTensors, so the affine follows resampling).
        modalities: image modality names (channel order), used for file names.
        num_samples: samples per mask.
        batch_size: samples generated together.
        layout: ``images_labels`` or ``brats`` (how files are named, see :func:`common.data.layouts.case_paths`).
        output_label_map: label values changed in the written label maps, a mapping or ``[[from, to], ...]`` pairs
            (BraTS ``[[3, 4], [4, 0]]`` goes back to the BraTS convention); unlisted values are kept.
        outline_labels: labels outlined in the PNG preview (e.g. the tumour).
        num_inference_steps, output_dir and the keyword options (seed, device, preview_samples, verbose, overwrite,
            run_fields, ...): as for
            :class:`common.workflows.base.SamplingWorkflow`.
    """

    seed_in_file_names = False

    def __init__(
        self,
        network: torch.nn.Module,
        inferer: ConditionalDiffusionInferer,
        scheduler: Scheduler,
        num_inference_steps: int,
        masks: list[dict[str, Any]],
        preprocessing: Callable[[dict], dict],
        output_dir: str,
        modalities: Sequence[str],
        layout: str = "images_labels",
        output_label_map: Mapping[int, int] | Sequence[Sequence[int]] | None = None,
        outline_labels: Sequence[int] = (),
        **options: Any,
    ) -> None:
        super().__init__(scheduler, num_inference_steps, output_dir, **options)
        self.network = network
        self.inferer = inferer
        self.masks = masks
        self.preprocessing = preprocessing
        self.modalities = list(modalities)
        self.layout = layout
        self.output_label_map = {int(k): int(v) for k, v in dict(output_label_map or {}).items()}
        self.outline_labels = [int(v) for v in outline_labels]

    def sample_id(self, mask_id: str, index: int) -> str:
        return f"{mask_id}_sample{index:03d}"

    def sample_paths(self, item: SamplingItem, index: int) -> list[Path]:
        images, label = case_paths(
            self.output_dir, self.sample_id(item.data["case_id"], index), self.modalities, self.layout
        )
        return [*images, label]

    def modules(self) -> Sequence[torch.nn.Module]:
        return (self.network,)

    def items(self) -> list[SamplingItem]:
        """One item per mask (its entry; preprocessed by :meth:`prepare`); its case id goes into the sample seeds."""
        return [SamplingItem(name=f"mask '{m['case_id']}'", seed_key=(m["case_id"],), data=m) for m in self.masks]

    def prepare(self, item: SamplingItem) -> SamplingItem:
        """The mask preprocessed onto the model grid: condition, affine, relabelled label map and preview outline."""
        mask = item.data
        data = self.preprocessing(dict(mask))
        label = data["label"]
        prepared = {
            "case_id": mask["case_id"],
            "condition": torch.as_tensor(data["condition"]),
            "affine": label.affine if hasattr(label, "affine") else None,
            "label": self.relabel(torch.as_tensor(label)).to(torch.uint8),
            "outline": torch.isin(torch.as_tensor(label)[0], torch.tensor(self.outline_labels)),
        }
        return SamplingItem(name=item.name, seed_key=item.seed_key, data=prepared)

    def manifest_fields(self) -> dict[str, Any]:
        """The masks (case id -> sha256 of the file), the modalities and how the files are laid out."""
        return {
            "masks": {m["case_id"]: file_hash(m["label"]) for m in self.masks},
            "modalities": self.modalities,
            "layout": self.layout,
            "output_label_map": sorted(self.output_label_map.items()),
        }

    def generate(self, condition: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """One sample (B, C, *spatial) per generator for one (C_c, *spatial) condition."""
        count = len(generators)
        cond = condition[None].to(self.device).expand(count, *condition.shape).contiguous()
        noise = per_sample_noise((count, len(self.modalities), *condition.shape[1:]), generators, self.device)
        self.scheduler.set_timesteps(self.num_inference_steps, device=self.device)
        return self.inferer.sample(
            noise, self.network, self.scheduler, conditioning=cond, generator=generators, verbose=self.verbose
        )

    def sample_item(self, item: SamplingItem, first: int, count: int) -> Sequence[torch.Tensor]:
        return self.generate(item.data["condition"], self.sample_generators(item, first, count)).cpu()

    def relabel(self, label: torch.Tensor) -> torch.Tensor:
        out = label.clone()
        for source, target in self.output_label_map.items():
            out[label == source] = target
        return out

    def write_item(self, item: SamplingItem, index: int, sample: torch.Tensor) -> None:
        """One image file per modality and the (relabelled) mask, all with the mask's affine."""
        *images, label_path = self.sample_paths(item, index)
        for channel, path in enumerate(images):
            atomic_write_nifti(
                sample[channel : channel + 1], item.data["affine"], path, dtype="float32", overwrite=self.overwrite
            )
        atomic_write_nifti(item.data["label"], item.data["affine"], label_path, dtype="uint8", overwrite=self.overwrite)

    def entry_of(self, item: SamplingItem, index: int) -> dict[str, Any]:
        *images, label_path = self.sample_paths(item, index)
        case_id = self.sample_id(item.data["case_id"], index)
        return {"case_id": case_id, "image": [str(p) for p in images], "label": str(label_path)}

    def read_sample(self, item: SamplingItem, index: int) -> torch.Tensor:
        """(C, *spatial) float32 images of one written sample."""
        return torch.stack([read_nifti(p) for p in self.sample_paths(item, index)[:-1]])

    def preview_of(self, item: SamplingItem, index: int, sample: torch.Tensor) -> list[tuple[str, torch.Tensor, Any]]:
        """A montage row per modality, the outline labels drawn over it."""
        case_id = self.sample_id(item.data["case_id"], index)
        return [
            (f"{case_id} {modality}", sample[channel], item.data["outline"])
            for channel, modality in enumerate(self.modalities)
        ]

    def write_preview(self, previews: list[list[tuple[str, torch.Tensor, Any]]]) -> None:
        rows = [row for preview in previews for row in preview]
        save_preview_png(
            self.preview_path(),
            [(title, image) for title, image, _ in rows],
            masks=[outline for _, _, outline in rows],
            value_range=(-1.0, 1.0),
            overwrite=True,
        )

    def datalist_fields(self) -> dict[str, Any]:
        return {
            "name": "synthetic",
            "description": "samples of a mask-conditioned diffusion bundle (images in [-1, 1])",
            "modality": {str(i): m for i, m in enumerate(self.modalities)},
        }
