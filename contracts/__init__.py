"""pandera contracts for every frame that crosses a boundary in fbml."""

from contracts.base import polars_schema
from contracts.catalogue import Catalogue
from contracts.photos import ImageCleaningFiles
from contracts.tables import CleanProducts, ImageManifest, RawImages, RawProducts, Rejected

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
