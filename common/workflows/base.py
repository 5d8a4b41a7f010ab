"""Base classes of the sampling and evaluation runs the bundle configs start (``run()``).

As MONAI's ``Workflow`` owns the loop and ``SupervisedTrainer`` supplies the iteration, :class:`SamplingWorkflow`
owns what every inference run does and a bundle's workflow overrides the steps that differ::

    run()
      check_outputs_free()                 every file of the run is absent, else FileExistsError before sampling
      for item in items():                 a conditioning input (one mask), or the whole run when unconditional
        for each batch of batch_size:      noise seeded by batch_seed(*item.seed_key, first sample)
          sample_item(item, first, count)  -> one sample per index, in output units
          write_item(item, index, sample)  -> its datalist entry (absolute paths), files written atomically
          preview_of(item, index, sample)  for the first preview_samples samples
      finish()                             dataset.json (an earlier run's entries kept), preview PNG, timing

:class:`EvaluationWorkflow` likewise owns loading limits and reporting: ``evaluate()`` computes the metrics, ``run()``
writes them as ``report.json`` / ``report.md``. :func:`read_sample_datalist` is how evaluations find the samples an
inference run wrote.
"""

from __future__ import annotations

import logging
import os
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from monai.networks.schedulers import DDPMScheduler, Scheduler
from torch import nn

from common.data.datalist import EntryCheck, read_datalist, save_datalist
from common.metrics.report import write_report

__all__ = [
    "check_sampler_steps",
    "select_sampler",
    "SamplingItem",
    "SamplingWorkflow",
    "read_sample_datalist",
    "EvaluationWorkflow",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")


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


# ------------------------------------------------------------------------------------------------------------ sampling


@dataclass(frozen=True)
class SamplingItem:
    """What ``num_samples`` samples are drawn for.

    Args:
        name: how logs name it (e.g. ``"mask 'head_000'"``); None for an unconditional run.
        seed_key: numbers that go into every batch seed before the sample index (e.g. the mask's position), so a
            sample's noise does not depend on what was sampled before it.
        data: what ``sample_item`` / ``write_item`` need (e.g. the preprocessed mask).
    """

    name: str | None = None
    seed_key: tuple[int, ...] = ()
    data: Any = None


class SamplingWorkflow:
    """Draw ``num_samples`` samples per item and write them as a dataset (see the module docstring).

    Subclasses implement :meth:`sample_item`, :meth:`write_item`, :meth:`preview_of`, :meth:`write_preview`,
    :meth:`sample_files` and :meth:`datalist_fields`, and override :meth:`items` for conditioned sampling,
    :meth:`modules` for the networks to put in eval mode and :meth:`datalist_entry` for extra datalist keys.

    Args:
        scheduler: sampling scheduler.
        num_inference_steps: steps given to ``scheduler.set_timesteps``.
        output_dir: output folder.
        num_samples: samples per item.
        seed: base seed; a given seed (and ``batch_size``) gives the same samples.
        device: torch device.
        batch_size: samples generated together.
        preview_samples: samples shown in the PNG montage.
        verbose: progress bar per batch.

    Raises:
        ValueError: ``num_samples`` or ``batch_size`` below 1; MONAI's ``DDPMScheduler`` with fewer steps than it
            was trained with.
    """

    unit = "sample"
    """What one sample is called in logs ("triple", "volume")."""

    seed_in_file_names = True
    """Whether the file names of a sample hold the seed, i.e. another seed writes other files."""

    def __init__(
        self,
        scheduler: Scheduler,
        num_inference_steps: int,
        output_dir: str | os.PathLike,
        num_samples: int = 1,
        seed: int = 0,
        device: str | torch.device = "cpu",
        batch_size: int = 1,
        preview_samples: int = 4,
        verbose: bool = True,
    ) -> None:
        if num_samples < 1 or batch_size < 1:
            raise ValueError(f"num_samples and batch_size must be >= 1, got {num_samples} and {batch_size}")
        check_sampler_steps(scheduler, num_inference_steps)
        self.scheduler = scheduler
        self.num_inference_steps = int(num_inference_steps)
        self.output_dir = Path(output_dir)
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.preview_samples = int(preview_samples)
        self.verbose = verbose

    # ----------------------------------------------------------------------------------------- steps to override

    def modules(self) -> Sequence[nn.Module]:
        """The networks the run uses; put in eval mode before sampling."""
        return ()

    def items(self) -> Iterable[SamplingItem]:
        """What samples are drawn for, in order; by default one unconditional item."""
        return (SamplingItem(),)

    def sample_item(self, item: SamplingItem, first: int, count: int) -> Sequence[Any]:
        """Samples ``first .. first + count - 1`` of ``item``, one entry per sample, in output units."""
        raise NotImplementedError

    def write_item(self, item: SamplingItem, index: int, sample: Any) -> dict[str, Any]:
        """Write sample ``index`` of ``item``; return its datalist entry (``case_id`` and absolute paths)."""
        raise NotImplementedError

    def preview_of(self, item: SamplingItem, index: int, sample: Any) -> Any:
        """What :meth:`write_preview` needs of one sample."""
        raise NotImplementedError

    def write_preview(self, previews: list[Any]) -> None:
        """Write the PNG montage of the first samples to :meth:`preview_path`."""
        raise NotImplementedError

    def sample_files(self) -> Iterable[Path]:
        """Every sample file the run will write (the preview and ``dataset.json`` aside)."""
        raise NotImplementedError

    def datalist_fields(self) -> dict[str, Any]:
        """Top-level fields of the written ``dataset.json`` (``name``, ``description``, ``modality``, ...)."""
        raise NotImplementedError

    def datalist_entry(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        """The ``dataset.json`` entry of a written sample: its ``image`` and ``label`` paths relative to the folder."""
        out = dict(entry)
        for key in ("image", "label"):
            if isinstance(out.get(key), str):
                out[key] = self.relative(out[key])
            elif isinstance(out.get(key), list):
                out[key] = [self.relative(p) for p in out[key]]
        return out

    # ----------------------------------------------------------------------------------------------- shared steps

    def relative(self, path: str | os.PathLike) -> str:
        """``path`` relative to ``output_dir`` (datalists travel with their folder)."""
        return os.path.relpath(path, self.output_dir)

    def batch_seed(self, *key: int) -> int:
        """Seed of one batch: the same (seed, key) always gets the same noise, whatever ran before it."""
        return zlib.crc32("/".join(str(part) for part in (self.seed, *key)).encode())

    def generator(self, *key: int) -> torch.Generator:
        """A generator on ``device`` seeded with :meth:`batch_seed` of ``key``."""
        return torch.Generator(device=self.device).manual_seed(self.batch_seed(*key))

    def preview_path(self) -> Path:
        return self.output_dir / f"preview_seed{self.seed}.png"

    def planned_outputs(self) -> list[Path]:
        return [self.preview_path(), *self.sample_files()]

    def check_outputs_free(self) -> None:
        """Raise ``FileExistsError`` if any file of this run exists: samples are never overwritten."""
        existing = [str(p) for p in self.planned_outputs() if p.exists()]
        if existing:
            hint = (
                "choose another --output_dir or --seed"
                if self.seed_in_file_names
                else "choose another --output_dir (sample file names do not depend on the seed)"
            )
            raise FileExistsError(
                f"output_dir '{self.output_dir}' already holds {len(existing)} of this run's files (e.g. "
                f"{existing[:3]}); samples are never overwritten: {hint}"
            )

    def run(self) -> list[dict[str, Any]]:
        """Sample and write everything; returns the written datalist entries (absolute paths)."""
        self.check_outputs_free()
        for module in self.modules():
            module.eval()
        written: list[dict[str, Any]] = []
        previews: list[Any] = []
        start = time.perf_counter()
        for item in self.items():
            for first in range(0, self.num_samples, self.batch_size):
                count = min(self.batch_size, self.num_samples - first)
                for offset, sample in enumerate(self.sample_item(item, first, count)):
                    written.append(self.write_item(item, first + offset, sample))
                    if len(previews) < self.preview_samples:
                        previews.append(self.preview_of(item, first + offset, sample))
                prefix = f"{item.name}: " if item.name else ""
                logger.info(f"{prefix}{first + count}/{self.num_samples} {self.unit}(s) written to '{self.output_dir}'")
        self.finish(written, previews, time.perf_counter() - start)
        return written

    def finish(self, written: list[dict[str, Any]], previews: list[Any], seconds: float) -> None:
        """Write ``dataset.json`` (keeping an earlier run's other entries) and the preview; log the timing."""
        datalist = save_datalist(
            self.output_dir / "dataset.json",
            [self.datalist_entry(entry) for entry in written],
            merge=True,
            **self.datalist_fields(),
        )
        self.write_preview(previews)
        logger.info(
            f"wrote {len(written)} {self.unit}(s) in {seconds:.1f} s to '{self.output_dir}' "
            f"(datalist '{datalist}', preview '{self.preview_path()}')"
        )


# ---------------------------------------------------------------------------------------------------------- evaluation


def read_sample_datalist(
    sample_dir: str | os.PathLike,
    keys: Sequence[str],
    check_files: bool = False,
    check_entry: EntryCheck | None = None,
    config_key: str = "sample_dir",
) -> list[dict[str, Any]]:
    """The ``dataset.json`` entries of an inference ``output_dir`` (paths resolved, see ``read_datalist``).

    Raises:
        FileNotFoundError: the folder has no ``dataset.json`` (the config key is named); with ``check_files``, a
            listed file does not exist.
        ValueError: a malformed datalist (see :func:`common.data.datalist.read_datalist`).
    """
    root = Path(sample_dir)
    datalist = root / "dataset.json"
    if not datalist.is_file():
        raise FileNotFoundError(
            f"config key '{config_key}': '{root}' has no dataset.json; point it at the output_dir of an inference "
            "run (inference.yaml writes one)"
        )
    return read_datalist(datalist, keys, check_files=check_files, check_entry=check_entry)


class EvaluationWorkflow:
    """Compute metrics of generated samples and write them as ``report.json`` / ``report.md`` in ``output_dir``.

    Subclasses implement :meth:`evaluate` (load, compare, return the results) and may override :meth:`summary`.

    Args:
        output_dir: where the report goes.
        title: heading of the markdown report.
        max_samples: evaluate at most this many samples (None or 0: all).
    """

    def __init__(self, output_dir: str | os.PathLike, title: str, max_samples: int | None = None) -> None:
        if max_samples is not None and int(max_samples) < 0:
            raise ValueError(f"config key 'max_samples': expected a count >= 0 or None, got {max_samples}")
        self.output_dir = Path(output_dir)
        self.title = title
        self.max_samples = None if max_samples is None else int(max_samples)

    def limit(self, samples: Sequence[T]) -> list[T]:
        """The first ``max_samples`` of ``samples`` (all of them without a limit)."""
        return list(samples[: self.max_samples] if self.max_samples else samples)

    def evaluate(self) -> dict[str, Any]:
        """The metrics (a non-empty dict of numbers, strings, lists and nested dicts)."""
        raise NotImplementedError

    def summary(self, results: Mapping[str, Any]) -> str:
        """One line for the log, before the report's paths."""
        return self.title

    def run(self) -> dict[str, Any]:
        """Evaluate, then write the report (nothing is written when the evaluation fails)."""
        results = self.evaluate()
        json_path, md_path = write_report(results, self.output_dir, title=self.title)
        logger.info(f"{self.summary(results)}: '{json_path}', '{md_path}'")
        return results
