"""MONAI Deploy application: label maps in, synthetic images on their grids out, with a generative bundle's
serving chain (its ``serve.yaml`` overlay: preprocessing on the key ``image``, the whole-chain inferer, the
postprocessing back onto the label map's grid).

    python -m apps.monai_deploy -i <label map .nii.gz, or a folder of them> -o <output folder> -m <bundle folder> \
        [--overlays demo.yaml,serve.yaml] [--seed 0]

``-m`` is an unpacked release of the bundle (``configs/``, ``models/model.pt``). Each ``<name>.nii.gz`` gives
``<output folder>/<name>_synthetic.nii.gz`` (float32, the label map's shape and affine).

The SDK's ``MonaiBundleInferenceOperator`` is not used: it expects a TorchScript ``models/model.ts`` and casts
the network output to ``uint8`` (a segmentation), which would destroy a generated image. :class:`SynthesisOperator`
runs the same bundle chain that MONAI Label's bundle task runs (``preprocessing``, ``inferer(inputs, network)``,
``postprocessing``), so both apps serve the same images.

Errors: a label map with labels outside the bundle's set, NaN, not 3D or an affine that cannot be resampled stops the
app with a ``ValueError`` naming the file and the problem; a missing weight file names the file and its
``large_files.yml`` entry.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application, Fragment, Operator, OperatorSpec, init_app_context
from monai.transforms import SaveImage

__all__ = ["SynthesisApp", "SynthesisOperator", "label_map_files", "load_serving_chain", "main"]

logger = logging.getLogger(__name__)
NIFTI_SUFFIXES = (".nii.gz", ".nii")


def label_map_files(path: Path) -> list[Path]:
    """The NIfTI files of ``path`` (one file, or the ``*.nii``/``*.nii.gz`` of a folder, sorted)."""
    path = Path(path)
    if path.is_file():
        return [path]
    files = (
        sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(NIFTI_SUFFIXES)) if path.is_dir() else []
    )
    if not files:
        raise FileNotFoundError(f"-i {path}: expected a NIfTI label map or a folder holding *.nii/*.nii.gz, found none")
    return files


def _innermost(error: BaseException) -> BaseException:
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    return error


def load_serving_chain(bundle: Path, overlays: list[str], seed: int = 0) -> dict[str, Any]:
    """The bundle's serving chain: ``preprocessing``, ``network`` (weights loaded), ``inferer``, ``postprocessing``
    and ``device``, from ``configs/inference.yaml`` followed by ``overlays`` (files of ``configs/``)."""
    bundle = Path(bundle)
    files = [bundle / "configs" / name for name in ["inference.yaml", *overlays]]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"-m {bundle}: config files {missing} do not exist (expected an unpacked bundle)")
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    parser["bundle_root"] = str(bundle)
    parser["device"] = "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')"
    if "displayable_configs" in parser.get():
        parser["displayable_configs#seed"] = int(seed)
    sys.path.insert(0, str(bundle))
    try:
        return {
            key: parser.get_parsed_content(key)
            for key in ["device", "network", "preprocessing", "inferer", "postprocessing"]
        }
    except Exception as e:  # the config error wraps the bundle's message (missing weights, ...): report that one
        raise RuntimeError(f"bundle '{bundle}' cannot be served: {_innermost(e)}") from e
    finally:
        sys.path.remove(str(bundle))


class SynthesisOperator(Operator):
    """Runs a bundle's serving chain on every label map of ``input_path`` and writes the images to ``output_folder``.

    Args:
        fragment: the application.
        bundle_path: the bundle folder.
        input_path: a label map or a folder of them.
        output_folder: where ``<name>_synthetic.nii.gz`` go.
        overlays: config files of ``configs/`` read after ``inference.yaml``.
        seed: the sampler's seed.
    """

    def __init__(
        self,
        fragment: Fragment,
        *args: Any,
        bundle_path: Path,
        input_path: Path,
        output_folder: Path,
        overlays: list[str],
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        self.bundle_path = Path(bundle_path)
        self.input_path = Path(input_path)
        self.output_folder = Path(output_folder)
        self.overlays = list(overlays)
        self.seed = int(seed)
        self.written: list[Path] = []
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        """No ports: the operator reads its files and writes its results itself."""

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        chain = load_serving_chain(self.bundle_path, self.overlays, self.seed)
        self.output_folder.mkdir(parents=True, exist_ok=True)
        saver = SaveImage(output_dir=str(self.output_folder), output_postfix="synthetic", separate_folder=False,
                          output_dtype="float32", resample=False, print_log=False)  # fmt: skip
        for path in label_map_files(self.input_path):
            try:
                data = chain["preprocessing"]({"image": str(path)})
                inputs = data["image"].unsqueeze(0).to(chain["device"])
                data["pred"] = chain["inferer"](inputs, chain["network"])[0].cpu()
                data = chain["postprocessing"](data)
            except Exception as e:
                raise ValueError(f"label map '{path}': {_innermost(e)}") from e
            image = data["pred"]
            image = MetaTensor(image.as_tensor(), affine=image.affine, meta={"filename_or_obj": str(path)})
            saver(image)
            self.written.append(self.output_folder / f"{_stem(path)}_synthetic.nii.gz")
            logger.info("%s -> %s", path, self.written[-1])


def _stem(path: Path) -> str:
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


class SynthesisApp(Application):
    """One :class:`SynthesisOperator`, run once (the SDK's ``-i``, ``-o``, ``-m``; ``--overlays``, ``--seed``)."""

    def __init__(
        self, *args: Any, sdk_argv: list[str], overlays: list[str] | None = None, seed: int = 0, **kwargs: Any
    ) -> None:
        self.sdk_argv = list(sdk_argv)
        self.overlays = list(overlays or ["serve.yaml"])
        self.seed = int(seed)
        self.operator: SynthesisOperator | None = None
        super().__init__(*args, **kwargs)

    def compose(self) -> None:
        context = init_app_context(self.sdk_argv)  # the SDK's -i/-o/-m/-l (or its environment variables)
        self.operator = SynthesisOperator(
            self,
            CountCondition(self, 1),
            bundle_path=Path(context.model_path),
            input_path=Path(context.input_path),
            output_folder=Path(context.output_path),
            overlays=self.overlays,
            seed=self.seed,
            name="synthesis",
        )
        self.add_operator(self.operator)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--overlays", default="serve.yaml")
    parser.add_argument("--seed", type=int, default=0)
    own, rest = parser.parse_known_args(argv[1:])
    overlays = [name.strip() for name in own.overlays.split(",") if name.strip()]
    app = SynthesisApp(sdk_argv=[argv[0], *rest], overlays=overlays, seed=own.seed)
    app.run()
