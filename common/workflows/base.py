"""Base classes of the sampling and evaluation runs the bundle configs start (``run()``).

As MONAI's ``Workflow`` owns the loop and ``SupervisedTrainer`` supplies the iteration, :class:`SamplingWorkflow`
owns what every inference run does and a bundle's workflow overrides the steps that differ::

    run()
      check_outputs_free()                 another run's manifest (or files without one) -> FileExistsError
      units()                              items() x batches of batch_size: the same layout for any process count
      pending units, sharded by rank       units with a sample not yet on disk; rank r takes units r, r + W, ...
      rank 0: run_manifest.json            what defines the samples (seed, sampler, steps, inputs, weight hashes)
      for each unit of this rank:          prepare(item) once per item
        sample_item(item, first, count)    noise from one generator per sample: (seed, item key, index)
        write_item(item, index, sample)    only samples not yet on disk (all with overwrite), files written atomically
      barrier; rank 0: finish()            dataset.json and preview of every sample on disk (a resumed run included)

A sample is a pure function of (seed, item key, sample index): the same files whatever the process count or the
shard layout (see :mod:`common.workflows.sharding`), and whatever the batch size up to the float rounding of a
batched forward (per-sample noise: :mod:`common.inferers.per_sample`).

:class:`EvaluationWorkflow` likewise owns loading limits and reporting: ``evaluate()`` computes the metrics, ``run()``
writes them as ``report.json`` / ``report.md``. :func:`read_sample_datalist` is how evaluations find the samples an
inference run wrote.
"""

from __future__ import annotations

import logging
import os
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from monai.networks.schedulers import Scheduler
from torch import nn

from common.data.datalist import EntryCheck, read_datalist, save_datalist
from common.io import read_nifti
from common.metrics.report import write_report
from common.schedulers import check_sampler_steps
from common.workflows.sharding import (
    MANIFEST_NAME,
    barrier,
    manifest_difference,
    rank_and_world_size,
    read_manifest,
    shard,
    write_manifest,
)

__all__ = [
    "check_sampler_steps",
    "select_sampler",
    "SamplingItem",
    "SamplingUnit",
    "SamplingWorkflow",
    "UnconditionalSampling",
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


# ------------------------------------------------------------------------------------------------------------ sampling


@dataclass(frozen=True)
class SamplingItem:
    """What ``num_samples`` samples are drawn for.

    Args:
        name: how logs name it (e.g. ``"mask 'head_000'"``); None for an unconditional run.
        seed_key: what goes into every sample seed before the sample index (e.g. the mask's case id), so a sample's
            noise depends only on (seed, key, index), not on what was sampled before it or next to it.
        data: what :meth:`SamplingWorkflow.prepare` needs (cheap: e.g. the mask's file), or after ``prepare`` what
            ``sample_item`` / ``write_item`` need (e.g. the preprocessed mask).
    """

    name: str | None = None
    seed_key: tuple[int | str, ...] = ()
    data: Any = None


@dataclass(frozen=True)
class SamplingUnit:
    """One batch of work: samples ``first .. first + count - 1`` of item number ``item`` (the unit of sharding)."""

    item: int
    first: int
    count: int


class SamplingWorkflow:
    """Draw ``num_samples`` samples per item and write them as a dataset (see the module docstring).

    Subclasses implement :meth:`sample_item`, :meth:`write_item`, :meth:`sample_paths`, :meth:`entry_of`,
    :meth:`read_sample`, :meth:`preview_of`, :meth:`write_preview` and :meth:`datalist_fields`, and override
    :meth:`items` / :meth:`prepare` for conditioned sampling, :meth:`modules` for the networks to put in eval mode,
    :meth:`manifest_fields` for what else defines their samples and :meth:`datalist_entry` for extra datalist keys.

    Args:
        scheduler: sampling scheduler.
        num_inference_steps: steps given to ``scheduler.set_timesteps``.
        output_dir: output folder.
        num_samples: samples per item.
        seed: base seed; sample ``i`` of an item is a pure function of (seed, item key, i).
        device: torch device.
        batch_size: samples generated together (config key ``sample_batch_size``).
        preview_samples: samples shown in the PNG montage.
        verbose: progress bar per batch.
        overwrite: sample everything again and replace existing files (and the run manifest); by default a folder
            with the same run manifest resumes and one with another manifest (or without one) is an error.
        run_fields: what else defines the samples, recorded in the run manifest (bundle name and version, weight
            file hashes, sampler name; see :func:`common.workflows.sharding.bundle_run_fields`).

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
        overwrite: bool = False,
        run_fields: Mapping[str, Any] | None = None,
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
        self.overwrite = bool(overwrite)
        self.run_fields = dict(run_fields or {})

    # ----------------------------------------------------------------------------------------- steps to override

    def modules(self) -> Sequence[nn.Module]:
        """The networks the run uses; put in eval mode before sampling."""
        return ()

    def items(self) -> Sequence[SamplingItem]:
        """What samples are drawn for, in order (cheap: loaded by :meth:`prepare`); by default one unconditional
        item."""
        return (SamplingItem(),)

    def prepare(self, item: SamplingItem) -> SamplingItem:
        """``item`` with what sampling and writing need loaded (e.g. the preprocessed mask); by default ``item``."""
        return item

    def sample_item(self, item: SamplingItem, first: int, count: int) -> Sequence[Any]:
        """Samples ``first .. first + count - 1`` of the prepared ``item``, one entry per sample, in output units.

        Their noise comes from :meth:`sample_generators` (one generator per sample)."""
        raise NotImplementedError

    def write_item(self, item: SamplingItem, index: int, sample: Any) -> None:
        """Write sample ``index`` of the prepared ``item`` atomically (to :meth:`sample_paths`)."""
        raise NotImplementedError

    def sample_paths(self, item: SamplingItem, index: int) -> list[Path]:
        """Every file of sample ``index`` of ``item`` (prepared or not)."""
        raise NotImplementedError

    def entry_of(self, item: SamplingItem, index: int) -> dict[str, Any]:
        """The datalist entry of sample ``index`` of ``item`` (``case_id`` and absolute paths)."""
        raise NotImplementedError

    def read_sample(self, item: SamplingItem, index: int) -> Any:
        """Sample ``index`` of the prepared ``item`` read back from its files, as :meth:`sample_item` returns it."""
        raise NotImplementedError

    def preview_of(self, item: SamplingItem, index: int, sample: Any) -> Any:
        """What :meth:`write_preview` needs of one sample."""
        raise NotImplementedError

    def write_preview(self, previews: list[Any]) -> None:
        """Write the PNG montage of the first samples to :meth:`preview_path`."""
        raise NotImplementedError

    def datalist_fields(self) -> dict[str, Any]:
        """Top-level fields of the written ``dataset.json`` (``name``, ``description``, ``modality``, ...)."""
        raise NotImplementedError

    def manifest_fields(self) -> dict[str, Any]:
        """What defines this workflow's samples besides the shared fields (e.g. the conditioning masks' hashes)."""
        return {}

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

    def batch_seed(self, *key: int | str) -> int:
        """Seed of one random stream: the same (seed, key) always gets the same noise, whatever ran before it."""
        return zlib.crc32("/".join(str(part) for part in (self.seed, *key)).encode())

    def generator(self, *key: int | str) -> torch.Generator:
        """A generator on ``device`` seeded with :meth:`batch_seed` of ``key``."""
        return torch.Generator(device=self.device).manual_seed(self.batch_seed(*key))

    def sample_generators(self, item: SamplingItem, first: int, count: int) -> list[torch.Generator]:
        """One generator per sample ``first .. first + count - 1`` of ``item``, seeded from (seed, item key, index):
        a sample's noise does not depend on the batch or the process that draws it."""
        return [self.generator(*item.seed_key, index) for index in range(first, first + count)]

    def preview_path(self) -> Path:
        return self.output_dir / f"preview_seed{self.seed}.png"

    def sample_files(self) -> list[Path]:
        """Every sample file the run will write (the preview, ``dataset.json`` and the manifest aside)."""
        return [p for item in self.items() for i in range(self.num_samples) for p in self.sample_paths(item, i)]

    def planned_outputs(self) -> list[Path]:
        return [self.preview_path(), *self.sample_files()]

    def is_complete(self, item: SamplingItem, index: int) -> bool:
        """Whether every file of sample ``index`` of ``item`` exists (files are written atomically: then whole)."""
        return all(p.is_file() for p in self.sample_paths(item, index))

    def manifest(self) -> dict[str, Any]:
        """The run manifest: everything that defines the samples (see :mod:`common.workflows.sharding`)."""
        return {
            "workflow": type(self).__name__,
            "seed": self.seed,
            "num_samples": self.num_samples,
            "scheduler": type(self.scheduler).__name__,
            "num_inference_steps": self.num_inference_steps,
            "items": [list(item.seed_key) for item in self.items()],
            **self.run_fields,
            **self.manifest_fields(),
        }

    def check_outputs_free(self) -> None:
        """Refuse an output folder holding files of another run (``FileExistsError``), before any sampling.

        A folder with this run's manifest resumes; with another manifest the first differing field is named;
        without a manifest any existing file of this run is refused. ``overwrite`` allows all of these.
        """
        if self.overwrite:
            return
        found = read_manifest(self.output_dir)
        if found is not None:
            difference = manifest_difference(self.manifest(), found)
            if difference:
                field, expected, held = difference
                raise FileExistsError(
                    f"output_dir '{self.output_dir}' holds samples of another configuration: {MANIFEST_NAME} field "
                    f"'{field}' differs (this run: {expected!r}, found: {held!r}); samples are never overwritten: "
                    "choose another --output_dir, or pass --overwrite true to replace them"
                )
            return
        existing = [str(p) for p in self.planned_outputs() if p.exists()]
        if existing:
            hint = (
                "choose another --output_dir or --seed"
                if self.seed_in_file_names
                else "choose another --output_dir (sample file names do not depend on the seed)"
            )
            raise FileExistsError(
                f"output_dir '{self.output_dir}' already holds {len(existing)} of this run's files (e.g. "
                f"{existing[:3]}) and no {MANIFEST_NAME}; samples are never overwritten: {hint}, or pass "
                "--overwrite true"
            )

    def units(self) -> list[SamplingUnit]:
        """Every batch of the run, in order; the layout depends on ``batch_size`` only, never on the process count."""
        return [
            SamplingUnit(item, first, min(self.batch_size, self.num_samples - first))
            for item in range(len(self.items()))
            for first in range(0, self.num_samples, self.batch_size)
        ]

    def pending(self, unit: SamplingUnit) -> list[int]:
        """The sample indices of ``unit`` still to write (all of them with ``overwrite``)."""
        item = self.items()[unit.item]
        indices = range(unit.first, unit.first + unit.count)
        return list(indices) if self.overwrite else [i for i in indices if not self.is_complete(item, i)]

    def run(self) -> list[dict[str, Any]]:
        """Sample and write this process's share of the pending samples; rank 0 then writes the datalist and the
        preview of everything on disk. Returns the datalist entries (absolute paths) of the run's written samples."""
        rank, world = rank_and_world_size()
        self.check_outputs_free()
        todo = [unit for unit in self.units() if self.pending(unit)]
        done_before = self.num_samples * len(self.items()) - sum(len(self.pending(u)) for u in todo)
        barrier()  # every rank has listed the pending work before anything is written
        if rank == 0:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            write_manifest(self.output_dir, self.manifest())
        mine = shard(todo, rank, world)
        if done_before:
            logger.info(f"resuming: {done_before} {self.unit}(s) of '{self.output_dir}' already written, skipped")
        logger.info(f"rank {rank}/{world}: {len(mine)} of {len(todo)} pending batch(es)")
        for module in self.modules():
            module.eval()
        start = time.perf_counter()
        self.sample_units(mine, rank, world, done_before, start)
        barrier()  # every shard is on disk
        entries = self.entries_on_disk()
        if rank == 0:
            self.finish(entries, time.perf_counter() - start)
        return entries

    def sample_units(
        self, units: Sequence[SamplingUnit], rank: int, world: int, done_before: int, start: float
    ) -> None:
        """Sample and write ``units``; log this rank's progress, and on rank 0 the overall count and an ETA."""
        total = self.num_samples * len(self.items())
        prepared: tuple[int, SamplingItem] | None = None
        for number, unit in enumerate(units, 1):
            if prepared is None or prepared[0] != unit.item:
                prepared = (unit.item, self.prepare(self.items()[unit.item]))
            item = prepared[1]
            missing = set(self.pending(unit))
            for offset, sample in enumerate(self.sample_item(item, unit.first, unit.count)):
                if unit.first + offset in missing:
                    self.write_item(item, unit.first + offset, sample)
            prefix = f"{item.name}: " if item.name else ""
            logger.info(
                f"rank {rank}/{world}: {prefix}{unit.first + unit.count}/{self.num_samples} {self.unit}(s) written; "
                f"batch {number}/{len(units)}"
            )
            if rank == 0:
                self.log_overall(total, done_before, start)

    def log_overall(self, total: int, done_before: int, start: float) -> None:
        """Overall progress of all ranks (counted on disk) and the time left at the rate of this run so far."""
        done = sum(self.is_complete(item, i) for item in self.items() for i in range(self.num_samples))
        rate = (done - done_before) / max(time.perf_counter() - start, 1e-9)
        eta = f"{(total - done) / rate:.0f} s" if rate > 0 else "unknown"
        logger.info(f"overall: {done}/{total} {self.unit}(s) on disk, ETA {eta}")

    def entries_on_disk(self) -> list[dict[str, Any]]:
        """Datalist entries (absolute paths) of every sample of this run whose files are all on disk, in order."""
        return [
            self.entry_of(item, i)
            for item in self.items()
            for i in range(self.num_samples)
            if self.is_complete(item, i)
        ]

    def previews_on_disk(self) -> list[Any]:
        """Previews of the first ``preview_samples`` samples on disk, read back from their files."""
        previews: list[Any] = []
        for item in self.items():
            indices = [i for i in range(self.num_samples) if self.is_complete(item, i)]
            indices = indices[: self.preview_samples - len(previews)]
            if indices:
                prepared = self.prepare(item)
                previews += [self.preview_of(prepared, i, self.read_sample(prepared, i)) for i in indices]
            if len(previews) >= self.preview_samples:
                break
        return previews

    def finish(self, entries: list[dict[str, Any]], seconds: float) -> None:
        """Write ``dataset.json`` of ``entries`` and the preview of the samples on disk; log the timing."""
        datalist = save_datalist(
            self.output_dir / "dataset.json",
            [self.datalist_entry(entry) for entry in entries],
            **self.datalist_fields(),
        )
        self.write_preview(self.previews_on_disk())
        logger.info(
            f"{len(entries)} {self.unit}(s) in '{self.output_dir}' after {seconds:.2f} s "
            f"(datalist '{datalist}', preview '{self.preview_path()}')"
        )


# ---------------------------------------------------------------------------------------------------------- evaluation


class UnconditionalSampling(SamplingWorkflow):
    """A :class:`SamplingWorkflow` of unconditioned single-image samples: sample ``index`` is the case
    ``synthetic_seed<seed>_<index>`` with one image file at :meth:`image_path`, previewed as it is.

    Subclasses implement :meth:`image_path` and the drawing and writing (:meth:`sample_item`, :meth:`write_item`,
    :meth:`write_preview`, :meth:`datalist_fields`).
    """

    def case_id(self, index: int) -> str:
        return f"synthetic_seed{self.seed}_{index:04d}"

    def image_path(self, index: int) -> Path:
        raise NotImplementedError

    def sample_paths(self, item: SamplingItem, index: int) -> list[Path]:
        return [self.image_path(index)]

    def entry_of(self, item: SamplingItem, index: int) -> dict[str, Any]:
        return {"case_id": self.case_id(index), "image": str(self.image_path(index))}

    def read_sample(self, item: SamplingItem, index: int) -> torch.Tensor:
        """A written image, (1, *spatial)."""
        return read_nifti(self.image_path(index))[None]

    def preview_of(self, item: SamplingItem, index: int, sample: torch.Tensor) -> tuple[str, torch.Tensor]:
        return self.case_id(index), sample


def read_sample_datalist(
    sample_dir: str | os.PathLike,
    keys: Sequence[str],
    check_files: bool = False,
    check_entry: EntryCheck | None = None,
    config_key: str = "sample_dir",
    path_keys: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """The ``dataset.json`` entries of an inference ``output_dir`` (paths resolved, see ``read_datalist``; ``path_keys``
    as there).

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
    return read_datalist(datalist, keys, check_files=check_files, check_entry=check_entry, path_keys=path_keys)


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
