"""The report of `fbml.vision.cleaning.clean_images`: one row per source file, checked against ``ImageCleaningFiles``.

Apart from the cleaning itself, so that its modules (polars, the contract's rules) load while the workers clean.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import attrs
import polars as pl
from contracts.rules import (
    CLEANED,
    IMAGE_CLEANING_FILES_SCHEMA,
    NULLABLE_IMAGE_CLEANING_COLUMNS,
    REJECTED,
    image_cleaning_file_rules,
)

from fbml.tables.validation import rules_checked

if TYPE_CHECKING:
    from contracts import ImageCleaningFiles
    from pandera.typing.polars import DataFrame


@attrs.frozen
class ImageCleaningReport:
    """What `clean_images` did with each source file (``ImageCleaningFiles``): one row per file, in sorted order."""

    files: DataFrame[ImageCleaningFiles] = attrs.field(eq=attrs.cmp_using(eq=pl.DataFrame.equals), hash=False)

    @property
    def cleaned(self) -> int:
        """Number of files written as cleaned JPEGs."""
        return self.files.filter(pl.col("status") == CLEANED).height

    @property
    def rejected(self) -> int:
        """Number of files rejected."""
        return self.files.filter(pl.col("status") == REJECTED).height

    def rejected_by_reason(self) -> dict[str, int]:
        """Rejection counts keyed by reason, per-file details (after ':') dropped."""
        counts = (
            self.files.filter(pl.col("status") == REJECTED)
            .group_by(pl.col("reason").str.split(":").list.first())
            .len()
            .sort("reason")
        )
        return dict(zip(counts["reason"], counts["len"], strict=True))


def cleaning_report(files: list[str], reasons: list[str | None], outputs: list[str | None]) -> ImageCleaningReport:
    """The report of source `files` (each rejected with its reason, or cleaned into its output), sorted by file name,
    checked by the plain polars predicates of ``ImageCleaningFiles`` (pandera's import would cost more than the check)."""
    rows = {
        "file": files,
        "status": [REJECTED if reason else CLEANED for reason in reasons],
        "reason": reasons,
        "output": outputs,
    }
    frame = pl.DataFrame(rows, schema=IMAGE_CLEANING_FILES_SCHEMA).sort("file")
    checked = rules_checked(frame, "ImageCleaningFiles", IMAGE_CLEANING_FILES_SCHEMA, image_cleaning_file_rules(),
                            nullable=NULLABLE_IMAGE_CLEANING_COLUMNS, unique="file")
    return ImageCleaningReport(cast("DataFrame[ImageCleaningFiles]", checked))
