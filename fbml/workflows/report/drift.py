"""``fbml monitor --report DIR``: one self-contained HTML page of every check, with a picture per drifted check
(the training profile's shares beside the new listings', per bin, label or rate), written into one folder
as the evaluation report is (``fbml.workflows.report.folder``)."""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw

from fbml.modeling.charts import GRID, INK, MUTED, sized_font
from fbml.workflows.report.folder import Picture, report_files, write_folder

if TYPE_CHECKING:
    from fbml.workflows.monitor import Check, MonitorResult

_REFERENCE = (150, 156, 166)
_OBSERVED = (220, 38, 38)
_MAX_BARS = 20
_CSS = """
body { font-family: system-ui, sans-serif; color: #1f2937; margin: 2rem; }
main { max-width: 980px; margin: auto; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { padding: 0.25rem 0.7rem; border-bottom: 1px solid #e5e7eb; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.drifted td { color: #b91c1c; font-weight: 600; }
figure { margin: 1.5rem 0; }
"""


def write_monitor_report(directory: Path, result: MonitorResult, notes: Mapping[str, str]) -> Path:
    """Write ``directory/index.html`` and a picture per drifted check; the page's path. ``directory`` must be
    new, empty or an earlier report (whose files are replaced)."""
    previous = report_files(directory)
    drifted = [check for check in result.checks if check.drifted]
    pictures = [Picture(_file_name(index, check), shares_chart(check)) for index, check in enumerate(drifted)]
    return write_folder(directory, previous, pictures, monitor_page(result, notes, [picture.name for picture in pictures]))


def _file_name(index: int, check: Check) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", check.name.lower()).strip("-")[:60]
    return f"{index + 1}-{slug or 'check'}.png"


def monitor_page(result: MonitorResult, notes: Mapping[str, str], pictures: Sequence[str]) -> str:
    """The HTML document: the verdict, the notes, every check (drifted ones marked), then the pictures."""
    drifted = [check for check in result.checks if check.drifted]
    verdict = f"drift in {len(drifted)} of {len(result.checks)} checks" if drifted else f"no drift ({len(result.checks)} checks)"
    rows = "".join(
        f'<tr class="{"drifted" if check.drifted else ""}"><td>{_e(check.name)}</td><td>{_e(check.statistic)}</td>'
        f'<td class="num">{check.value:.4f}</td><td class="num">{check.threshold:.4f}</td>'
        f"<td>{'drifted' if check.drifted else 'ok'}</td></tr>"
        for check in result.checks
    )
    table = ("<table><thead><tr><th>check</th><th>statistic</th><th>value</th><th>threshold</th><th></th></tr></thead>"
             f"<tbody>{rows}</tbody></table>")  # fmt: skip
    figures = "".join(
        f'<figure><img src="{_e(name)}" alt="{_e(check.name)}"><figcaption>{_e(check.name)}: {_e(check.statistic)} '
        f"{check.value:.4f} over its threshold {check.threshold:.4f}</figcaption></figure>"
        for name, check in zip(pictures, drifted, strict=True)
    )
    facts = "".join(f"<tr><th>{_e(key)}</th><td>{_e(value)}</td></tr>" for key, value in notes.items())
    remarks = "".join(f"<li>{_e(note)}</li>" for note in result.notes)
    body = (f"<h1>fbml monitor</h1><p><strong>{_e(verdict)}</strong></p><table><tbody>{facts}</tbody></table>"
            f"{f'<ul>{remarks}</ul>' if remarks else ''}{table}{figures}")  # fmt: skip
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>fbml monitor</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


def shares_chart(check: Check) -> Image.Image:
    """Horizontal bar pairs: the training profile's share (grey) and the new listings' (red) of each label."""
    font, small = sized_font(12), sized_font(11)
    labels = [label[:40] for label in check.labels[:_MAX_BARS]]
    left = max([int(font.getlength(label)) for label in labels] + [40]) + 14
    plot, row, top = 320, 30, 34
    bottom = top + row * len(labels)
    picture = Image.new("RGB", (left + plot + 70, bottom + 26), "white")
    draw = ImageDraw.Draw(picture)
    most = max([*check.reference[:_MAX_BARS], *check.observed[:_MAX_BARS], 1e-9])

    def x(value: float) -> float:
        return left + value / most * plot

    draw.text((left, 6), f"{check.name}: training (grey) vs new (red)", fill=INK, font=small)
    for index, label in enumerate(labels):
        middle = top + index * row + row / 2
        draw.line((left, middle + row / 2, left + plot, middle + row / 2), fill=GRID)
        draw.text((left - 8, middle), label, fill=INK, font=font, anchor="rm")
        for offset, shares, colour in ((-6, check.reference, _REFERENCE), (6, check.observed, _OBSERVED)):
            value = shares[index] if index < len(shares) else 0.0
            draw.rectangle((x(0), middle + offset - 5, max(x(value), x(0) + 1), middle + offset + 5), fill=colour)
            draw.text((max(x(value), x(0) + 1) + 4, middle + offset), f"{value:.3f}", fill=MUTED, font=small, anchor="lm")
    draw.line((x(0), top, x(0), bottom), fill=INK)
    return picture


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)
