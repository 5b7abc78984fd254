"""The report's HTML page: an overview of every model, then per model its scores, charts and most
confident mistakes. Inline CSS and pictures referenced by file name: the page needs nothing from the
network, so its folder can be zipped, mailed or served as it is. Every text from the user is escaped."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from fbml.modeling.charts import confusion_chart, f1_chart, reliability_chart
from fbml.modeling.metrics import CALIBRATION_BINS
from fbml.workflows.report.folder import Picture
from fbml.workflows.report.results import ModelFigures, ModelResults
from fbml.workflows.report.thumbnails import Thumb


def chart_pictures(figures: ModelFigures) -> list[Picture]:
    """The F1 bar chart, confusion matrix and reliability diagram of one model, named as the page shows them."""
    names = figures.results.class_names
    return [
        Picture(_chart_file(figures.stem, "f1"), f1_chart(names, figures.scores)),
        Picture(_chart_file(figures.stem, "confusion"), confusion_chart(figures.matrix, names)),
        Picture(_chart_file(figures.stem, "reliability"), reliability_chart(figures.bins)),
    ]


def _chart_file(stem: str, chart: str) -> str:
    return f"{stem}-{chart}.png"


_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       color: #1f2937; background: #f8fafc; margin: 0; }
main { max-width: 1000px; margin: 0 auto; padding: 24px 28px 48px; background: #fff; }
h1 { font-size: 1.6em; margin: 0.2em 0 0.4em; }
h2 { font-size: 1.3em; margin: 2.2em 0 0.3em; padding-top: 0.6em; border-top: 2px solid #e5e7eb; }
h3 { font-size: 1.05em; margin: 1.6em 0 0.5em; color: #374151; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.4em 0 1em; }
th, td { padding: 4px 10px; border-bottom: 1px solid #e5e7eb; text-align: left; vertical-align: top; }
th { background: #f3f4f6; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.empty td { color: #9ca3af; }
table.notes th { background: none; color: #6b7280; font-weight: 500; }
table.notes td { overflow-wrap: anywhere; }
.summary { font-size: 1.05em; margin: 0.3em 0 1em; }
.summary b { font-variant-numeric: tabular-nums; }
.muted { color: #6b7280; font-size: 0.85em; }
figure { margin: 0.4em 0 1em; }
figcaption { color: #6b7280; font-size: 0.85em; margin-top: 4px; max-width: 520px; }
img { max-width: 100%; height: auto; }
table.mistakes td { vertical-align: middle; }
table.mistakes img { width: 96px; height: 96px; display: block; border-radius: 3px; }
table.mistakes .title { max-width: 330px; overflow-wrap: anywhere; }
.wrong { color: #b91c1c; }
"""


def _e(value: object) -> str:
    """``value`` as text safe inside HTML elements and quoted attributes."""
    return html.escape(str(value), quote=True)


def page(title: str, notes: Mapping[str, str], models: Sequence[ModelFigures], thumbs: Mapping[Path | None, Thumb],
         extra: str = "") -> str:  # fmt: skip
    """The whole HTML document (``extra``: a further section's HTML, after the models')."""
    body = "\n".join(
        [
            f"<h1>{_e(title)}</h1>",
            _notes_table(notes),
            _overview(models),
            *(_section(model, thumbs) for model in models),
            extra,
        ]
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


def _notes_table(notes: Mapping[str, str]) -> str:
    if not notes:
        return ""
    rows = "".join(f"<tr><th>{_e(key)}</th><td>{_e(value)}</td></tr>" for key, value in notes.items())
    return f'<table class="notes"><tbody>{rows}</tbody></table>'


def _overview(models: Sequence[ModelFigures]) -> str:
    """One row per model: products, accuracy, macro-F1, ECE."""
    rows = "".join(
        f'<tr><td><a href="#{_e(a.stem)}">{_e(a.results.name)}</a></td><td class="num">{a.results.size:,}</td>'
        f'<td class="num">{a.accuracy:.3f}</td><td class="num">{a.macro_f1:.3f}</td><td class="num">{a.ece:.3f}</td></tr>'
        for a in models
    )
    head = '<tr><th>model</th><th class="num">products</th><th class="num">accuracy</th><th class="num">macro-F1</th><th class="num">ECE</th></tr>'
    return f'<table class="overview"><thead>{head}</thead><tbody>{rows}</tbody></table>'


def _section(model: ModelFigures, thumbs: Mapping[Path | None, Thumb]) -> str:
    """One model's part of the page."""
    results, stem = model.results, model.stem
    return "\n".join(
        [
            f'<section class="model" id="{_e(stem)}" data-model="{_e(results.name)}">',
            f"<h2>{_e(results.name)}</h2>",
            _summary(model),
            "<h3>Per class</h3>",
            _class_table(model),
            _figure(_chart_file(stem, "f1"), f"F1 per class for {results.name}", "F1 per class; the dashed line is the macro-F1."),
            "<h3>Confusion matrix</h3>",
            _figure(
                _chart_file(stem, "confusion"),
                f"confusion matrix for {results.name}",
                "Confusion matrix: rows are the true class, columns the predicted one; "
                "shading is the share of the row, the number the count of products.",
            ),
            "<h3>Calibration</h3>",
            _figure(
                _chart_file(stem, "reliability"),
                f"reliability diagram for {results.name}",
                f"Reliability: products binned by the probability of their top class ({CALIBRATION_BINS} equal bins); "
                "a bar below its red mark means over-confidence. Counts per bin underneath.",
            ),
            _mistakes_table(model, thumbs),
            "</section>",
        ]
    )


def _summary(model: ModelFigures) -> str:
    return (
        f'<p class="summary"><b>{model.results.size:,}</b> products &middot; accuracy <b>{model.accuracy:.3f}</b> '
        f"&middot; macro-F1 <b>{model.macro_f1:.3f}</b> &middot; ECE <b>{model.ece:.3f}</b></p>"
        '<p class="muted">Macro-F1 is the mean F1 over the classes present in truth or prediction; '
        f"ECE the expected calibration error of the top-class probability over {CALIBRATION_BINS} equal-width bins.</p>"
    )


def _class_table(model: ModelFigures) -> str:
    """A row for every class, also one without support or predictions."""
    scores, rows = model.scores, []
    for index, name in enumerate(model.results.class_names):
        empty = ' class="empty"' if scores.support[index] == 0 else ""
        rows.append(
            f"<tr{empty}><td>{_e(name)}</td><td class=\"num\">{int(scores.support[index])}</td>"
            f'<td class="num">{int(scores.predicted[index])}</td><td class="num">{scores.precision[index]:.3f}</td>'
            f'<td class="num">{scores.recall[index]:.3f}</td><td class="num">{scores.f1[index]:.3f}</td></tr>'
        )
    head = (
        '<tr><th>class</th><th class="num">support</th><th class="num">predicted</th>'
        '<th class="num">precision</th><th class="num">recall</th><th class="num">F1</th></tr>'
    )
    return f'<table class="per-class" data-model="{_e(model.results.name)}"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def _figure(file: str, alt: str, caption: str) -> str:
    return f'<figure><img src="{_e(file)}" alt="{_e(alt)}"><figcaption>{_e(caption)}</figcaption></figure>'


def _mistakes_table(model: ModelFigures, thumbs: Mapping[Path | None, Thumb]) -> str:
    """The most confident wrong predictions, each with photo, title, true class and the two top classes."""
    results = model.results
    wrong = int((model.predicted != results.labels).sum())
    heading = f"<h3>Most confident mistakes ({len(model.mistakes)} of {wrong:,} wrong)</h3>"
    if not len(model.mistakes):
        return heading + '<p class="muted">No wrongly classified products.</p>'
    rows = "".join(_mistake_row(results, int(row), thumbs[results.photos[int(row)]]) for row in model.mistakes)
    head = "<tr><th>photo</th><th>product</th><th>true class</th><th>top two predicted</th></tr>"
    return f'{heading}<table class="mistakes" data-model="{_e(results.name)}"><thead>{head}</thead><tbody>{rows}</tbody></table>'


def _mistake_row(results: ModelResults, row: int, thumb: Thumb) -> str:
    probabilities, names = results.probabilities[row], results.class_names
    truth = int(results.labels[row])
    top = [int(index) for index in np.argsort(-probabilities, kind="stable")[:2]]
    picks = [f"{_e(names[index])} {probabilities[index]:.3f}" for index in top]
    picks[0] = f'<span class="wrong">{picks[0]}</span>'
    note = f'<div class="muted">{_e(thumb.problem)}</div>' if thumb.problem else ""
    alt = thumb.problem or f"photo of {results.titles[row]}"
    return (
        f'<tr><td><img src="{_e(thumb.file)}" alt="{_e(alt)}" width="96" height="96">{note}</td>'
        f'<td class="title">{_e(results.titles[row])}<div class="muted">{_e(results.product_ids[row])}</div></td>'
        f"<td>{_e(names[truth])} <span class=\"muted\">{probabilities[truth]:.3f}</span></td>"
        f"<td>{'<br>'.join(picks)}</td></tr>"
    )
