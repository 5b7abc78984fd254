"""pandera contracts for every frame that crosses a boundary in fbml.

Each model is imported on first use: pandera imports pandas, so a stage that checks its data with the
plain polars predicates of ``contracts.rules`` (streamed cleaning) never loads either.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from contracts.base import polars_schema
    from contracts.catalogue import Catalogue
    from contracts.photos import ImageCleaningFiles
    from contracts.tables import CleanProducts, ImageManifest, RawImages, RawProducts, Rejected

_EXPORTS = {
    "Catalogue": "contracts.catalogue",
    "CleanProducts": "contracts.tables",
    "ImageCleaningFiles": "contracts.photos",
    "ImageManifest": "contracts.tables",
    "RawImages": "contracts.tables",
    "RawProducts": "contracts.tables",
    "Rejected": "contracts.tables",
    "polars_schema": "contracts.base",
}

__all__ = [
    "Catalogue",
    "CleanProducts",
    "ImageCleaningFiles",
    "ImageManifest",
    "RawImages",
    "RawProducts",
    "Rejected",
    "polars_schema",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'contracts' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted(__all__)
