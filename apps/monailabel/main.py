"""MONAI Label app serving the project's generative bundles: draw a label map, get a synthetic image back.

    monailabel start_server --app apps/monailabel --studies <folder of label maps> --conf models semantic_mri \
        --conf bundles <folder holding the unpacked bundle semantic_mri/>

``POST /infer/semantic_mri?image=<id>`` returns a NIfTI image on the label map's grid (shape and affine). The bundle is
a released bundle folder (``python -m tools.release semantic_mri``, unpacked), read as MONAI Label's bundle task
reads any zoo bundle (``configs/inference.yaml``, ``models/model.pt``, ``network_data_format``), with the bundle's
serving overlay loaded after it (``configs/serve.yaml``: a whole-chain inferer, preprocessing on the key ``image``,
postprocessing back onto the input grid). Options (``--conf key value``):

- ``models``: comma-separated bundle names (folders of ``bundles``), e.g. ``semantic_mri``.
- ``bundles``: the folder holding them (default ``<app>/model``, where MONAI Label's sample bundle app keeps them).
- ``overlays``: comma-separated config files of ``configs/`` loaded after ``inference.yaml`` (default
  ``serve.yaml``; the demo-sized network of ``make demo``: ``demo.yaml,serve.yaml``).
- ``preload``: ``true`` loads the network at start-up (MONAI Label's own option).

Nothing is downloaded: a bundle folder or a weight file that is missing stops the start with an error naming the file
and its ``large_files.yml`` entry. A request whose label map is unusable (labels outside the bundle's set, NaN, not 3D,
an affine that cannot be resampled) is answered with HTTP 422 naming the problem; the server keeps serving.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from monai.bundle import ConfigParser
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.bundle import BundleConstants, BundleInferTask

logger = logging.getLogger(__name__)

SERVING_FORMAT_KEY = "serving_network_data_format"


def _split(value: str | None, default: str) -> list[str]:
    return [part.strip() for part in (value or default).split(",") if part.strip()]


class SynthesisInferTask(BundleInferTask):
    """MONAI Label's bundle task for a generative bundle: a label map in, an image out.

    It differs from ``BundleInferTask`` only where a generative task must: the inference config is read with the
    bundle's serving overlays; the network is built and its weights loaded by the bundle's own ``network`` expression
    once at start (so a missing or mismatched weight file stops the start with the bundle's error, instead of the
    bundle being skipped or loaded non-strictly); the task type is ``others`` and it lists no labels (the result is an
    image, not a segmentation); its description and labels come from the metadata's ``serving_network_data_format``.

    Args:
        path: the bundle folder (``configs/``, ``models/model.pt``).
        conf: the app's ``--conf`` options (``preload``).
        overlays: config files of ``configs/`` read after ``inference.yaml``, in order.
    """

    def __init__(self, path: str, conf: dict[str, str], overlays: list[str], **kwargs: Any) -> None:
        self.overlays = list(overlays)
        folder = Path(path)
        missing = [str(folder / "configs" / name) for name in ["inference.yaml", *self.overlays]]
        missing = [name for name in missing if not Path(name).is_file()]
        if missing:
            raise FileNotFoundError(f"bundle '{folder}': config files {missing} do not exist")
        self._check_weights(folder)
        super().__init__(path, conf, const=BundleConstants(), type=InferType.OTHERS, load_strict=True, **kwargs)
        if not self.is_valid():
            raise RuntimeError(f"MONAI Label did not accept the bundle '{folder}' (see the log above)")
        metadata = json.loads((folder / "configs" / "metadata.json").read_text())
        serving = metadata.get(SERVING_FORMAT_KEY)
        if not serving:
            raise ValueError(f"'{folder / 'configs' / 'metadata.json'}': no '{SERVING_FORMAT_KEY}' (a servable bundle)")
        output = next(iter(serving["outputs"].values()))
        self.labels = {}
        self.description = f"{metadata.get('name', folder.name)}: {output.get('description', '')}".strip()

    def _config_files(self, folder: Path) -> list[str]:
        return [str(folder / "configs" / name) for name in ["inference.yaml", *self.overlays]]

    def _check_weights(self, folder: Path) -> None:
        """Evaluate the bundle's ``network`` (network_def + weights, with the bundle's missing-file error)."""
        parser = self._load_bundle_config(str(folder), None)
        parser["device"] = "$torch.device('cpu')"
        sys.path.insert(0, str(folder))
        try:
            parser.get_parsed_content("network")
        except Exception as e:  # the config error wraps the bundle's message: report the innermost one
            cause = e
            while cause.__cause__ is not None or cause.__context__ is not None:
                cause = cause.__cause__ or cause.__context__
            raise RuntimeError(f"bundle '{folder}' cannot be served: {cause}") from e
        finally:
            sys.path.remove(str(folder))

    def _load_bundle_config(self, path: str, config: str | None) -> ConfigParser:
        parser = ConfigParser()
        parser.read_config(self._config_files(Path(path)))
        parser["bundle_root"] = path
        return parser

    def run_pre_transforms(self, data: dict[str, Any], transforms: Any) -> dict[str, Any]:
        """MONAI Label's pre-transforms with its ``image_path`` (a string) set aside while they run: MONAI 1.6's
        ``Spacingd`` updates every key starting with ``image_`` as a meta dict, and fails on that string (an HTTP 500
        on every request). The writer reads it back afterwards."""
        path = data.pop("image_path", None)
        try:
            data = super().run_pre_transforms(data, transforms)
        finally:
            if path is not None:
                data["image_path"] = path
        return data

    def writer(self, data: dict[str, Any], extension: str | None = None, dtype: Any = None) -> tuple[Any, Any]:
        """The image is written as float32 (a segmentation task's label would be cast to integers)."""
        data.setdefault("result_dtype", "float32")
        return super().writer(data, extension, dtype)


def _input_error(error: BaseException) -> ValueError | FileNotFoundError | None:
    """The ValueError (a refused input) in ``error``'s chain, if any."""
    while error is not None:
        if isinstance(error, ValueError):
            return error
        error = error.__cause__ or error.__context__
    return None


class GenerativeBundlesApp(MONAILabelApp):
    """Serves the bundles named by ``--conf models`` from ``--conf bundles`` (see the module docstring)."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.models = _split(conf.get("models"), "semantic_mri")
        self.bundle_dir = Path(conf.get("bundles") or os.path.join(app_dir, "model"))
        self.overlays = _split(conf.get("overlays"), "serve.yaml")
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="MONAI generative bundles",
            description="Label map in, synthetic image out (mask-conditioned diffusion models)",
        )

    def init_infers(self) -> dict[str, SynthesisInferTask]:
        infers = {}
        for name in self.models:
            folder = self.bundle_dir / name
            if not (folder / "configs").is_dir():
                raise FileNotFoundError(
                    f"--conf models {name}: no bundle folder '{folder}' (expected an unpacked release of {name} with "
                    f"configs/ and models/model.pt; set --conf bundles <folder holding {name}/>)"
                )
            infers[name] = SynthesisInferTask(str(folder), self.conf, self.overlays)
        return infers

    def infer(self, request: dict[str, Any], datastore: Any = None) -> dict[str, Any]:
        """MONAI Label's inference; a refused label map is an HTTP 422 naming the problem (not a 500)."""
        request = {**request, "save_label": False}  # the result is an image, never stored as the study's label
        try:
            return super().infer(request, datastore)
        except Exception as e:
            refused = _input_error(e)
            if refused is None:  # MONAI Label answers 500 without a trace in its log: put one there
                logger.exception("request for image '%s' failed", request.get("image"))
                raise
            logger.warning("refused request for image '%s': %s", request.get("image"), refused)
            raise HTTPException(status_code=422, detail=f"image '{request.get('image')}': {refused}") from e
