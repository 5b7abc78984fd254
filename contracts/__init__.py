"""pandera contracts for every frame that crosses a boundary in fbml."""

from contracts.tables import CleanProducts, ImageManifest, RawImages, RawProducts, Rejected

__all__ = ["CleanProducts", "ImageManifest", "RawImages", "RawProducts", "Rejected"]
