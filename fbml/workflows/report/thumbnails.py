"""The photos of the mistakes the page shows, as small square JPEGs; a placeholder for those that cannot be shown."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import attrs
from PIL import Image, ImageDraw

from fbml.modeling.charts import GRID, MUTED, sized_font
from fbml.vision.cleaning import clean_image, open_image
from fbml.workflows.report.folder import Picture
from fbml.workflows.report.results import ModelFigures

THUMBNAIL = 160
MAX_PHOTO_PIXELS = 89_478_485
PLACEHOLDER = "no-photo.png"


@attrs.frozen
class Thumb:
    """What the page shows for a product's photo: a picture file and, for a placeholder, why."""

    file: str
    problem: str | None = None


def mistake_photos(figures: Sequence[ModelFigures]) -> list[Path | None]:
    """The photos of all models' shown mistakes, each once, in page order."""
    photos: dict[Path | None, None] = {}
    for model in figures:
        for row in model.mistakes:
            photos[model.results.photos[int(row)]] = None
    return list(photos)


def thumbnails(photos: Sequence[Path | None]) -> tuple[dict[Path | None, Thumb], list[Picture]]:
    """A thumbnail file per readable photo, the placeholder (drawn once) for the others."""
    thumbs: dict[Path | None, Thumb] = {}
    pictures: list[Picture] = []
    for path in photos:
        image, problem = _thumbnail(path)
        if image is None:
            thumbs[path] = Thumb(PLACEHOLDER, problem)
        else:
            name = f"photo-{len(pictures) + 1:03d}.jpg"
            pictures.append(Picture(name, image))
            thumbs[path] = Thumb(name)
    if any(thumb.file == PLACEHOLDER for thumb in thumbs.values()):
        pictures.append(Picture(PLACEHOLDER, _placeholder()))
    return thumbs, pictures


def _thumbnail(path: Path | None) -> tuple[Image.Image | None, str | None]:
    """The photo at ``path`` as a ``THUMBNAIL`` px square, or ``None`` and why it cannot be shown."""
    if path is None:
        return None, "no photo"
    try:
        with open_image(path, size=THUMBNAIL, max_pixels=MAX_PHOTO_PIXELS) as image:
            return clean_image(image, THUMBNAIL), None
    except FileNotFoundError:
        return None, "photo missing"
    except Exception:  # one bad photo must never stop the report
        return None, "photo unreadable"


def _placeholder() -> Image.Image:
    """A grey square saying there is no photo to show."""
    picture = Image.new("RGB", (THUMBNAIL, THUMBNAIL), (243, 244, 246))
    draw = ImageDraw.Draw(picture)
    draw.rectangle((0, 0, THUMBNAIL - 1, THUMBNAIL - 1), outline=GRID, width=2)
    draw.text((THUMBNAIL // 2, THUMBNAIL // 2), "no photo", fill=MUTED, font=sized_font(18), anchor="mm")
    return picture
