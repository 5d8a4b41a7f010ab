"""Benchmark of sharded, batched sampling: ``python -m tools.bench sharded_sampling``.

On the semantic_mri bundle at a tiny size (random weights: throughput does not depend on training), it measures
samples per second of the bundle's inference workflow

1. in one process at ``sample_batch_size`` 1 and larger batch sizes (the same samples, per-sample noise), and
2. through ``monai.bundle run`` in one process against ``torchrun --nproc_per_node=2`` with the
   ``multi_gpu_inference.yaml`` overlay (gloo on CPU). The time is the workflow's own sampling clock (from the end of
   the output checks to rank 0's datalist, the final barrier included), so interpreter start-up and process-group
   set-up are left out. On a 2-core machine the second process adds no compute (one process already uses both
   cores): the ratio shows what sharding costs.

The JSON holds the raw figures and a ``targets`` list computed from them.
"""

from __future__ import annotations

import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.checkpoint import atomic_torch_save, plain_state_dict
from common.io import atomic_write_nifti
from tools.bench.harness import REPO_ROOT, bundle_workflow, config_files, markdown_table

__all__ = ["bench_sharded_sampling"]

BUNDLE = "semantic_mri"
NETWORK = {"channels": [32, 32], "attention_levels": [False, True], "num_head_channels": 32}
TINY = {"spatial_size": [16, 16, 16], "pixdim": [12.0] * 3, "num_train_timesteps": 50, "sampler": "ddim"}
TINY.update({f"network_def#{key}": value for key, value in NETWORK.items()})
FINISHED = re.compile(r"(\d+) sample\(s\) in '[^']*' after ([0-9.]+) s")


def _prepare(root: Path, num_masks: int) -> list[str]:
    """Random tiny weights in ``root/models/model.pt`` and ``num_masks`` box masks (labels 0/1/2); the mask files."""
    workflow = bundle_workflow(config_files(BUNDLE, "inference"), None, bundle_root=str(root), **TINY)
    torch.manual_seed(0)
    atomic_torch_save(plain_state_dict(workflow.parser.get_parsed_content("network_def")), root / "models" / "model.pt")
    masks = []
    for k in range(num_masks):
        label = np.zeros((1, 16, 16, 16), dtype=np.uint8)
        label[0, 2:14, 2:14, 2:14] = 1
        label[0, 5 + k % 4 : 10 + k % 4, 6:11, 5:10] = 2
        path = root / "masks" / f"case_{k:03d}.nii.gz"
        atomic_write_nifti(label, np.diag([12.0, 12.0, 12.0, 1.0]), path, dtype="uint8")
        masks.append(str(path))
    return masks


def _in_process(root: Path, masks: list[str], out: Path, settings: dict[str, Any]) -> float:
    """Samples per second of one in-process run of the inference workflow."""
    workflow = bundle_workflow(
        config_files(BUNDLE, "inference"), None, bundle_root=str(root), output_dir=str(out), masks=masks, **settings
    )
    sampling = workflow.parser.get_parsed_content("sampling")
    sampling.verbose = False
    begin = time.perf_counter()
    written = sampling.run()
    return len(written) / (time.perf_counter() - begin)


def _through_monai_bundle(root: Path, masks: list[str], out: Path, settings: dict[str, Any], processes: int) -> float:
    """Samples per second from the workflow's log line of a ``monai.bundle run`` (``torchrun`` for 2 processes)."""
    names = ("inference",) if processes == 1 else ("inference", "multi_gpu_inference")
    files = "[" + ",".join(f"'{f}'" for f in config_files(BUNDLE, *names)) + "]"
    args = ["--bundle_root", str(root), "--output_dir", str(out), "--masks", str(masks).replace(" ", "")]
    for key, value in settings.items():
        args += [f"--{key}", str(value).replace(" ", "")]
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", f"--nproc_per_node={processes}", "--master_port=29581"]
    command = [*launcher, "-m", "monai.bundle", "run", "--config_file", files, *args]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800)
    found = FINISHED.findall(result.stdout + result.stderr)
    if result.returncode != 0 or not found:
        raise RuntimeError(f"{processes}-process sampling failed: {result.stderr[-2000:]}")
    count, seconds = found[-1]
    return int(count) / float(seconds)


def bench_sharded_sampling(
    num_masks: int = 2, samples_per_mask: int = 8, steps: int = 10, batch_sizes: tuple[int, ...] = (1, 2, 4, 8)
) -> tuple[str, dict[str, Any]]:
    """Samples/s at each batch size (one process) and with 1 vs 2 processes (``monai.bundle run`` / ``torchrun``)."""
    settings = {**TINY, "num_samples": samples_per_mask, "num_inference_steps": steps}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        masks = _prepare(root, num_masks)
        _in_process(root, masks[:1], root / "warm_up", {**settings, "num_samples": 1})  # first-call costs
        per_batch = {
            size: _in_process(root, masks, root / f"batch{size}", {**settings, "sample_batch_size": size})
            for size in batch_sizes
        }
        best = max(per_batch, key=per_batch.get)
        per_process = {
            n: _through_monai_bundle(root, masks, root / f"procs{n}", {**settings, "sample_batch_size": best}, n)
            for n in (1, 2)
        }
    batch_gain = per_batch[best] / per_batch[1]
    overhead = (per_process[1] / per_process[2] - 1.0) * 100.0
    targets = [
        {"name": "best batch size vs batch 1 (samples/s ratio)", "value": round(batch_gain, 3), "target": ">= 1.0",
         "met": batch_gain >= 1.0},
        {"name": "2-process sharding overhead", "value": round(overhead, 1), "target": "<= 10 %",
         "met": overhead <= 10.0},
    ]  # fmt: skip
    rows = [
        [f"1 process, batch {size}", f"{rate:.2f}", f"{rate / per_batch[1]:.2f}x"] for size, rate in per_batch.items()
    ]
    rows += [
        [f"{n} process(es) (monai.bundle run{'' if n == 1 else ', torchrun, gloo'}), batch {best}", f"{rate:.2f}",
         f"{rate / per_process[1]:.2f}x"]
        for n, rate in per_process.items()
    ]  # fmt: skip
    table = markdown_table(rows, ["configuration", "samples/s", "vs first of its group"])
    setup = (
        f"semantic_mri inference, random weights, 16^3 masks, DiffusionModelUNet channels (32, 32), DDIM {steps} "
        f"steps, {num_masks} masks x {samples_per_mask} samples; {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    lines = [f"- {t['name']}: {t['value']} (target {t['target']}: {'met' if t['met'] else 'not met'})" for t in targets]
    markdown = "\n".join(
        [
            "# Sharded and batched sampling",
            "",
            setup,
            "",
            table,
            "",
            *lines,
            "",
            "Command: `python -m tools.bench sharded_sampling`",
            "",
        ]
    )
    results = {
        "setup": setup,
        "samples_per_second_by_batch_size": per_batch,
        "best_batch_size": best,
        "samples_per_second_by_processes": per_process,
        "targets": targets,
    }
    return markdown, results
