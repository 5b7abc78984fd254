"""``fbml export-onnx``: add an ONNX graph of each of a bundle's networks, checked against torch."""

from __future__ import annotations

from pathlib import Path

import attrs

from fbml.bundle.bundle import Bundle
from fbml.bundle.locks import bundle_writer
from fbml.bundle.store import load_bundle, save_bundle
from fbml.modeling.linear_text import LinearTextModel
from fbml.modeling.onnx_export import checked_graph


def exported_bundle(bundle: Bundle) -> tuple[Bundle, dict[str, float]]:
    """``bundle`` with an ONNX graph of every network, and each graph's largest probability difference
    from torch on a check batch (the linear text model needs no graph: it runs without torch as it is)."""
    differences: dict[str, float] = {}
    for kind, entry in bundle.models.items():
        module = bundle.torch_model(kind)
        if isinstance(module, LinearTextModel):
            continue
        graph, differences[kind] = checked_graph(
            kind, module,
            image_size=bundle.image.size if bundle.image else 1,
            text_length=bundle.text.length if bundle.text else 1,
            vocabulary_size=len(bundle.text.vocabulary) if bundle.text else 1,
        )
        bundle = bundle.with_model(attrs.evolve(entry, onnx=graph))
    return bundle, differences


def export_onnx(bundle_dir: Path) -> dict[str, float]:
    """Export the bundle at ``bundle_dir``'s networks to ONNX into it (holding its writer lock)."""
    with bundle_writer(bundle_dir, "fbml export-onnx"):
        bundle, differences = exported_bundle(load_bundle(bundle_dir))
        save_bundle(bundle, bundle_dir)
    return differences
