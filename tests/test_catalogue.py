"""The living catalogue: listings added to (or replaced in) and removed from a bundle's index without rebuilding it,
exact and HNSW alike (``SearchIndex.with_listings``/``without``, ``fbml.workflows.catalogue``, ``fbml index --add``,
``--remove``, ``--remove-file``): the new listings are found, a removed one is never returned nor recommended, after a
save and a load too, under the bundle's writer lock, and a crash mid-save leaves the bundle as it was."""

from __future__ import annotations

import io
import json
from pathlib import Path

import attrs
import numpy as np
import polars as pl
import pytest
from contracts.rules import CATALOGUE_SCHEMA
from fbml.bundle import store
from fbml.bundle.locks import bundle_writer
from fbml.bundle.search import SearchIndex, UnknownProductError, unit_rows
from fbml.bundle.store import MANIFEST, load_bundle, save_bundle
from fbml.bundle.vector_index import COMPACT_SHARE, HnswIndex, load_vector_index
from fbml.cli import main
from fbml.errors import FbmlError
from fbml.serving.app import create_app
from fbml.tables.clean import clean_tables
from fbml.workflows.catalogue import add_listings, remove_listings
from fbml.workflows.index import CATALOGUE_COLUMNS, catalogue_vectors
from fbml.workflows.inputs import known_categories, with_photo_ids
from litestar.testing import TestClient
from PIL import Image

from test_search import catalogue_of
from test_store import copy, grown, hnsw_copy, load_error, manifest_of, parts, replace_file, write_manifest  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

METHODS = ("exact", "hnsw")


def unit_vectors(rows: int, dim: int, seed: int) -> np.ndarray:
    return unit_rows(np.random.default_rng(seed).normal(size=(rows, dim)))


def index_of(rows: int, method: str, dim: int = 12, seed: int = 0) -> SearchIndex:
    return SearchIndex(unit_vectors(rows, dim, seed), catalogue_of(rows)).with_method(method)  # type: ignore[arg-type]


def new_rows(ids: list[str]) -> pl.DataFrame:
    return pl.DataFrame({"id": ids, "product_name": [f"new {name}" for name in ids], "category": ["Toys"] * len(ids),
                         "category_path": ["Toys > new"] * len(ids), "price": [9.0] * len(ids),
                         "photos": [[f"{name}-photo"] for name in ids]}, schema=CATALOGUE_SCHEMA)


def every_answer(index: SearchIndex) -> set[str]:
    """The ids any catalogue vector or random query finds, asking for every row."""
    queries = np.concatenate([index.vectors, unit_vectors(50, index.dim, seed=9)])
    rows, _ = index.search(queries, min(len(index), 100))
    return {index.catalogue["id"][int(row)] for row in np.unique(rows)}


# --- the index -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_added_listings_are_found_and_the_old_index_is_unchanged(method: str) -> None:
    index = index_of(300, method)
    added = unit_vectors(20, index.dim, seed=5)
    grown_index = index.with_listings(added, new_rows([f"n{row}" for row in range(20)]))
    assert len(grown_index) == 320 and len(index) == 300 and grown_index.engine.method == method
    assert grown_index.catalogue["id"].to_list()[-20:] == [f"n{row}" for row in range(20)]
    rows, scores = grown_index.search(added, 1)
    assert [grown_index.catalogue["id"][int(row)] for row in rows[:, 0]] == [f"n{row}" for row in range(20)]
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert grown_index.listing(grown_index.row("n3"))["photos"] == ["n3-photo"]
    assert "n3" not in index and len(index.engine) == 300 and int(index.search(added, 100)[0].max()) < 300  # unchanged


@pytest.mark.parametrize("method", METHODS)
def test_a_listing_of_an_id_the_index_holds_is_replaced(method: str) -> None:
    index = index_of(200, method)
    old_vector = index.vectors[index.row("p7")]
    vector = unit_vectors(1, index.dim, seed=6)
    replaced = index.with_listings(vector, new_rows(["p7"]))
    assert len(replaced) == 200 and replaced.catalogue["id"].to_list().count("p7") == 1
    assert replaced.listing(replaced.row("p7"))["product_name"] == "new p7"
    np.testing.assert_array_equal(replaced.vectors[replaced.row("p7")], vector[0])
    assert not np.all(replaced.vectors == old_vector, axis=1).any()
    assert replaced.nearest(old_vector, 1)[0].score < 0.99  # the old vector is searched no more


@pytest.mark.parametrize("method", METHODS)
def test_a_removed_listing_is_never_returned(method: str) -> None:
    index = index_of(400, method)
    gone = [f"p{row}" for row in range(0, 400, 9)]
    kept = index.without(gone)
    assert len(kept) == 400 - len(gone) and not any(product_id in kept for product_id in gone)
    assert every_answer(kept).isdisjoint(gone)
    for product_id in gone[:3]:
        with pytest.raises(UnknownProductError):
            kept.neighbours(product_id, 5)
    rows, _ = kept.search(index.vectors[[index.row(product_id) for product_id in gone]], 10)  # the removed vectors themselves
    assert {kept.catalogue["id"][int(row)] for row in rows.ravel()}.isdisjoint(gone)
    assert np.array_equal(kept.vectors, index.vectors[[row for row in range(400) if f"p{row}" not in gone]])


def test_removing_an_id_the_index_lacks_names_it_and_changes_nothing() -> None:
    index = index_of(10, "exact")
    with pytest.raises(UnknownProductError, match=r"2 product\(s\) not in the search index: \['nope', 'gone'\]"):
        index.without(["p1", "nope", "gone"])
    assert len(index) == 10


def test_hnsw_removal_keeps_tombstones_until_a_share_of_the_graph_then_rebuilds() -> None:
    index = index_of(400, "hnsw")
    few = index.without([f"p{row}" for row in range(40)])
    assert isinstance(few.engine, HnswIndex) and len(few.engine.removed) == 40 and few.engine.index.ntotal == 400
    many = few.without([f"p{row}" for row in range(40, 40 + int(COMPACT_SHARE * 400))])
    assert isinstance(many.engine, HnswIndex) and len(many.engine.removed) == 0 and many.engine.index.ntotal == len(many)
    assert every_answer(many).isdisjoint({f"p{row}" for row in range(140)})


def test_tombstones_round_trip_and_are_checked_on_load() -> None:
    index = index_of(300, "hnsw").without(["p1", "p2", "p50"])
    engine = index.engine
    assert isinstance(engine, HnswIndex)
    parameters = engine.parameters()
    assert parameters["removed"] == 3 and parameters["count"] == 297
    loaded = load_vector_index(parameters, engine.to_bytes(), engine.removed_bytes())
    queries = unit_vectors(20, index.dim, seed=3)
    assert np.array_equal(loaded.search(queries, 10)[0], engine.search(queries, 10)[0])

    def npy(array: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        np.save(buffer, array)
        return buffer.getvalue()

    for removed, message in [
        (npy(np.array([1, 1, 50])), "increasing positions"),
        (npy(np.array([1, 2, 300])), "increasing positions"),
        (npy(np.array([1.0, 2.0, 3.0])), "not a 1-D int64 array"),
        (npy(np.array([1, 2])), "parameters say removed=3"),
    ]:
        with pytest.raises(FbmlError, match=message):
            load_vector_index(parameters, engine.to_bytes(), removed)
    with pytest.raises(FbmlError, match="parameters say removed=3"):
        load_vector_index(parameters, engine.to_bytes())


# --- the bundle ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_removed_listings_stay_removed_after_save_and_load(copy: Path, method: str) -> None:  # noqa: F811
    if method == "hnsw":
        hnsw_copy(copy)
    before = load_bundle(copy).search_index()
    change = remove_listings(copy, ["p0-1"])  # a fifth of the graph: a tombstone
    assert (change.removed, change.products) == (1, len(before) - 1)
    index = load_bundle(copy).search_index()
    assert index.engine.method == method and len(index) == len(before) - 1
    assert "p0-1" not in every_answer(index)
    manifest = json.loads((copy / MANIFEST).read_text())
    assert (manifest["index"]["removed"] is not None) == (method == "hnsw")
    assert (manifest["index"]["vectors"] is None) == (method == "hnsw")  # a graph holds the vectors: stored once
    np.testing.assert_array_equal(index.vectors, np.delete(before.vectors, before.row("p0-1"), axis=0))
    with TestClient(create_app(load_bundle(copy))) as client:
        assert client.post("/recommend", json={"product_id": "p0-1"}).status_code == 404
        assert client.post("/recommend", json={"product_id": "p0-2"}).status_code == 200
        found = client.post("/recommend", json={"text": "novel bike", "k": 100}).json()["results"]
        assert len(found) == len(before) - 1 and "p0-1" not in {item["id"] for item in found}


@pytest.mark.parametrize("method", METHODS)
def test_an_index_left_empty_saves_and_loads(copy: Path, method: str) -> None:  # noqa: F811
    if method == "hnsw":
        hnsw_copy(copy)
    remove_listings(copy, [f"p0-{row}" for row in range(5)])
    assert manifest_of(copy)["index"]["catalogue_chunks"] == []
    index = load_bundle(copy).search_index()
    assert len(index) == 0 and index.engine.method == method and index.catalogue_chunks == ()
    grown_index = grown_hnsw(copy, [2]) if method == "hnsw" else None
    assert grown_index is None or grown_index.catalogue["id"].to_list() == ["new-0-0", "new-0-1"]


def test_removal_waits_for_no_one_and_leaves_the_bundle_alone_when_another_writer_holds_it(copy: Path) -> None:  # noqa: F811
    manifest = (copy / MANIFEST).read_bytes()
    with bundle_writer(copy, "fbml train"), pytest.raises(FbmlError, match=r"being written by pid \d+ \(fbml train\)"):
        remove_listings(copy, ["p0-1"])
    assert (copy / MANIFEST).read_bytes() == manifest


def test_a_crash_mid_save_leaves_the_old_bundle_whole(copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    hnsw_copy(copy)
    manifest = (copy / MANIFEST).read_bytes()
    written = store.write_atomically

    def crashing(path: Path, content: bytes) -> None:
        if path.name == MANIFEST:
            raise OSError(28, "No space left on device")
        written(path, content)

    monkeypatch.setattr(store, "write_atomically", crashing)
    with pytest.raises(OSError, match="No space left"):
        remove_listings(copy, ["p0-1"])
    monkeypatch.undo()
    assert (copy / MANIFEST).read_bytes() == manifest
    assert "p0-1" in load_bundle(copy).search_index()


def test_unknown_ids_to_remove_are_one_line_and_exit_2(copy: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    manifest = (copy / MANIFEST).read_bytes()
    assert main(["index", str(copy), "--remove", "p0-1", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fbml: error: 1 product(s) not in the search index: ['nope']"]
    assert (copy / MANIFEST).read_bytes() == manifest


def test_remove_file_takes_one_id_a_line(copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    ids = tmp_path / "sold.txt"
    ids.write_text("p0-2\n\n  p0-4  \n")
    assert main(["index", str(copy), "--remove-file", str(ids), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["removed"] == 2
    assert {"p0-2", "p0-4"}.isdisjoint(load_bundle(copy).search_index().catalogue["id"].to_list())
    assert main(["index", str(copy), "--remove-file", str(tmp_path / "none.txt")]) == 2
    assert capsys.readouterr().err.strip().endswith("none.txt: no such file")


# --- adding through the one listing-vector path -------------------------------------------------------------


def new_listings(root: Path) -> tuple[Path, Path, Path]:
    """Raw tables of three products of the bundle's categories (one with two photos, one with none, one replacing
    p0-0) and one of a category it does not know, and their photo folder."""
    products, images, photos = root / "products.csv", root / "images.csv", root / "photos"
    products.write_text(
        ",id,product_name,category,product_description,price,location\n"
        '0,n1,Red road bike,"bikes / road",Fast bike with gears,£120.00,"Leeds, West Yorkshire"\n'
        '1,n2,Old paperback novel,"books / fiction",A novel,£2.00,"York, North Yorkshire"\n'
        '2,p0-0,Oak chair,"chairs / dining",Solid oak seat,£30.00,"Hull, East Yorkshire"\n'
        '3,n4,Garden hose,"garden / tools",Long hose,£8.00,"Hull, East Yorkshire"\n'
    )
    images.write_text(",id,product_id\n0,i1,n1\n1,i2,n1\n2,i3,p0-0\n3,i4,n4\n")
    photos.mkdir()
    for number, colour in enumerate(("red", "blue", "green", "white"), start=1):
        Image.new("RGB", (40, 30), colour).save(photos / f"i{number}.jpg")
    return products, images, photos


@pytest.mark.parametrize("method", METHODS)
def test_fbml_index_add_links_new_listings_in_by_the_bundles_own_vectors(
    copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], method: str  # noqa: F811
) -> None:
    if method == "hnsw":
        hnsw_copy(copy)
    products, images, photos = new_listings(tmp_path)
    before = load_bundle(copy).search_index()
    args = ["index", str(copy), "--add", "--products", str(products), "--images", str(images), "--image-dir", str(photos),
            "--work-dir", str(tmp_path / "work"), "--device", "cpu", "--json"]
    assert main(args) == 0
    change = json.loads(capsys.readouterr().out)
    assert change == {"added": 2, "replaced": 1, "removed": 0, "refused_unknown_category": ["n4"], "products": len(before) + 2}
    bundle = load_bundle(copy)
    index = bundle.search_index()
    assert index.engine.method == method and len(index) == len(before) + 2
    assert index.catalogue["id"].to_list()[-3:] == ["n1", "n2", "p0-0"]
    assert index.listing(index.row("n1"))["photos"] == ["i1", "i2"] and index.listing(index.row("n2"))["photos"] == []
    assert index.listing(index.row("p0-0"))["category_path"] == "chairs / dining"

    tables = known_categories(clean_tables(products, images), bundle.codec)
    listed = with_photo_ids(tables.cleaned.products, tables)
    expected = catalogue_vectors(bundle, tables, photos, listed, work_dir=tmp_path / "check", progress=False)
    for row, product_id in enumerate(listed["id"].to_list()):
        np.testing.assert_allclose(index.vectors[index.row(product_id)], expected[row], atol=1e-5)
        assert index.nearest(expected[row], 1)[0].row == index.row(product_id)
    assert listed.select(CATALOGUE_COLUMNS).equals(index.catalogue.tail(3))


def test_adding_only_products_of_unknown_categories_is_refused(copy: Path, tmp_path: Path) -> None:  # noqa: F811
    products, images, photos = new_listings(tmp_path)
    products.write_text(products.read_text().replace("bikes /", "garden /").replace("books /", "garden /")
                        .replace("chairs /", "garden /"))  # fmt: skip
    manifest = (copy / MANIFEST).read_bytes()
    with pytest.raises(FbmlError, match=r"no product to add: 4 product\(s\) of categories the bundle does not know"):
        add_listings(copy, clean_tables(products, images), photos, work_dir=tmp_path / "work", progress=False)
    assert (copy / MANIFEST).read_bytes() == manifest


def test_save_keeps_an_unchanged_bundles_files(copy: Path) -> None:  # noqa: F811
    """Re-saving what was loaded writes the same manifest (tombstones included)."""
    hnsw_copy(copy)
    remove_listings(copy, ["p0-2"])
    manifest = (copy / MANIFEST).read_bytes()
    save_bundle(load_bundle(copy), copy)
    assert (copy / MANIFEST).read_bytes() == manifest


def grown_hnsw(copy: Path, additions: list[int]) -> SearchIndex:  # noqa: F811
    """The copy's index (made HNSW first if it is exact), grown by a save per ``additions`` (that many new listings
    each): what it saved."""
    if load_bundle(copy).search_index().engine.method == "exact":
        hnsw_copy(copy)
    for count in additions:
        bundle = load_bundle(copy)
        index = bundle.search_index()
        ids = [f"new-{len(index)}-{row}" for row in range(count)]
        save_bundle(attrs.evolve(bundle, index=index.with_listings(unit_vectors(count, index.dim, seed=len(index)), new_rows(ids))), copy)
    return load_bundle(copy).search_index()


def test_an_addition_writes_the_graph_and_a_chunk_of_the_new_rows_only(copy: Path) -> None:  # noqa: F811
    before = grown_hnsw(copy, [])
    first = manifest_of(copy)["index"]["vector_chunks"]
    graph = manifest_of(copy)["index"]["graph"]["file"]
    written = {file.name: file.stat().st_ino for file in copy.iterdir()}
    index = grown_hnsw(copy, [2])
    entry = manifest_of(copy)["index"]
    assert entry["vectors"] is None and len(entry["vector_chunks"]) == 2 and entry["vector_chunks"][0] == first[0]
    assert (copy / first[0]["file"]).stat().st_ino == written[first[0]["file"]]  # the old rows' file is not rewritten
    assert entry["graph"]["file"] != graph and np.load(copy / entry["vector_chunks"][1]["file"]).shape == (2, index.dim)
    assert isinstance(index.engine, HnswIndex) and [chunk.stop for chunk in index.engine.chunks] == [len(before), len(before) + 2]
    np.testing.assert_array_equal(index.vectors[: len(before)], before.vectors)
    assert [index.nearest(vector, 1)[0].row for vector in index.vectors] == list(range(len(index)))


def test_vector_chunks_merge_as_they_grow_and_reload_as_saved(copy: Path) -> None:  # noqa: F811
    index = grown_hnsw(copy, [2, 1, 1, 3])  # chunks of 5, then 5 | 2, 5 | 2 | 1, 9 (1 joins 1 joins 2 joins 5), 9 | 3
    assert isinstance(index.engine, HnswIndex) and [chunk.stop for chunk in index.engine.chunks] == [9, 12]
    assert len(manifest_of(copy)["index"]["vector_chunks"]) == 2
    queries = unit_vectors(20, index.dim, seed=7)
    saved = load_bundle(copy).search_index()
    for got, want in zip(saved.search(queries, 5), index.search(queries, 5), strict=True):
        np.testing.assert_array_equal(got, want)


def test_removed_rows_are_never_returned_after_additions_and_a_reload(copy: Path) -> None:  # noqa: F811
    grown_hnsw(copy, [3])
    remove_listings(copy, ["p0-1", "new-5-1"])
    index = grown_hnsw(copy, [2])
    assert isinstance(index.engine, HnswIndex) and len(index.engine.removed) == 2 and len(index.engine.chunks) == 2
    assert every_answer(index).isdisjoint({"p0-1", "new-5-1"}) and {"new-5-0", "new-5-2", "new-6-0"} <= every_answer(index)


def test_a_tampered_vector_chunk_is_refused(copy: Path) -> None:  # noqa: F811
    index = grown_hnsw(copy, [2])
    manifest = manifest_of(copy)
    ref = manifest["index"]["vector_chunks"][1]
    (copy / ref["file"]).unlink()
    (copy / ref["file"]).write_bytes(store.npy_bytes(unit_vectors(2, index.dim, seed=99)))
    load_error(copy, rf"bundle file {ref['file']} does not match its checksum")
    for vectors, message in [
        (np.full((2, index.dim), np.nan, np.float32), r"2 value\(s\)|not finite"),
        (unit_vectors(2, index.dim + 1, seed=99), r"hnsw vector chunk 1 holds float32 \(2, \d+\), not"),
        (unit_vectors(3, index.dim, seed=99), r"hnsw vector chunks hold \d+ vectors, the graph has \d+ nodes"),
        (unit_vectors(2, index.dim, seed=99) * 3, r"not of length 1"),
    ]:
        replace_file(copy, ref, store.npy_bytes(vectors))
        write_manifest(copy, manifest)
        load_error(copy, message)
    del manifest["index"]["vector_chunks"][1]
    write_manifest(copy, manifest)
    load_error(copy, r"hnsw vector chunks hold \d+ vectors, the graph has \d+ nodes")


def test_a_bundle_whose_graph_holds_its_vectors_loads_and_saves_as_chunks(copy: Path) -> None:  # noqa: F811
    """A bundle saved before vector chunks (one faiss file, graph and vectors) loads as it was; a save splits it."""
    index = grown_hnsw(copy, [2])
    assert isinstance(index.engine, HnswIndex)
    manifest = manifest_of(copy)
    replace_file(copy, manifest["index"]["graph"], index.engine.to_bytes())
    del manifest["index"]["vector_chunks"]
    write_manifest(copy, manifest)
    old = load_bundle(copy)
    queries = unit_vectors(20, index.dim, seed=7)
    assert old.index is not None and np.array_equal(old.index.search(queries, 5)[0], index.search(queries, 5)[0])
    save_bundle(old, copy)
    assert len(manifest_of(copy)["index"]["vector_chunks"]) == 1
    assert np.array_equal(load_bundle(copy).search_index().search(queries, 5)[0], index.search(queries, 5)[0])


def test_additions_to_a_saved_graph_write_patches_and_load_back_as_the_graph_added_to(copy: Path, tmp_path: Path) -> None:  # noqa: F811
    """A graph read from the bundle is not written again by an addition (within ``PATCH_SHARE`` of its nodes): a patch
    of the links it changed is, and the bundle loads back the very graph that was added to; a removal keeps both; past
    the share, or saved into another folder, the graph is written whole."""
    grown_hnsw(copy, [100])
    graph = manifest_of(copy)["index"]["graph"]
    assert manifest_of(copy)["index"]["graph_patches"] is None
    written = (copy / graph["file"]).stat().st_ino
    grown_hnsw(copy, [2])
    bundle = load_bundle(copy)
    added = bundle.search_index().with_listings(unit_vectors(3, bundle.search_index().dim, seed=8), new_rows(["a", "b", "c"]))
    save_bundle(attrs.evolve(bundle, index=added), copy)
    entry = manifest_of(copy)["index"]
    assert entry["graph"] == graph and (copy / graph["file"]).stat().st_ino == written and len(entry["graph_patches"]) == 2
    saved = load_bundle(copy).search_index()
    assert isinstance(saved.engine, HnswIndex) and isinstance(added.engine, HnswIndex)
    assert saved.engine.graph_bytes() == added.engine.graph_bytes() and saved == added
    queries = unit_vectors(20, added.dim, seed=7)
    for got, want in zip(saved.search(queries, 5), added.search(queries, 5), strict=True):
        np.testing.assert_array_equal(got, want)
    remove_listings(copy, ["p0-1", "b"])
    assert manifest_of(copy)["index"]["graph"] == graph and manifest_of(copy)["index"]["graph_patches"] == entry["graph_patches"]
    assert every_answer(load_bundle(copy).search_index()).isdisjoint({"p0-1", "b"})
    save_bundle(load_bundle(copy), tmp_path / "other")
    assert manifest_of(tmp_path / "other")["index"]["graph_patches"] is None
    assert load_bundle(tmp_path / "other").search_index().engine.graph_bytes() == saved.engine.graph_bytes()  # type: ignore[attr-defined]
    grown_hnsw(copy, [30])  # 105 + 5 + 30 nodes: over a quarter of the 105 saved
    assert manifest_of(copy)["index"]["graph"] != graph and manifest_of(copy)["index"]["graph_patches"] is None


def test_a_tampered_graph_patch_is_refused(copy: Path) -> None:  # noqa: F811
    grown_hnsw(copy, [100, 2])
    manifest = manifest_of(copy)
    ref = manifest["index"]["graph_patches"][0]
    content = bytearray((copy / ref["file"]).read_bytes())
    content[-8] ^= 0x01
    (copy / ref["file"]).unlink()
    (copy / ref["file"]).write_bytes(bytes(content))
    load_error(copy, rf"bundle file {ref['file']} does not match its checksum")
    replace_file(copy, ref, store.npy_bytes(np.arange(7, dtype=np.int64)))
    write_manifest(copy, manifest)
    load_error(copy, r"hnsw graph patch 0 does not follow the graph's 105 nodes")
    del manifest["index"]["graph_patches"]
    write_manifest(copy, manifest)
    load_error(copy, r"hnsw vector chunks hold 107 vectors, the graph has 105 nodes")
    manifest["index"].update(graph_patches=[ref], vector_chunks=None, vectors=None)
    write_manifest(copy, manifest)
    load_error(copy, r"only an hnsw graph saved beside its vector chunks names graph patches")


def catalogue_ids(copy: Path) -> list[list[str]]:  # noqa: F811
    """The ids of each catalogue chunk the copy's manifest names, in order."""
    refs = manifest_of(copy)["index"]["catalogue_chunks"]
    return [[row["id"] for row in json.loads((copy / ref["file"]).read_text())] for ref in refs]


@pytest.mark.parametrize("method", METHODS)
def test_an_addition_writes_a_catalogue_chunk_of_the_new_rows_only(copy: Path, method: str) -> None:  # noqa: F811
    if method == "hnsw":
        hnsw_copy(copy)
    first = manifest_of(copy)["index"]["catalogue_chunks"]
    assert manifest_of(copy)["index"]["catalogue"] is None and len(first) == 1
    written = (copy / first[0]["file"]).stat().st_ino
    bundle = load_bundle(copy)
    index = bundle.search_index()
    assert [(chunk.start, chunk.stop) for chunk in index.catalogue_chunks] == [(0, 5)]
    grown_index = index.with_listings(unit_vectors(2, index.dim, seed=3), new_rows(["n0", "n1"]))
    save_bundle(attrs.evolve(bundle, index=grown_index), copy)
    chunks = manifest_of(copy)["index"]["catalogue_chunks"]
    assert chunks[0] == first[0] and (copy / first[0]["file"]).stat().st_ino == written  # the old rows' file is not rewritten
    assert catalogue_ids(copy) == [[f"p0-{row}" for row in range(5)], ["n0", "n1"]]
    saved = load_bundle(copy).search_index()
    assert saved == grown_index and saved.engine.method == method
    assert [(chunk.start, chunk.stop) for chunk in saved.catalogue_chunks] == [(0, 5), (5, 7)]


def test_catalogue_chunks_merge_as_they_grow_and_a_removal_rewrites_them_from_its_first_row(copy: Path) -> None:  # noqa: F811
    index = grown_hnsw(copy, [2, 1, 1, 3])  # as the vector chunks: 5, then 5 | 2, 5 | 2 | 1, 9, 9 | 3
    assert [chunk.stop for chunk in index.catalogue_chunks] == [9, 12] and len(catalogue_ids(copy)) == 2
    first = manifest_of(copy)["index"]["catalogue_chunks"][0]
    remove_listings(copy, ["new-9-1"])  # row 10: the chunk of rows 0-8 is kept, the rows after it are one chunk
    assert manifest_of(copy)["index"]["catalogue_chunks"][0] == first
    assert catalogue_ids(copy)[1] == ["new-9-0", "new-9-2"]
    remove_listings(copy, ["p0-1"])  # row 1: every chunk from it on is written again
    ids = catalogue_ids(copy)
    assert len(ids) == 1 and "p0-1" not in ids[0] and len(ids[0]) == 10
    saved = load_bundle(copy).search_index()
    assert saved.catalogue["id"].to_list() == ids[0] and every_answer(saved).isdisjoint({"p0-1", "new-9-1"})


def test_a_bundle_saved_into_another_folder_writes_every_chunk_there(copy: Path, tmp_path: Path) -> None:  # noqa: F811
    index = grown_hnsw(copy, [2])
    other = tmp_path / "other"
    save_bundle(load_bundle(copy), other)
    assert catalogue_ids(other) == catalogue_ids(copy) and len(manifest_of(other)["index"]["vector_chunks"]) == 2
    assert load_bundle(other).search_index() == index


def test_a_bundle_of_one_catalogue_file_loads_and_keeps_it_as_its_first_chunk(copy: Path) -> None:  # noqa: F811
    """A bundle saved before catalogue chunks (the manifest's ``catalogue`` names one file of every row) loads as it
    was; a save names that file as the first chunk and adds one of the new rows."""
    before = grown_hnsw(copy, [2])
    manifest = manifest_of(copy)
    rows = [row for ids in catalogue_ids(copy) for row in ids]
    old = manifest["index"]["catalogue_chunks"][0]
    replace_file(copy, old, json.dumps([row for part in manifest["index"]["catalogue_chunks"]
                                         for row in json.loads((copy / part["file"]).read_text())]).encode())
    manifest["index"].update(catalogue=old, catalogue_chunks=None)
    write_manifest(copy, manifest)
    loaded = load_bundle(copy).search_index()
    assert loaded == before and loaded.catalogue["id"].to_list() == rows
    index = grown_hnsw(copy, [1])
    entry = manifest_of(copy)["index"]
    assert entry["catalogue"] is None and entry["catalogue_chunks"][0] == old
    assert catalogue_ids(copy) == [rows, ["new-7-0"]] and index.catalogue["id"].to_list() == [*rows, "new-7-0"]


def test_a_tampered_catalogue_chunk_is_refused(copy: Path) -> None:  # noqa: F811
    grown_hnsw(copy, [2])
    manifest = manifest_of(copy)
    ref = manifest["index"]["catalogue_chunks"][1]
    rows = json.loads((copy / ref["file"]).read_text())
    (copy / ref["file"]).unlink()
    (copy / ref["file"]).write_text(json.dumps([{**rows[0], "price": 1.5}, rows[1]]))
    load_error(copy, rf"bundle file {ref['file']} does not match its checksum")
    first = json.loads((copy / manifest["index"]["catalogue_chunks"][0]["file"]).read_text())
    for content, message in [
        ({"rows": rows}, r"is not a valid catalogue: expected a JSON list"),
        ([rows[0]], r"the index has 7 vectors for 6 catalogue rows"),
        ([rows[0], first[0]], r"Catalogue: column 'id' fails unique"),
        ([rows[0], {**rows[1], "photos": [" "]}], r"Catalogue: column 'photos' fails non_blank"),
    ]:
        replace_file(copy, ref, json.dumps(content).encode())
        write_manifest(copy, manifest)
        load_error(copy, message)
    del manifest["index"]["catalogue_chunks"][1]
    write_manifest(copy, manifest)
    load_error(copy, r"the index has 7 vectors for 5 catalogue rows")
    for catalogue, chunks in [(manifest["index"]["catalogue_chunks"][0], manifest["index"]["catalogue_chunks"]), (None, None)]:
        manifest["index"].update(catalogue=catalogue, catalogue_chunks=chunks)
        write_manifest(copy, manifest)
        load_error(copy, r"an index names its catalogue file or its catalogue chunks, one of them")


@pytest.mark.parametrize("method", METHODS)
def test_new_listings_are_checked_and_a_refused_addition_changes_nothing(method: str) -> None:
    """Only the new rows are checked (the index's own were when it was made): each is refused as a whole index
    holding it would be."""
    index = index_of(30, method)
    vectors = unit_vectors(2, index.dim, seed=4)
    for rows, added, message in [
        (new_rows(["n0", "n0"]), vectors, r"Catalogue: column 'id' fails unique"),
        (new_rows(["n0", " "]), vectors, r"Catalogue: column 'id' fails non_blank"),
        (new_rows(["n0", "n1"]).with_columns(price=pl.lit(-1.0)), vectors, r"Catalogue: column 'price' fails finite_non_negative"),
        (new_rows(["n0", "n1"]), vectors * 2, r"2 of the index's vectors are not of length 1"),
        (new_rows(["n0", "n1"]), np.full_like(vectors, np.nan), r"not finite|NaN"),
        (new_rows(["n0", "n1"]), vectors[:1], r"1 vectors for 2 new catalogue rows"),
    ]:
        with pytest.raises(FbmlError, match=message):
            index.with_listings(added, rows)
    assert len(index) == len(index.engine) == 30 and "n0" not in index
    replaced = index.with_listings(vectors, new_rows(["p3", "n0"]))  # an id it holds is no duplicate: it is replaced
    assert len(replaced) == 31 and replaced.catalogue["id"].to_list()[-2:] == ["p3", "n0"]


def test_an_exact_index_must_name_its_vectors(copy: Path) -> None:  # noqa: F811
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["index"]["vectors"] = None
    write_manifest(copy, manifest)
    with pytest.raises(FbmlError, match="an exact index names its vectors file"):
        load_bundle(copy)
