"""Data: finding and checking cases (one datalist reader, layouts, headers), splits, preparation, phantoms."""

from __future__ import annotations

from common.data import phantoms
from common.data.ct_cases import CT_IMAGE_NAMES, find_ct_cases
from common.data.datalist import datalist_content, read_datalist, save_datalist
from common.data.headers import (
    check_case_headers,
    check_ct_case_headers,
    check_petct_headers,
    check_same_grid,
    nifti_header,
    read_case_headers,
    world_bounding_box,
)
from common.data.images2d import IMAGE_SUFFIXES, ensure_slice_phantoms, find_images, prepare_image_dataset
from common.data.latent_scale import LatentStats, compute_scale_factor, latent_scale_factor
from common.data.layouts import LAYOUTS, NIFTI_SUFFIXES, case_id_from_path, case_paths, find_cases, write_datalist
from common.data.petct import (
    PETCT_KEYS,
    PETCT_LAYOUTS,
    PairedSliceDataset,
    PetCtSettings,
    find_petct_cases,
    load_petct_case,
    tumour_slices,
)
from common.data.planar import find_patches, find_planar_cases, patch_cases, prepare_planar_dataset, reference_cases
from common.data.prepare import (
    ensure_phantom_dataset,
    field_of_view_mm,
    prepare_ct_dataset,
    prepare_dataset,
    prepare_petct_dataset,
    training_pixdim,
)
from common.data.splits import split_by_patient, split_cases
from common.data.volume_slices import SliceOptions, slice_volumes

__all__ = [
    "IMAGE_SUFFIXES",
    "ensure_slice_phantoms",
    "find_images",
    "prepare_image_dataset",
    "SliceOptions",
    "slice_volumes",
    "find_patches",
    "find_planar_cases",
    "patch_cases",
    "prepare_planar_dataset",
    "reference_cases",
    "CT_IMAGE_NAMES",
    "LAYOUTS",
    "LatentStats",
    "NIFTI_SUFFIXES",
    "PETCT_KEYS",
    "PETCT_LAYOUTS",
    "PairedSliceDataset",
    "PetCtSettings",
    "case_id_from_path",
    "case_paths",
    "check_case_headers",
    "check_ct_case_headers",
    "check_petct_headers",
    "check_same_grid",
    "compute_scale_factor",
    "datalist_content",
    "ensure_phantom_dataset",
    "field_of_view_mm",
    "find_cases",
    "find_ct_cases",
    "find_petct_cases",
    "latent_scale_factor",
    "load_petct_case",
    "nifti_header",
    "phantoms",
    "prepare_ct_dataset",
    "prepare_dataset",
    "prepare_petct_dataset",
    "read_case_headers",
    "read_datalist",
    "save_datalist",
    "split_by_patient",
    "split_cases",
    "training_pixdim",
    "tumour_slices",
    "world_bounding_box",
    "write_datalist",
]
