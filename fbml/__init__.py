"""fbml: clean marketplace listings and photos, classify them, recommend similar ones, serve it over HTTP.

``import fbml`` is cheap: each public name is imported from its stage module on first use, so torch,
gensim and litestar load only when a model, word vectors or the API are asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "FbmlError": "fbml.errors",
    "InputError": "fbml.errors",
    "read_products": "fbml.sources",
    "read_images": "fbml.sources",
    "clean_products": "fbml.cleaning",
    "image_manifest": "fbml.cleaning",
    "Cleaned": "fbml.cleaning",
    "Manifest": "fbml.cleaning",
    "clean_tables": "fbml.pipeline",
    "clean_image": "fbml.images",
    "clean_images": "fbml.images",
    "write_sample": "fbml.sample",
    "image_model": "fbml.models",
    "text_model": "fbml.models",
    "combined_model": "fbml.models",
    "TrainConfig": "fbml.training",
    "fit": "fbml.training",
    "predict": "fbml.training",
    "train_request": "fbml.experiment",
    "train_into_bundle": "fbml.experiment",
    "evaluate_bundle": "fbml.experiment",
    "load_bundle": "fbml.bundle",
    "save_bundle": "fbml.bundle",
    "create_app": "fbml.api",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fbml' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted(__all__)
