"""The living catalogue: listings added to (or replaced in) a bundle's index, and removed from it, without
retraining or rebuilding it.

New listings' vectors come from the one listing-vector path (``fbml.workflows.index.catalogue_vectors``, the
bundle's own weights); the index links them in (``SearchIndex.with_listings``) or forgets listings
(``SearchIndex.without``: an HNSW graph keeps them as tombstones its searches skip). Both run under the
bundle's writer lock from the load to the save, and the save is atomic (``fbml.bundle.store``): a crash
leaves the bundle as it was.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs
import polars as pl

from fbml.bundle.bundle import Bundle
from fbml.bundle.locks import bundle_writer
from fbml.bundle.search import SearchIndex
from fbml.bundle.store import load_bundle, save_bundle
from fbml.errors import FbmlError, InputError, shown
from fbml.files import check_output_folder
from fbml.tables.clean import CleanTables
from fbml.vision.cache import check_photo_folder
from fbml.workflows.index import CATALOGUE_COLUMNS, catalogue_vectors
from fbml.workflows.inputs import known_categories, with_photo_ids

MAX_ID_CHARS = 1_000
"""The longest product id a removal list may name (a catalogue's ids are bounded alike)."""


@attrs.frozen
class CatalogueChange:
    """What a change did to the index: listings added (new ids), replaced (ids it held), removed, refused
    (products of a category the bundle does not know, by id), and the listings it now holds."""

    added: int = 0
    replaced: int = 0
    removed: int = 0
    refused: tuple[str, ...] = ()
    products: int = 0

    def to_json(self) -> dict[str, Any]:
        """The change as JSON."""
        return {"added": self.added, "replaced": self.replaced, "removed": self.removed,
                "refused_unknown_category": list(self.refused), "products": self.products}  # fmt: skip

    def summary(self) -> str:
        """One line saying what changed."""
        refused = f"; {len(self.refused)} refused (category unknown to the bundle: {shown(list(self.refused))})" if self.refused else ""
        return (f"search index: {self.added} listing(s) added, {self.replaced} replaced, {self.removed} removed; "
                f"{self.products} products{refused}")  # fmt: skip


def listings_to_add(bundle: Bundle, tables: CleanTables) -> tuple[CleanTables, pl.DataFrame, tuple[str, ...]]:
    """The tables restricted to products of the bundle's categories, those products as catalogue rows (with
    their photo ids), and the ids of the products refused for a category the bundle does not know;
    ``FbmlError`` when none is left."""
    known = known_categories(tables, bundle.codec)
    refused = tuple(tables.cleaned.products.filter(~pl.col("id").is_in(known.cleaned.products["id"].implode()))["id"].to_list())
    products = with_photo_ids(known.cleaned.products, known)
    if products.height == 0:
        raise FbmlError(f"no product to add: {len(refused)} product(s) of categories the bundle does not know "
                        f"(it knows {', '.join(bundle.codec.classes)})")
    return known, products, refused


def added_index(bundle: Bundle, tables: CleanTables, image_dir: Path | None, *, work_dir: Path, progress: bool) -> tuple[SearchIndex, CatalogueChange]:  # fmt: skip
    """The bundle's index with the products of ``tables`` (of its categories) added or replaced, and what changed."""
    index = bundle.search_index()
    known, products, refused = listings_to_add(bundle, tables)
    vectors = catalogue_vectors(bundle, known, image_dir, products, work_dir=work_dir, progress=progress)
    replaced = sum(product_id in index for product_id in products["id"].to_list())
    updated = index.with_listings(vectors, products.select(CATALOGUE_COLUMNS))
    updated = attrs.evolve(updated, report={**updated.report, "products": len(updated)})
    return updated, CatalogueChange(products.height - replaced, replaced, 0, refused, len(updated))


def add_listings(bundle_dir: Path, tables: CleanTables, image_dir: Path | None, *, work_dir: Path, progress: bool = True,
                 device: str = "cpu") -> CatalogueChange:  # fmt: skip
    """Add (or replace, by id) the products of ``tables`` in the index of the bundle at ``bundle_dir`` and save it,
    under the bundle's writer lock."""
    check_photo_folder(image_dir)
    with bundle_writer(bundle_dir, "fbml index --add"):
        check_output_folder(work_dir)
        bundle = load_bundle(bundle_dir, device=device)
        index, change = added_index(bundle, tables, image_dir, work_dir=work_dir, progress=progress)
        save_bundle(attrs.evolve(bundle, index=index), bundle_dir)
    return change


def removed_index(index: SearchIndex, product_ids: Sequence[str]) -> tuple[SearchIndex, CatalogueChange]:
    """``index`` without ``product_ids`` (``UnknownProductError`` naming any it lacks), and what changed."""
    if not product_ids:
        raise InputError("remove", "give at least one product id to remove")
    updated = index.without(product_ids)
    updated = attrs.evolve(updated, report={**updated.report, "products": len(updated)})
    return updated, CatalogueChange(removed=len(index) - len(updated), products=len(updated))


def remove_listings(bundle_dir: Path, product_ids: Sequence[str]) -> CatalogueChange:
    """Remove ``product_ids`` from the index of the bundle at ``bundle_dir`` and save it, under the bundle's
    writer lock; nothing changes when one of them is not in the index."""
    with bundle_writer(bundle_dir, "fbml index --remove"):
        bundle = load_bundle(bundle_dir)
        index, change = removed_index(bundle.search_index(), product_ids)
        save_bundle(attrs.evolve(bundle, index=index), bundle_dir)
    return change


def ids_of_file(path: Path) -> list[str]:
    """The product ids of a file, one a line (blank lines skipped, each stripped); ``FbmlError`` naming the file and
    line when it cannot be read or an id is unusable."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FbmlError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise FbmlError(f"{path}: not UTF-8 text") from None
    except OSError as error:
        raise FbmlError(f"{path}: cannot read ({error.strerror})") from None
    return checked_ids((line.strip() for line in text.splitlines()), str(path))


def checked_ids(ids: Iterable[str], source: str) -> list[str]:
    """The non-blank ``ids`` of ``source``; ``FbmlError`` naming the line of one too long or unprintable."""
    kept = []
    for line, product_id in enumerate(ids, start=1):
        if not product_id:
            continue
        if len(product_id) > MAX_ID_CHARS or not product_id.isprintable():
            raise FbmlError(f"{source}: id {line} is not a product id ({shown(product_id)})")
        kept.append(product_id)
    return kept
