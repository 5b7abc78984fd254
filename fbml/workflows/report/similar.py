"""The report's similar-listings section: how alike the evaluated products' ten nearest others are (at the
category, the subcategory and the full path, and how often they tie), and a dozen queries shown with their
neighbours (photo, name, category path, score), so that a reader looks at the answers, not only the score."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs

from fbml.workflows.report.thumbnails import Thumb


@attrs.frozen
class ShownListing:
    """A listing as the section shows it."""

    id: str
    name: str
    path: str
    photo: Path | None


@attrs.frozen
class SimilarQuery:
    """A query listing and its nearest others, best first, each with its cosine similarity."""

    query: ShownListing
    neighbours: tuple[tuple[ShownListing, float], ...]


@attrs.frozen
class SimilarListings:
    """The figures (``Alikeness.to_json``) and the queries shown."""

    figures: Mapping[str, float]
    queries: tuple[SimilarQuery, ...]

    def photos(self) -> list[Path | None]:
        """Every photo the section shows, once each, in page order."""
        found: dict[Path | None, None] = {}
        for query in self.queries:
            found[query.query.photo] = None
            for listing, _ in query.neighbours:
                found[listing.photo] = None
        return list(found)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def similar_section(similar: SimilarListings, thumbs: Mapping[Path | None, Thumb]) -> str:
    """The section's HTML: the figures, then one table per query."""
    figures = "".join(f'<tr><th>{_e(name.replace("_", " "))}</th><td class="num">{value:.3f}</td></tr>'
                      for name, value in similar.figures.items())  # fmt: skip
    queries = "".join(_query_table(query, thumbs) for query in similar.queries)
    return (
        '<section id="similar"><h2>Similar listings</h2>'
        "<p>How often the ten listings nearest each evaluated product share its category, its subcategory (the "
        "first two levels of the category path) and its whole path, and the share of queries whose ten "
        "neighbours all score the same (the index cannot order them).</p>"
        f'<table class="notes"><tbody>{figures}</tbody></table>{queries}</section>'
    )


def _query_table(query: SimilarQuery, thumbs: Mapping[Path | None, Thumb]) -> str:
    head = (f"<h3>{_e(query.query.name)}</h3>"
            f'<p class="muted">{_e(query.query.path)} &middot; {_e(query.query.id)}</p>{_img(query.query, thumbs)}')  # fmt: skip
    rows = "".join(
        f"<tr><td>{_img(listing, thumbs)}</td><td class=\"title\">{_e(listing.name)}</td>"
        f"<td>{_e(listing.path)}</td><td class=\"num\">{score:.3f}</td></tr>"
        for listing, score in query.neighbours
    )
    table = ('<table class="mistakes similar"><thead><tr><th>photo</th><th>listing</th><th>category path</th>'
             f'<th class="num">score</th></tr></thead><tbody>{rows}</tbody></table>')  # fmt: skip
    return f'<div class="query">{head}{table}</div>'


def _img(listing: ShownListing, thumbs: Mapping[Path | None, Thumb]) -> str:
    thumb = thumbs[listing.photo]
    alt = thumb.problem or f"photo of {listing.name}"
    return f'<img src="{_e(thumb.file)}" alt="{_e(alt)}" width="96" height="96">'


def shown_queries(rows: Sequence[int], neighbours: Sequence[Sequence[tuple[int, float]]],
                  listings: Sequence[ShownListing]) -> tuple[SimilarQuery, ...]:  # fmt: skip
    """The queries at ``rows`` of ``listings`` with their neighbours (rows of ``listings`` and scores)."""
    return tuple(SimilarQuery(listings[row], tuple((listings[other], score) for other, score in found))
                 for row, found in zip(rows, neighbours, strict=True))  # fmt: skip
