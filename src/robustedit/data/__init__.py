"""Evaluation data: every file format becomes a list of `Case` (see schemas.py, loaders.py)."""

from robustedit.data.loaders import BUNDLED, BundledDataset, dataset_names, load_cases
from robustedit.data.schemas import (
    FORMATS,
    BadRecord,
    Case,
    CaseFormat,
    detect_format,
    parse_records,
    register_format,
)

__all__ = [
    "BUNDLED",
    "BadRecord",
    "BundledDataset",
    "Case",
    "CaseFormat",
    "FORMATS",
    "dataset_names",
    "detect_format",
    "load_cases",
    "parse_records",
    "register_format",
]
