"""An evaluation as one self-contained HTML page: per model its scores, charts and worst mistakes.

``write_report`` writes ``index.html`` and its pictures into one folder. The figures are computed by
``fbml.modeling.metrics`` and drawn by ``fbml.modeling.charts``; here, ``results`` holds the models'
predictions and the figures shown of them, ``thumbnails`` the photos of the mistakes (and of the similar listings, ``similar``), ``page`` the HTML
and ``folder`` the folder's files (an earlier report's are replaced, anything else is refused).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from fbml.errors import FbmlError
from fbml.workflows.report.folder import report_files, write_folder
from fbml.workflows.report.page import chart_pictures, page
from fbml.workflows.report.results import ModelResults, model_figures
from fbml.workflows.report.similar import SimilarListings, similar_section
from fbml.workflows.report.thumbnails import mistake_photos, thumbnails

__all__ = ["ModelResults", "SimilarListings", "write_report"]


def write_report(
    directory: Path,
    results: Sequence[ModelResults],
    *,
    title: str,
    notes: Mapping[str, str] | None = None,
    mistakes: int = 12,
    similar: SimilarListings | None = None,
) -> Path:
    """Write ``directory/index.html`` with its pictures for every model in ``results`` (and the similar-listings
    section when given); return the page's path.

    ``directory`` is created; an existing one must be empty or an earlier report (whose files are replaced).
    """
    directory = Path(directory)
    if not results:
        raise FbmlError("a report needs the results of at least one model")
    if mistakes < 0:
        raise FbmlError(f"mistakes must be 0 or more, got {mistakes}")
    names = [result.name for result in results]
    if len(set(names)) != len(names):
        raise FbmlError(f"model names must be distinct, got {names}")
    previous = report_files(directory)
    models = [model_figures(result, _stem(index, result.name), mistakes) for index, result in enumerate(results)]
    photos = dict.fromkeys([*mistake_photos(models), *(similar.photos() if similar is not None else [])])
    thumbs, thumb_pictures = thumbnails(list(photos))
    pictures = [*thumb_pictures, *(picture for model in models for picture in chart_pictures(model))]
    extra = "" if similar is None else similar_section(similar, thumbs)
    return write_folder(directory, previous, pictures, page(title, notes or {}, models, thumbs, extra))


def _stem(index: int, name: str) -> str:
    """A file-name-safe prefix for a model's files, unique by its position."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40]
    return f"{index + 1}-{slug or 'model'}"
