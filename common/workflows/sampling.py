"""Inference workflow of mask-conditioned bundles: N samples per label mask, written as a ready-to-use dataset.

For every mask, ``num_samples`` images are generated and written with the mask's (resampled) affine, each next to a
copy of its label map, in the same folder layout the bundles read (``imagesTr/`` + ``labelsTr/`` or BraTS), with a
``dataset.json`` datalist and a PNG montage of central slices. The output folder is therefore a synthetic training
set a segmentation model can use directly. Existing files are never overwritten: the run stops before any sampling
if one of its outputs exists.
"""

from __future__ import annotations

import glob
import logging
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.networks.schedulers import DDPMScheduler, Scheduler

from common.data.layouts import NIFTI_SUFFIXES, case_id_from_path, case_paths, find_cases, write_datalist
from common.inferers.conditional import ConditionalDiffusionInferer
from common.io import atomic_write_nifti, save_preview_png

__all__ = ["list_masks", "select_sampler", "check_sampler_steps", "MaskConditionedSampling"]

logger = logging.getLogger(__name__)


def list_masks(masks: str | Sequence[str], config_key: str = "masks") -> list[dict[str, str]]:
    """Resolve a folder, a glob pattern or a list of files into ``[{"case_id", "label"}]`` sorted by case id.

    Raises:
        FileNotFoundError: a named folder or file does not exist.
        ValueError: nothing matched.
    """
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


def select_sampler(samplers: Mapping[str, Scheduler], name: str, config_key: str = "sampler") -> Scheduler:
    """``samplers[name]`` with an error listing the choices."""
    if name not in samplers:
        raise ValueError(f"config key '{config_key}': unknown sampler '{name}'; choose one of {sorted(samplers)}")
    return samplers[name]


def check_sampler_steps(scheduler: Scheduler, num_inference_steps: int) -> None:
    """Refuse MONAI's ``DDPMScheduler`` with fewer steps than it was trained with (its respaced step is wrong)."""
    if isinstance(scheduler, DDPMScheduler) and num_inference_steps != scheduler.num_train_timesteps:
        raise ValueError(
            f"num_inference_steps={num_inference_steps}: MONAI's DDPMScheduler is only correct with all "
            f"{scheduler.num_train_timesteps} steps; use sampler 'respaced_ddpm', 'ddim' or 'dpm_solver' for fewer"
        )


def _seed_for(seed: int, mask_index: int, first_sample: int) -> int:
    """A per-batch seed: the same (seed, mask, sample) always gets the same noise, whatever ran before it."""
    return zlib.crc32(f"{seed}/{mask_index}/{first_sample}".encode())


class MaskConditionedSampling:
    """Generate ``num_samples`` images per label mask and write them with their masks.

    Args:
        network: trained denoiser (eval mode, weights loaded).
        inferer: :class:`common.inferers.conditional.ConditionalDiffusionInferer` (concat conditioning).
        scheduler: sampling scheduler (paper: ``DDPMScheduler`` with all T steps; fast: DDIM / DPM-Solver).
        num_inference_steps: steps given to ``scheduler.set_timesteps``.
        masks: ``[{"case_id", "label", ...}]`` (see :func:`list_masks`).
        preprocessing: transform turning a mask entry into ``{"label": (1, *spatial), "condition": (C_c, *spatial)}``
            on the model grid (MetaTensors, so the affine follows resampling).
        output_dir: output folder.
        modalities: image modality names (channel order), used for file names.
        num_samples: samples per mask.
        seed: base seed; a given seed (and ``batch_size``) gives the same samples.
        device: torch device.
        batch_size: samples generated together.
        layout: ``images_labels`` or ``brats`` (how files are named, see :func:`common.data.layouts.case_paths`).
        output_label_map: label values changed in the written label maps, a mapping or ``[[from, to], ...]`` pairs
            (BraTS ``[[3, 4], [4, 0]]`` goes back to the BraTS convention); unlisted values are kept.
        outline_labels: labels outlined in the PNG preview (e.g. the tumour).
        preview_samples: how many samples the PNG montage shows.
        verbose: progress bar per sample batch.
    """

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
        num_samples: int = 1,
        seed: int = 0,
        device: str | torch.device = "cpu",
        batch_size: int = 1,
        layout: str = "images_labels",
        output_label_map: Mapping[int, int] | Sequence[Sequence[int]] | None = None,
        outline_labels: Sequence[int] = (),
        preview_samples: int = 4,
        verbose: bool = True,
    ) -> None:
        if num_samples < 1 or batch_size < 1:
            raise ValueError(f"num_samples and batch_size must be >= 1, got {num_samples} and {batch_size}")
        check_sampler_steps(scheduler, num_inference_steps)
        self.network = network
        self.inferer = inferer
        self.scheduler = scheduler
        self.num_inference_steps = num_inference_steps
        self.masks = masks
        self.preprocessing = preprocessing
        self.output_dir = Path(output_dir)
        self.modalities = list(modalities)
        self.num_samples = num_samples
        self.seed = seed
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.layout = layout
        self.output_label_map = {int(k): int(v) for k, v in dict(output_label_map or {}).items()}
        self.outline_labels = [int(v) for v in outline_labels]
        self.preview_samples = preview_samples
        self.verbose = verbose

    def sample_id(self, mask_id: str, index: int) -> str:
        return f"{mask_id}_sample{index:03d}"

    def preview_path(self) -> Path:
        return self.output_dir / f"preview_seed{self.seed}.png"

    def planned_outputs(self) -> list[Path]:
        paths = [self.preview_path()]
        for mask in self.masks:
            for k in range(self.num_samples):
                images, label = case_paths(
                    self.output_dir, self.sample_id(mask["case_id"], k), self.modalities, self.layout
                )
                paths += [*images, label]
        return paths

    def check_outputs_free(self) -> None:
        existing = [str(p) for p in self.planned_outputs() if p.exists()]
        if existing:
            raise FileExistsError(
                f"output_dir '{self.output_dir}' already holds {len(existing)} of this run's files (e.g. {existing[:3]}); "
                "samples are never overwritten: choose another --output_dir (sample file names do not depend on the seed)"
            )

    def generate(self, condition: torch.Tensor, count: int, generator_seed: int) -> torch.Tensor:
        """``count`` samples (count, C, *spatial) for one (C_c, *spatial) condition."""
        generator = torch.Generator(device=self.device).manual_seed(generator_seed)
        cond = condition[None].to(self.device).expand(count, *condition.shape).contiguous()
        shape = (count, len(self.modalities), *condition.shape[1:])
        noise = torch.randn(shape, generator=generator, device=self.device)
        self.scheduler.set_timesteps(self.num_inference_steps, device=self.device)
        return self.inferer.sample(
            noise, self.network, self.scheduler, conditioning=cond, generator=generator, verbose=self.verbose
        )

    def relabel(self, label: torch.Tensor) -> torch.Tensor:
        out = label.clone()
        for source, target in self.output_label_map.items():
            out[label == source] = target
        return out

    def run(self) -> list[dict[str, Any]]:
        """Sample every mask; returns the written cases (``case_id``, ``image`` paths, ``label`` path)."""
        self.check_outputs_free()
        self.network.eval()
        written: list[dict[str, Any]] = []
        preview: list[tuple[str, torch.Tensor]] = []
        preview_masks: list[torch.Tensor] = []
        start = time.perf_counter()
        for mask_index, mask in enumerate(self.masks):
            data = self.preprocessing(dict(mask))
            label, condition = data["label"], data["condition"]
            affine = label.affine if hasattr(label, "affine") else None
            out_label = self.relabel(torch.as_tensor(label)).to(torch.uint8)
            for first in range(0, self.num_samples, self.batch_size):
                count = min(self.batch_size, self.num_samples - first)
                samples = self.generate(torch.as_tensor(condition), count, _seed_for(self.seed, mask_index, first))
                for offset, sample in enumerate(samples.cpu()):
                    case_id = self.sample_id(mask["case_id"], first + offset)
                    images, label_path = case_paths(self.output_dir, case_id, self.modalities, self.layout)
                    for channel, path in enumerate(images):
                        atomic_write_nifti(sample[channel : channel + 1], affine, path, dtype="float32")
                    atomic_write_nifti(out_label, affine, label_path, dtype="uint8")
                    written.append({"case_id": case_id, "image": [str(p) for p in images], "label": str(label_path)})
                    if len(preview) < self.preview_samples * len(self.modalities):
                        outline = torch.isin(torch.as_tensor(label)[0], torch.tensor(self.outline_labels))
                        for channel, modality in enumerate(self.modalities):
                            preview.append((f"{case_id} {modality}", sample[channel]))
                            preview_masks.append(outline)
            logger.info(f"mask '{mask['case_id']}': {self.num_samples} sample(s) written to '{self.output_dir}'")
        self.finish(written, preview, preview_masks, time.perf_counter() - start)
        return written

    def finish(self, written: list, preview: list, preview_masks: list, seconds: float) -> None:
        datalist = self.output_dir / "dataset.json"
        previous = []
        if datalist.is_file():
            previous = find_cases(self.output_dir, self.modalities, layout="datalist")
        known = {c["case_id"] for c in written}
        write_datalist(
            self.output_dir,
            [c for c in previous if c["case_id"] not in known] + written,
            name="synthetic",
            description="samples of a mask-conditioned diffusion bundle (images in [-1, 1])",
            modality={str(i): m for i, m in enumerate(self.modalities)},
        )
        save_preview_png(self.preview_path(), preview, masks=preview_masks, value_range=(-1.0, 1.0))
        logger.info(
            f"wrote {len(written)} sample(s) in {seconds:.1f} s to '{self.output_dir}' "
            f"(datalist '{datalist}', preview '{self.preview_path()}')"
        )
