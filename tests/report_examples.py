"""What the report's tests share: model results over five classes, photos good and bad, and a parser
for the page. Not a test module: the report's test modules import it."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import numpy as np
from fbml.workflows.report.results import ModelResults
from PIL import Image

CLASSES = ("Appliances", "Baby & Kids Stuff", "Clothes, Footwear & Accessories", "Computers & Software", "Garden")
EVIL = "<script>alert('owned')</script>"


class PageParts(HTMLParser):
    """The parts of a report page the tests look at: tables (by class and model), images, scripts, links, text."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[dict[str, object]] = []
        self.images: list[dict[str, str | None]] = []
        self.tags: list[str] = []
        self.hrefs: list[str] = []
        self.text: list[str] = []
        self._in_body = False
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags.append(tag)
        if tag == "table":
            self.tables.append({"class": attributes.get("class"), "model": attributes.get("data-model"), "rows": []})
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self._row = []
        elif tag in ("td", "th") and self._row is not None and self._cell is None:
            self._cell = []
        elif tag == "img":
            self.images.append(attributes)
        if "href" in attributes:
            self.hrefs.append(attributes["href"] or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "tbody":
            self._in_body = False
        elif tag == "tr" and self._row is not None:
            rows = self.tables[-1]["rows"]
            assert isinstance(rows, list)
            rows.append(self._row)
            self._row = None
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)

    def rows(self, kind: str, model: str) -> list[list[str]]:
        found = [table["rows"] for table in self.tables if table["class"] == kind and table["model"] == model]
        assert len(found) == 1, f"expected one {kind} table for {model}, found {len(found)}"
        rows = found[0]
        assert isinstance(rows, list)
        return rows


def parse(page: Path) -> PageParts:
    """The parts of the page at ``page``."""
    parser = PageParts()
    parser.feed(page.read_text(encoding="utf-8"))
    parser.close()
    return parser


def example_photos(parent: Path) -> list[Path | None]:
    """In ``parent``/photos: three real photos (JPEG, transparent PNG, tall grey JPEG), an unreadable file; then a
    missing one, and no photo."""
    folder = parent / "photos"
    folder.mkdir()
    Image.new("RGB", (640, 480), (200, 40, 40)).save(folder / "red.jpg")
    Image.new("RGBA", (300, 300), (0, 128, 0, 100)).save(folder / "green.png")
    Image.new("L", (100, 400), 90).save(folder / "tall.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    return [folder / "red.jpg", folder / "green.png", folder / "tall.jpg", folder / "broken.jpg", folder / "missing.jpg", None]


def example_results(name: str, products: int, photos: list[Path | None], *, seed: int, skill: float = 2.0) -> ModelResults:
    """Plausible results over ``CLASSES``; class 4 ("Garden") is never the truth and never predicted."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, products)
    logits = rng.normal(0.0, 1.0, (products, len(CLASSES)))
    logits[np.arange(products), labels] += skill
    logits[:, 4] = -30.0
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    probabilities[0] = [0.01, 0.97, 0.01, 0.005, 0.005]  # product 0: the most confident mistake (truth 0)
    labels[0] = 0
    titles = [f"listing {index}" for index in range(products)]
    titles[0] = f"{EVIL} & cheap"
    return ModelResults(
        name=name,
        class_names=CLASSES,
        product_ids=[f"p{index:04d}" for index in range(products)],
        labels=labels,
        probabilities=probabilities,
        titles=titles,
        photos=[photos[index % len(photos)] for index in range(products)],
    )
