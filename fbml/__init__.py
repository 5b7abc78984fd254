"""fbml: clean marketplace listings and photos, classify them, recommend similar ones, serve it over HTTP.

From Python, the prediction path is the bundle's::

    bundle = fbml.load_bundle("bundle")
    bundle.predict(text=fbml.listing_text("Oak dining table", "four chairs, barely used")).category
    bundle.predict(image=Path("photo.jpg"), text="Oak dining table").top(3)
    bundle.similar(text="mountain bike", k=5)

``import fbml`` is cheap: each public name is imported from its stage module on first use, so torch,
gensim and litestar load only when a model, word vectors or the API are asked for. Type checkers see
the real names through the ``TYPE_CHECKING`` imports below.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from contracts.bundle import ModelKind, Role

    from fbml.bundle.bundle import Bundle
    from fbml.bundle.predictions import Prediction, Similar
    from fbml.bundle.store import load_bundle, save_bundle
    from fbml.bundle.vector_index import VectorIndex, vector_index
    from fbml.errors import ContractError, FbmlError, InputError
    from fbml.modeling.backbones import BACKBONES, Backbone, backbone
    from fbml.modeling.ensembles import Ensemble, fit_ensemble
    from fbml.modeling.linear_text import LinearTextModel, LinearTextOptions, fit_linear_text
    from fbml.modeling.models import combined_model, image_model, text_model
    from fbml.modeling.training import History, TrainConfig, TrainData, fit
    from fbml.sample.marketplace import write_sample
    from fbml.serving.app import create_app
    from fbml.tables.clean import CleanTables, clean_tables
    from fbml.tables.cleaning import Cleaned, Manifest, clean_products, image_manifest
    from fbml.tables.sources import read_images, read_products
    from fbml.tables.splits import Splits, split_by_product, split_tables
    from fbml.text.listings import listing_text
    from fbml.vision.cleaning import clean_image, clean_images
    from fbml.vision.photos import PhotoLimits
    from fbml.workflows.evaluate import Evaluation, evaluate_bundle
    from fbml.workflows.train import TrainRequest, TrainResult, train_into_bundle, train_request

_EXPORTS = {
    "FbmlError": "fbml.errors",
    "InputError": "fbml.errors",
    "ContractError": "fbml.errors",
    "read_products": "fbml.tables.sources",
    "read_images": "fbml.tables.sources",
    "clean_products": "fbml.tables.cleaning",
    "image_manifest": "fbml.tables.cleaning",
    "Cleaned": "fbml.tables.cleaning",
    "Manifest": "fbml.tables.cleaning",
    "CleanTables": "fbml.tables.clean",
    "clean_tables": "fbml.tables.clean",
    "Splits": "fbml.tables.splits",
    "split_by_product": "fbml.tables.splits",
    "split_tables": "fbml.tables.splits",
    "clean_image": "fbml.vision.cleaning",
    "clean_images": "fbml.vision.cleaning",
    "PhotoLimits": "fbml.vision.photos",
    "listing_text": "fbml.text.listings",
    "write_sample": "fbml.sample.marketplace",
    "BACKBONES": "fbml.modeling.backbones",
    "Backbone": "fbml.modeling.backbones",
    "backbone": "fbml.modeling.backbones",
    "image_model": "fbml.modeling.models",
    "text_model": "fbml.modeling.models",
    "combined_model": "fbml.modeling.models",
    "LinearTextModel": "fbml.modeling.linear_text",
    "LinearTextOptions": "fbml.modeling.linear_text",
    "fit_linear_text": "fbml.modeling.linear_text",
    "Ensemble": "fbml.modeling.ensembles",
    "fit_ensemble": "fbml.modeling.ensembles",
    "TrainConfig": "fbml.modeling.training",
    "TrainData": "fbml.modeling.training",
    "History": "fbml.modeling.training",
    "fit": "fbml.modeling.training",
    "TrainRequest": "fbml.workflows.train",
    "TrainResult": "fbml.workflows.train",
    "train_request": "fbml.workflows.train",
    "train_into_bundle": "fbml.workflows.train",
    "Evaluation": "fbml.workflows.evaluate",
    "evaluate_bundle": "fbml.workflows.evaluate",
    "Bundle": "fbml.bundle.bundle",
    "Prediction": "fbml.bundle.predictions",
    "Similar": "fbml.bundle.predictions",
    "Role": "contracts.bundle",
    "ModelKind": "contracts.bundle",
    "load_bundle": "fbml.bundle.store",
    "save_bundle": "fbml.bundle.store",
    "VectorIndex": "fbml.bundle.vector_index",
    "vector_index": "fbml.bundle.vector_index",
    "create_app": "fbml.serving.app",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fbml' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted(__all__)
