"""Tests of common.workflows.base: choosing a sampler, the sampling loop every bundle's workflow shares (items and
batches, per-batch seeds, eval mode, never overwriting, datalist merging, preview, logs, nothing half-written) on a
toy workflow that writes text files, and the evaluation base (limits, report, nothing written on failure)."""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from monai.networks.schedulers import DDPMScheduler

from common.io import atomic_write_text
from common.schedulers import DDIMClippedScheduler
from common.workflows import base, sharding

T = 10


class ToySampling(base.SamplingWorkflow):
    """Items ``names``; a sample is the first draw of its generator, written as ``samples/<item>_<index>.txt``."""

    seed_in_file_names = False

    def __init__(
        self, output_dir: Path, names: Sequence[str] = ("a", "b"), fail_at: int | None = None, **options: Any
    ) -> None:
        super().__init__(DDIMClippedScheduler(num_train_timesteps=T), 2, output_dir, **options)
        self.names = list(names)
        self.network = torch.nn.Linear(1, 1).train()
        self.fail_at = fail_at
        self.batches: list[tuple[str, int, int]] = []

    def modules(self) -> Sequence[torch.nn.Module]:
        return (self.network,)

    def items(self) -> list[base.SamplingItem]:
        return [base.SamplingItem(name=f"item '{n}'", seed_key=(n,), data=n) for n in self.names]

    def path(self, name: str, index: int) -> Path:
        return self.output_dir / "samples" / f"{name}_{index}.txt"

    def sample_paths(self, item: base.SamplingItem, index: int) -> list[Path]:
        return [self.path(item.data, index)]

    def sample_item(self, item: base.SamplingItem, first: int, count: int) -> list[int]:
        if self.fail_at is not None and len(self.batches) == self.fail_at:
            raise RuntimeError("out of memory")
        self.batches.append((item.data, first, count))
        return [int(torch.randint(2**31, (1,), generator=g)) for g in self.sample_generators(item, first, count)]

    def write_item(self, item: base.SamplingItem, index: int, sample: int) -> None:
        atomic_write_text(self.path(item.data, index), str(sample), overwrite=self.overwrite)

    def entry_of(self, item: base.SamplingItem, index: int) -> dict[str, Any]:
        path = str(self.path(item.data, index))
        return {"case_id": f"{item.data}_{index}", "image": [path], "label": path}

    def read_sample(self, item: base.SamplingItem, index: int) -> int:
        return int(self.path(item.data, index).read_text())

    def preview_of(self, item: base.SamplingItem, index: int, sample: int) -> str:
        return f"{item.data}_{index}"

    def write_preview(self, previews: list[str]) -> None:
        atomic_write_text(self.preview_path(), ",".join(previews), overwrite=True)

    def datalist_fields(self) -> dict[str, Any]:
        return {"name": "toy"}


def draw(seed: int, *key: int | str) -> int:
    """What ToySampling writes for the sample of (seed, *key)."""
    generator = torch.Generator().manual_seed(zlib.crc32("/".join(map(str, (seed, *key))).encode()))
    return int(torch.randint(2**31, (1,), generator=generator))


def contents(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((folder / "samples").glob("*.txt"))}


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# --------------------------------------------------------------------------------------------------- choosing a sampler


def test_select_sampler() -> None:
    samplers = {"ddpm": DDPMScheduler(num_train_timesteps=T), "ddim": DDIMClippedScheduler(num_train_timesteps=T)}
    assert base.select_sampler(samplers, "ddim") is samplers["ddim"]
    with pytest.raises(
        ValueError, match=r"config key 'sampler': unknown sampler 'plms'; choose one of \['ddim', 'ddpm'\]"
    ):
        base.select_sampler(samplers, "plms")


def test_check_sampler_steps_refuses_a_shortened_monai_ddpm() -> None:
    base.check_sampler_steps(DDPMScheduler(num_train_timesteps=T), T)
    base.check_sampler_steps(DDIMClippedScheduler(num_train_timesteps=T), 2)
    with pytest.raises(ValueError, match=f"num_inference_steps=5: MONAI's DDPMScheduler is only correct with all {T}"):
        base.check_sampler_steps(DDPMScheduler(num_train_timesteps=T), 5)


# ------------------------------------------------------------------------------------------------------ sampling loop


@pytest.mark.parametrize("num_samples, batch_size", [(0, 1), (2, 0)])
def test_sampling_rejects_counts(tmp_path: Path, num_samples: int, batch_size: int) -> None:
    with pytest.raises(
        ValueError, match=f"num_samples and batch_size must be >= 1, got {num_samples} and {batch_size}"
    ):
        ToySampling(tmp_path, num_samples=num_samples, batch_size=batch_size)


def test_batch_seed_is_the_crc32_of_seed_and_key(tmp_path: Path) -> None:
    run = ToySampling(tmp_path, seed=5)
    assert run.batch_seed(1, 2) == zlib.crc32(b"5/1/2") == 2832243145
    assert torch.equal(torch.rand(3, generator=run.generator(1, 2)), torch.rand(3, generator=run.generator(1, 2)))


def test_run_loops_over_items_and_batches(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="common")
    run = ToySampling(tmp_path / "out", num_samples=3, batch_size=2, seed=1, preview_samples=3)
    written = run.run()
    assert run.batches == [("a", 0, 2), ("a", 2, 1), ("b", 0, 2), ("b", 2, 1)]
    assert [e["case_id"] for e in written] == ["a_0", "a_1", "a_2", "b_0", "b_1", "b_2"]
    assert contents(tmp_path / "out") == {f"{n}_{i}.txt": str(draw(1, n, i)) for n in "ab" for i in range(3)}
    assert not run.network.training
    assert (tmp_path / "out" / "preview_seed1.png").read_text() == "a_0,a_1,a_2"
    messages = [r.getMessage() for r in caplog.records]
    assert "rank 0/1: item 'b': 3/3 sample(s) written; batch 4/4" in messages
    assert any(m.startswith("overall: 6/6 sample(s) on disk, ETA ") for m in messages)
    assert any(m.startswith(f"6 sample(s) in '{tmp_path / 'out'}' after ") for m in messages)


@pytest.mark.parametrize("batch_size", [1, 2, 4])
def test_a_sample_does_not_depend_on_the_batch_size(tmp_path: Path, batch_size: int) -> None:
    ToySampling(tmp_path / "ref", num_samples=4, batch_size=3).run()
    ToySampling(tmp_path / "out", num_samples=4, batch_size=batch_size).run()
    assert contents(tmp_path / "out") == contents(tmp_path / "ref")


def test_datalist_is_relative_and_the_manifest_records_the_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    ToySampling(out, names=["a"], num_samples=1, run_fields={"bundle": "toy", "version": "0.1"}).run()
    content = json.loads((out / "dataset.json").read_text())
    assert content["name"] == "toy" and content["numTraining"] == 1
    assert content["training"][0] == {"case_id": "a_0", "image": ["samples/a_0.txt"], "label": "samples/a_0.txt"}
    manifest = json.loads((out / "run_manifest.json").read_text())
    assert manifest == {
        "bundle": "toy",
        "version": "0.1",
        "workflow": "ToySampling",
        "seed": 0,
        "num_samples": 1,
        "scheduler": "DDIMClippedScheduler",
        "num_inference_steps": 2,
        "items": [["a"]],
    }


@pytest.mark.parametrize(
    "change, field, expected, found",
    [
        ({"seed": 1}, "seed", 1, 0),
        ({"num_samples": 3}, "num_samples", 3, 2),
        ({"names": ["a"]}, "items", "[['a']]", None),
    ],
)
def test_another_configuration_in_the_folder_is_refused_naming_the_field(
    tmp_path: Path, change: dict, field: str, expected: Any, found: Any
) -> None:
    ToySampling(tmp_path, num_samples=2).run()
    before = contents(tmp_path)
    run = ToySampling(tmp_path, **{"num_samples": 2, **change})
    with pytest.raises(FileExistsError, match=f"run_manifest.json field '{field}' differs") as info:
        run.run()
    assert f"this run: {expected}" in str(info.value) or field == "items"
    assert "--overwrite true" in str(info.value)
    assert run.batches == [] and contents(tmp_path) == before


def test_overwrite_replaces_the_samples_and_the_manifest(tmp_path: Path) -> None:
    ToySampling(tmp_path, num_samples=2).run()
    run = ToySampling(tmp_path, num_samples=2, seed=7, overwrite=True)
    run.run()
    assert contents(tmp_path) == {f"{n}_{i}.txt": str(draw(7, n, i)) for n in "ab" for i in range(2)}
    assert json.loads((tmp_path / "run_manifest.json").read_text())["seed"] == 7


def test_resume_after_a_failure_skips_the_written_samples(tmp_path: Path) -> None:
    ToySampling(tmp_path / "whole", num_samples=3, batch_size=2).run()
    with pytest.raises(RuntimeError, match="out of memory"):
        ToySampling(tmp_path / "out", num_samples=3, batch_size=2, fail_at=2).run()
    assert sorted(contents(tmp_path / "out")) == ["a_0.txt", "a_1.txt", "a_2.txt"]
    (tmp_path / "out" / "samples" / "a_1.txt").unlink()  # a batch half written (as by a kill between two files)
    rerun = ToySampling(tmp_path / "out", num_samples=3, batch_size=2)
    written = rerun.run()
    assert rerun.batches == [("a", 0, 2), ("b", 0, 2), ("b", 2, 1)]
    assert contents(tmp_path / "out") == contents(tmp_path / "whole")
    assert len(written) == 6 and json.loads((tmp_path / "out" / "dataset.json").read_text())["numTraining"] == 6
    again = ToySampling(tmp_path / "out", num_samples=3, batch_size=2)
    again.run()
    assert again.batches == []


@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
def test_shards_are_disjoint_and_complete(world_size: int) -> None:
    units = list(range(7))
    shards = [sharding.shard(units, rank, world_size) for rank in range(world_size)]
    assert sorted(u for s in shards for u in s) == units
    assert all(len(s) in (7 // world_size, 7 // world_size + 1) for s in shards)
    with pytest.raises(ValueError, match="rank must be in"):
        sharding.shard(units, world_size, world_size)


def test_manifest_difference_names_nested_fields() -> None:
    assert sharding.manifest_difference({"a": (1, 2)}, {"a": [1, 2]}) is None
    assert sharding.manifest_difference({"c": {"x": {"sha256": "1"}}}, {"c": {"x": {"sha256": "2"}}}) == (
        "c.x.sha256",
        "1",
        "2",
    )


def test_bundle_run_fields_hash_the_weights(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"weights")
    fields = sharding.bundle_run_fields({"name": "b", "version": "1.0"}, {"ckpt_path": tmp_path / "model.pt"}, x=1)
    digest = "9a129038d9a00aed0cf6a7ea059ca50a813449061ab87848cf1a13eafdf33b2c"  # sha256sum of b"weights"
    assert fields == {
        "bundle": "b",
        "version": "1.0",
        "checkpoints": {"ckpt_path": {"file": "model.pt", "sha256": digest}},
        "x": 1,
    }


def test_existing_outputs_stop_the_run_before_sampling(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "samples" / "b_1.txt", "an earlier sample")
    run = ToySampling(tmp_path, num_samples=2)
    with pytest.raises(FileExistsError) as info:
        run.run()
    message = str(info.value)
    assert f"output_dir '{tmp_path}' already holds 1 of this run's files" in message and "b_1.txt" in message
    assert "no run_manifest.json" in message
    assert "(sample file names do not depend on the seed)" in message
    assert run.batches == [] and files(tmp_path) == ["samples/b_1.txt"]


def test_seed_dependent_names_suggest_another_seed(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "preview_seed0.png", "an earlier preview")
    run = ToySampling(tmp_path)
    run.seed_in_file_names = True
    with pytest.raises(FileExistsError, match="never overwritten: choose another --output_dir or --seed"):
        run.run()


def test_a_failure_mid_run_writes_no_datalist_or_preview(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="out of memory"):
        ToySampling(tmp_path, num_samples=2, batch_size=1, fail_at=1).run()
    assert files(tmp_path) == ["run_manifest.json", "samples/a_0.txt"]  # the finished sample, whole; no temporary file


# --------------------------------------------------------------------------------------------------------- evaluation


class ToyEvaluation(base.EvaluationWorkflow):
    def __init__(self, output_dir: Path, samples: list[float], **options: Any) -> None:
        super().__init__(output_dir, "Toy report", **options)
        self.samples = samples

    def evaluate(self) -> dict[str, Any]:
        samples = self.limit(self.samples)
        if not samples:
            raise ValueError("no samples")
        return {"n_samples": len(samples), "mean": sum(samples) / len(samples)}


@pytest.mark.parametrize("max_samples, n", [(None, 3), (0, 3), (2, 2), (5, 3)])
def test_evaluation_writes_the_report_of_the_first_max_samples(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, max_samples: int | None, n: int
) -> None:
    caplog.set_level(logging.INFO, logger="common")
    results = ToyEvaluation(tmp_path, [1.0, 2.0, 6.0], max_samples=max_samples).run()
    assert results["n_samples"] == n
    assert json.loads((tmp_path / "report.json").read_text())["n_samples"] == n
    assert (tmp_path / "report.md").read_text().startswith("# Toy report\n")
    assert any(r.getMessage().startswith("Toy report: '") for r in caplog.records)


def test_evaluation_writes_nothing_when_it_fails(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no samples"):
        ToyEvaluation(tmp_path / "eval", []).run()
    assert not (tmp_path / "eval").exists()


def test_evaluation_rejects_a_negative_max_samples(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="config key 'max_samples': expected a count >= 0 or None, got -1"):
        ToyEvaluation(tmp_path, [1.0], max_samples=-1)


def test_read_sample_datalist(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config key 'sample_dir': .* has no dataset.json; point it at"):
        base.read_sample_datalist(tmp_path, ("image",))
    ToySampling(tmp_path, num_samples=1).run()
    entries = base.read_sample_datalist(tmp_path, ("image", "label"), check_files=True)
    assert [e["image"] for e in entries] == [[str(tmp_path / "samples" / f"{n}_0.txt")] for n in ("a", "b")]
