"""``fbml monitor``: new listings (or the serving log's predictions) compared with the bundle's training profile.

Each check is one effect size (``fbml.workflows.drift``) of one feature (``fbml.workflows.profiling``),
named ``<feature>.<statistic>`` (``products.price.psi``, ``predictions.text.confidence.wasserstein``,
``products.category.js_distance``, ``products.missing.description``, ``listings.vectors.domain_auc``), with
its threshold; it drifted when its value exceeds the threshold. Features with fewer than ``MIN_VALUES``
new values are not checked (too few to tell).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from fbml.bundle.bundle import Bundle
from fbml.bundle.profile import (
    QUANTILE_LEVELS,
    CategoricalSummary,
    NumericSummary,
    Profile,
    RateGroup,
    binned_shares,
    categorical_summary,
)
from fbml.errors import FbmlError
from fbml.tables.clean import CleanTables
from fbml.workflows.drift import (
    auc_threshold,
    domain_auc,
    js_distance,
    js_threshold,
    psi,
    psi_threshold,
    rate_difference,
    rate_threshold,
    wasserstein,
    wasserstein_threshold,
)
from fbml.workflows.inputs import decoded_photos
from fbml.workflows.profiling import LOG_SCALED, Observations, listing_observations, photo_side

MIN_VALUES = 20
VECTORS = "listings.vectors"


@attrs.frozen
class Check:
    """One check: a feature's effect size against its threshold, and what a picture of it shows (the
    reference's and the new listings' shares of ``labels``)."""

    name: str
    statistic: str
    value: float
    threshold: float
    labels: tuple[str, ...] = attrs.field(default=(), eq=False, repr=False)
    reference: tuple[float, ...] = attrs.field(default=(), eq=False, repr=False)
    observed: tuple[float, ...] = attrs.field(default=(), eq=False, repr=False)

    @property
    def drifted(self) -> bool:
        """Whether the value exceeds the threshold."""
        return self.value > self.threshold

    def to_json(self) -> dict[str, Any]:
        """The check as ``--json`` prints it."""
        return {"name": self.name, "statistic": self.statistic, "value": round(self.value, 6),
                "threshold": round(self.threshold, 6), "drifted": self.drifted}  # fmt: skip


@attrs.frozen
class MonitorResult:
    """Every check run, and what could not be checked (one line each)."""

    checks: tuple[Check, ...]
    notes: tuple[str, ...] = ()

    @property
    def drift(self) -> bool:
        """Whether any check drifted."""
        return any(check.drifted for check in self.checks)

    def to_json(self) -> dict[str, Any]:
        """``{"drift": bool, "checks": [...]}``."""
        return {"drift": self.drift, "checks": [check.to_json() for check in self.checks]}

    def table(self) -> str:
        """One line per check, drifted ones marked; then the notes."""
        lines = [f"{'check':62}{'statistic':>18}{'value':>11}{'threshold':>11}"]
        for check in self.checks:
            mark = "  DRIFT" if check.drifted else ""
            lines.append(f"{check.name[:62]:62}{check.statistic:>18}{check.value:>11.4f}{check.threshold:>11.4f}{mark}")
        drifted = [check.name for check in self.checks if check.drifted]
        lines.append(f"drift: {', '.join(drifted)}" if drifted else f"no drift ({len(self.checks)} checks)")
        return "\n".join([*lines, *(f"note: {note}" for note in self.notes)])


def training_profile(bundle: Bundle, where: Path | str) -> Profile:
    """The bundle's training profile; ``FbmlError`` when it has none (trained before profiles existed)."""
    if bundle.profile is None:
        raise FbmlError(f"{where}: the bundle has no training profile (trained before fbml kept one); "
                        "train it again with `fbml train` to monitor against it")
    return bundle.profile


def monitor_listings(bundle: Bundle, tables: CleanTables, image_dir: Path | None, *, progress: bool = False) -> MonitorResult:
    """New listings (clean tables, their rejected rows and their photos in ``image_dir``) against the profile."""
    profile = training_profile(bundle, "bundle")
    with tempfile.TemporaryDirectory(prefix="fbml-monitor-") as work_dir:
        photos = None
        if tables.manifest is not None and image_dir is not None:
            photos = decoded_photos(tables, image_dir, Path(work_dir), photo_side(bundle), progress=progress)
        observations = listing_observations(bundle, tables, photos, image_dir)
    return compared(profile, observations)


def compared(profile: Profile, observations: Observations) -> MonitorResult:
    """Every check of the features both the profile and ``observations`` have."""
    checks: list[Check] = []
    notes: list[str] = []
    for name, summary in profile.numeric.items():
        values = observations.numeric.get(name)
        if values is not None:
            checks += numeric_checks(name, summary, values) if values.size >= MIN_VALUES else []
            notes += [] if values.size >= MIN_VALUES else [f"{name}: {values.size} new values, too few to check"]
    for name, mix in profile.categorical.items():
        labels = observations.categorical.get(name)
        if labels is not None and len(labels) >= MIN_VALUES:
            checks.append(mix_check(name, mix, categorical_summary(list(labels))))
    for name, group in profile.rates.items():
        if name in observations.rates:
            checks += rate_checks(name, group, observations.rates[name])
    vectors = profile.vector_array()
    if vectors is not None and observations.vectors is not None:
        checks += vector_checks(vectors, observations.vectors, notes)
    return MonitorResult(tuple(checks), tuple(notes))


def numeric_checks(name: str, summary: NumericSummary, values: np.ndarray) -> list[Check]:
    """PSI over the training bins and the Wasserstein distance in training standard deviations."""
    edges = np.asarray(summary.edges)
    reference, observed = np.asarray(summary.shares), binned_shares(values, edges)
    labels = tuple(bin_labels(name, edges))
    quantiles = np.quantile(values, QUANTILE_LEVELS)
    scale = summary.scale if summary.scale > 0 else 1.0
    pictured = {"labels": labels, "reference": tuple(reference.tolist()), "observed": tuple(observed.tolist())}
    return [
        Check(f"{name}.psi", "psi", psi(reference, observed), psi_threshold(len(reference), summary.count, values.size), **pictured),
        Check(f"{name}.wasserstein", "wasserstein", wasserstein(np.asarray(summary.quantiles), quantiles, scale),
              wasserstein_threshold(summary.count, values.size), **pictured),  # fmt: skip
    ]


def bin_labels(name: str, edges: np.ndarray) -> list[str]:
    """The bins' labels in the feature's own units (a log-scaled feature's edges turned back)."""
    shown = np.expm1(edges) if name in LOG_SCALED else edges
    marks = [f"{value:.3g}" for value in shown]
    return [f"< {marks[0]}" if marks else "all", *(f"{low}-{high}" for low, high in zip(marks, marks[1:], strict=False)),
            *([f">= {marks[-1]}"] if marks else [])]  # fmt: skip


def mix_check(name: str, reference: CategoricalSummary, observed: CategoricalSummary) -> Check:
    """The Jensen-Shannon distance of two label mixes."""
    labels = sorted(set(reference.shares) | set(observed.shares), key=lambda label: -reference.shares.get(label, 0.0))
    return Check(f"{name}.js_distance", "js_distance", js_distance(reference.shares, observed.shares),
                 js_threshold(len(labels), reference.count, observed.count), tuple(labels),
                 tuple(reference.shares.get(label, 0.0) for label in labels),
                 tuple(observed.shares.get(label, 0.0) for label in labels))  # fmt: skip


def rate_checks(name: str, reference: RateGroup, observed: RateGroup) -> list[Check]:
    """Per counted name of either side, the difference of its rates."""
    if not reference.total or not observed.total:
        return []
    checks = []
    for counted in sorted(set(reference.counts) | set(observed.counts)):
        first, second = reference.counts.get(counted, 0), observed.counts.get(counted, 0)
        pooled = (first + second) / (reference.total + observed.total)
        rates = (first / reference.total, second / observed.total)
        checks.append(Check(f"{name}.{counted}", "rate_difference", rate_difference(*rates),
                            rate_threshold(pooled, reference.total, observed.total), (counted, f"not {counted}"),
                            (rates[0], 1 - rates[0]), (rates[1], 1 - rates[1])))  # fmt: skip
    return checks


def vector_checks(reference: np.ndarray, observed: np.ndarray, notes: list[str]) -> list[Check]:
    """A domain classifier's AUC between the profile's listing vectors and the new listings'."""
    if len(observed) < MIN_VALUES or not len(reference):
        notes.append(f"{VECTORS}: {len(observed)} new listing vectors, too few to check")
        return []
    if reference.shape[1] != observed.shape[1]:
        notes.append(f"{VECTORS}: the profile's vectors are {reference.shape[1]} wide, the bundle now makes "
                     f"{observed.shape[1]}; not compared")  # fmt: skip
        return []
    auc = domain_auc(reference, observed)
    return [Check(f"{VECTORS}.domain_auc", "domain_auc", auc, auc_threshold(len(reference), len(observed)),
                  ("chance", "AUC"), (0.5, 0.5), (0.5, auc))]  # fmt: skip


def monitor_command(bundle_dir: Path, *, products: str | None, images: str | None, image_dir: Path | None,
                    predictions: Path | None, report: Path | None = None, device: str = "cpu",
                    progress: bool = False) -> MonitorResult:  # fmt: skip
    """``fbml monitor``: the inputs checked before the long work (the bundle and its profile, the report
    folder, the prediction log's parts), then the new listings' checks and the served predictions' checks
    (named ``served.<feature>.<statistic>``); the report written when asked for."""
    from fbml.bundle.store import load_bundle
    from fbml.modeling.devices import resolve_device
    from fbml.tables.clean import clean_tables
    from fbml.vision.cache import check_photo_folder
    from fbml.workflows.prediction_log import log_parts, logged_observations, read_prediction_log
    from fbml.workflows.report.folder import report_files

    if report is not None:
        report_files(report)
    if predictions is not None:
        log_parts(predictions)
    check_photo_folder(image_dir)
    bundle = load_bundle(bundle_dir, device=str(resolve_device(device)))
    profile = training_profile(bundle, bundle_dir)
    results = []
    if products is not None:
        results.append(monitor_listings(bundle, clean_tables(products, images), image_dir, progress=progress))
    if predictions is not None:
        served = compared(profile, logged_observations(read_prediction_log(predictions)))
        results.append(MonitorResult(tuple(attrs.evolve(check, name=f"served.{check.name}") for check in served.checks),
                                     tuple(f"served {note}" for note in served.notes)))  # fmt: skip
    result = MonitorResult(tuple(check for part in results for check in part.checks), tuple(note for part in results for note in part.notes))
    if report is not None:
        from fbml.workflows.report.drift import write_monitor_report

        write_monitor_report(report, result, {"bundle": str(bundle_dir), "products": str(products or "none"),
                                              "predictions": str(predictions or "none")})  # fmt: skip
    return result
