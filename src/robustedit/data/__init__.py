"""Evaluation data: every file format becomes a list of `Case` (see schemas.py, loaders.py)."""

from robustedit.data import counterfact_hard, knowedit, reverse_relation  # noqa: F401  (register their formats)
from robustedit.data.loaders import BUNDLED, BundledDataset, dataset_names, load_cases
from robustedit.data.schemas import (
    FORMATS,
    LABELED_GROUPS,
    LabeledPrompt,
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
    "LABELED_GROUPS",
    "LabeledPrompt",
    "dataset_names",
    "detect_format",
    "load_cases",
    "parse_records",
    "register_format",
]
