"""Write the conditioning label maps a mask-conditioned bundle trains on, ready to sample from.

Runs a training config's loading and label transforms (``load_transforms`` + ``label_transforms``: resampling,
crop/pad, BraTS label remapping, the brain label from T1...) over every case of its dataset and writes each label
map on the model grid as ``<out>/<case_id>.nii.gz``. Point inference's ``--masks`` at that folder, or edit the maps
(move or resize a tumour) first: mask manipulation is what these models are for.

Usage::

    python -m tools.condition_maps \\
        --config_file "['bundles/semantic_mri/configs/train.yaml','bundles/semantic_mri/configs/brats.yaml']" --out D
    python -m tools.condition_maps --config_file bundles/semantic_mri/configs/train.yaml --out D --dataset_dir R
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import fire
from monai.transforms import Compose

from common.bundle import bundle_config_parser
from common.io import atomic_write_nifti

__all__ = ["write_condition_maps", "main"]

logger = logging.getLogger(__name__)


def write_condition_maps(config_file: str | list[str], out: str, **overrides: Any) -> list[Path]:
    """Write the label map of every training and validation case of ``config_file``'s dataset to ``out``.

    Args:
        config_file: training config (list of files for overlays), as given to ``monai.bundle run``.
        out: output folder; existing files are never overwritten (FileExistsError before anything is written).
        overrides: config overrides, e.g. ``dataset_dir``.

    Returns:
        The files written.
    """
    parser = bundle_config_parser(config_file, **overrides)
    datalist = parser.get_parsed_content("datalist")
    cases = datalist["train"] + datalist["val"]
    transform = Compose(parser.get_parsed_content("load_transforms") + parser.get_parsed_content("label_transforms"))
    targets = [Path(out) / f"{case['case_id']}.nii.gz" for case in cases]
    existing = [str(t) for t in targets if t.exists()]
    if existing:
        raise FileExistsError(
            f"'{out}' already holds {len(existing)} of the maps (e.g. {existing[:3]}); choose another --out"
        )
    for case, target in zip(cases, targets):
        label = transform(dict(case))["label"]
        atomic_write_nifti(label, None, target, dtype="uint8")
    logger.info(f"wrote {len(targets)} condition label map(s) to '{out}'")
    return targets


def main(config_file: str | list[str], out: str, **overrides: Any) -> None:
    """Command line: ``python -m tools.condition_maps --config_file C --out D [--key value ...]``."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    written = write_condition_maps(config_file, out, **overrides)
    print(f"wrote {len(written)} condition maps to {out}")


if __name__ == "__main__":
    fire.Fire(main)
