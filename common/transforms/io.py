"""Safe image loading: MONAI's LoadImaged with errors that name the file."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from monai.data import MetaTensor
from monai.transforms import LoadImaged

__all__ = ["source_name", "SafeLoadImaged", "SafeLoadImageD", "SafeLoadImageDict"]


def source_name(data: Any, fallback: str = "<input>") -> str:
    """The file a (Meta)tensor was read from, for error messages."""
    if isinstance(data, MetaTensor):
        return str(data.meta.get("filename_or_obj", fallback))
    return fallback


class SafeLoadImaged(LoadImaged):
    """``monai.transforms.LoadImaged`` whose read errors name the file(s) and the key.

    A truncated, corrupt or unsupported file otherwise surfaces as a reader-specific exception (gzip ``EOFError``,
    nibabel ``ImageFileError``, ...) deep in a data-loader traceback.
    """

    def __call__(self, data: Mapping, reader: Any = None) -> dict:
        try:
            return super().__call__(data, reader)
        except Exception as e:
            files = {key: data.get(key) for key in self.keys if key in data}
            raise ValueError(f"cannot read {files}: corrupt, truncated or not a medical image file ({e})") from e


SafeLoadImageD = SafeLoadImageDict = SafeLoadImaged
