"""A linear text classifier: TF-IDF word and character n-grams, a linear model, calibrated probabilities.

The model reads one text per listing, the product name then its description (``fbml.text.listings``),
raw or clean: it normalises what it is given as the training text was (ASCII, one space between words).
Two TF-IDF blocks, each L2-normalised, are concatenated: word n-grams (the tokens of
``fbml.text.vocabulary.TOKEN_PATTERN``) and character n-grams. A one-vs-rest ``LinearSVC`` (or a logistic
regression) scores them, and a calibration fitted on out-of-fold scores of the training texts
(temperature scaling, or per-class vector scaling) turns the scores into probabilities.

The model is plain data: vocabularies, calibration and options go to JSON (``to_json``); the idf
vectors, coefficients and intercepts are numeric arrays (``arrays``, e.g. for a safetensors file).
``from_parts`` checks both and rebuilds a model giving the same probabilities. No pickle.

Two models may count over one vocabulary (``fit_linear_text(like=...)``: a bundle's subcategory model over its
text-linear model's): they then share their n-gram counters, whose column dicts of hundreds of thousands of
n-grams are the largest part of a model's memory and of its loading time (``from_parts(like=...)``).

Predicting needs numpy only: the n-grams are counted by ``fbml.text.ngrams`` (what scikit-learn's
``CountVectorizer`` counts), so loading a model and predicting import neither scikit-learn nor scipy;
fitting imports them (the classifiers, the folds, the calibration's optimiser).

Defaults were chosen on the validation split of the real marketplace data (seed 0). A separate
TF-IDF block of the first words (where the name is) was tried and dropped: no gain once C was tuned.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import numpy as np
from numpy.typing import NDArray

from fbml.errors import FbmlError
from fbml.text.listings import normalised_texts
from fbml.text.ngrams import NgramCounter, Rows, fitted_counts

LINEAR_TEXT_FORMAT = "fbml.linear-text/1"
CHAR_ANALYZERS = ("char_wb", "char")
CLASSIFIERS = ("linear_svc", "logistic")
CLASS_WEIGHTS = ("balanced", None)
CALIBRATIONS = ("temperature", "vector")
ARRAY_NAMES = ("word_idf", "char_idf", "coef", "intercept")
VOCABULARIES = ("word_vocabulary", "char_vocabulary")
LOG_TEMPERATURE_BOUND = 5.0  # the fitted temperature stays within e^-5 .. e^5
VECTOR_SCALE_BOUND = math.exp(LOG_TEMPERATURE_BOUND)
VECTOR_BIAS_BOUND = 20.0

Floats = NDArray[np.float64]


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise FbmlError(message)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def _as_tuple(value: Any) -> Any:
    """A JSON list as a tuple; anything else as it is, for the checks to refuse."""
    return tuple(value) if isinstance(value, list) else value


def _check_choice(name: str, value: object, choices: tuple[object, ...]) -> None:
    _require(value in choices, f"{name} must be one of {choices}, got {value!r}")


def _json_object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FbmlError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _keys(value: Mapping[str, Any], expected: set[str], what: str) -> None:
    missing, unknown = sorted(expected - value.keys()), sorted(map(str, value.keys() - expected))
    _require(not missing, f"{what} lacks {', '.join(missing)}")
    _require(not unknown, f"{what} has unknown key(s) {', '.join(unknown)}")


def _check_ngrams(name: str, value: object) -> None:
    valid = isinstance(value, tuple) and len(value) == 2 and all(_is_int(end) for end in value) and 1 <= value[0] <= value[1]
    _require(valid, f"{name} must be two integers 1 <= low <= high, got {value!r}")


@attrs.frozen
class LinearTextOptions:
    """The recipe: n-gram ranges, TF-IDF settings, classifier and its C, class weights, calibration.

    The defaults won on the validation split (seed 0): word 1-2-grams and ``char_wb`` 2-5-grams,
    min_df 1, sublinear tf, ``LinearSVC(C=0.5)`` with balanced class weights, temperature scaling.
    """

    word_ngrams: tuple[int, int] = (1, 2)
    char_ngrams: tuple[int, int] = (2, 5)
    char_analyzer: str = "char_wb"
    min_df: int = 1
    sublinear_tf: bool = True
    classifier: str = "linear_svc"
    c: float = 0.5
    class_weight: str | None = "balanced"
    calibration: str = "temperature"
    folds: int = 5
    max_iter: int = 5000

    def __attrs_post_init__(self) -> None:
        _check_ngrams("word_ngrams", self.word_ngrams)
        _check_ngrams("char_ngrams", self.char_ngrams)
        _check_choice("char_analyzer", self.char_analyzer, CHAR_ANALYZERS)
        _require(_is_int(self.min_df) and self.min_df >= 1, f"min_df must be an integer >= 1, got {self.min_df!r}")
        _require(isinstance(self.sublinear_tf, bool), f"sublinear_tf must be true or false, got {self.sublinear_tf!r}")
        _check_choice("classifier", self.classifier, CLASSIFIERS)
        _require(_is_number(self.c) and self.c > 0, f"c must be a positive finite number, got {self.c!r}")
        _check_choice("class_weight", self.class_weight, CLASS_WEIGHTS)
        _check_choice("calibration", self.calibration, CALIBRATIONS)
        _require(_is_int(self.folds) and self.folds >= 2, f"folds must be an integer >= 2, got {self.folds!r}")
        _require(_is_int(self.max_iter) and self.max_iter >= 1, f"max_iter must be an integer >= 1, got {self.max_iter!r}")

    def to_json(self) -> dict[str, Any]:
        """The options as a JSON object (n-gram ranges as two-element lists)."""
        value = attrs.asdict(self)
        value["word_ngrams"], value["char_ngrams"] = list(self.word_ngrams), list(self.char_ngrams)
        return value

    @classmethod
    def from_json(cls, value: object) -> LinearTextOptions:
        """The options ``to_json`` wrote; ``FbmlError`` naming a missing, unknown or invalid one."""
        options = _json_object(value, "the options")
        _keys(options, {field.name for field in attrs.fields(cls)}, "the options")
        ranges = {name: _as_tuple(options[name]) for name in ("word_ngrams", "char_ngrams")}
        return cls(**{**options, **ranges})


@attrs.frozen
class Calibration:
    """Scores to logits: ``(scores * scale + bias) / temperature``, fitted on out-of-fold scores.

    Temperature scaling fits ``temperature`` (scale 1, bias 0); vector scaling fits ``scale`` and
    ``bias`` per class (temperature 1). ``oof_nll`` and ``oof_nll_raw`` are the out-of-fold negative
    log-likelihoods with and without it, over ``folds`` folds (0 folds: not fitted, the identity).
    """

    method: str
    temperature: float
    scale: tuple[float, ...]
    bias: tuple[float, ...]
    folds: int = 0
    oof_nll: float = 0.0
    oof_nll_raw: float = 0.0

    def __attrs_post_init__(self) -> None:
        _check_choice("calibration method", self.method, CALIBRATIONS)
        lowest, highest = math.exp(-LOG_TEMPERATURE_BOUND) * (1 - 1e-9), math.exp(LOG_TEMPERATURE_BOUND) * (1 + 1e-9)
        within = _is_number(self.temperature) and lowest <= self.temperature <= highest
        _require(within, f"calibration temperature must be a number from e^-{LOG_TEMPERATURE_BOUND:g} to "
                         f"e^{LOG_TEMPERATURE_BOUND:g} (what fitting allows), got {self.temperature!r}")
        for name, values, bound in (("scale", self.scale, VECTOR_SCALE_BOUND), ("bias", self.bias, VECTOR_BIAS_BOUND)):
            valid = isinstance(values, tuple) and all(_is_number(item) and abs(item) <= bound for item in values)
            _require(valid, f"calibration {name} must be a list of numbers from -{bound:g} to {bound:g}")
        _require(len(self.scale) == len(self.bias), f"calibration scale has {len(self.scale)} values, bias {len(self.bias)}")
        _require(_is_int(self.folds) and self.folds >= 0, f"calibration folds must be an integer >= 0, got {self.folds!r}")
        for name, loss in (("oof_nll", self.oof_nll), ("oof_nll_raw", self.oof_nll_raw)):
            _require(_is_number(loss) and loss >= 0, f"calibration {name} must be a finite number >= 0, got {loss!r}")

    @classmethod
    def identity(cls, num_classes: int) -> Calibration:
        """Scores as they are (temperature 1)."""
        return cls("temperature", 1.0, (1.0,) * num_classes, (0.0,) * num_classes)

    @property
    def num_classes(self) -> int:
        """How many classes it scales."""
        return len(self.scale)

    def logits(self, scores: Floats) -> Floats:
        """The calibrated logits of decision scores (n, classes)."""
        scaled = scores * np.asarray(self.scale, dtype=np.float64) + np.asarray(self.bias, dtype=np.float64)
        return scaled / self.temperature

    def to_json(self) -> dict[str, Any]:
        """The parameters of its method and the out-of-fold figures, as JSON."""
        if self.method == "temperature":
            fitted: dict[str, Any] = {"temperature": self.temperature}
        else:
            fitted = {"scale": list(self.scale), "bias": list(self.bias)}
        report = {"folds": self.folds, "oof_nll": self.oof_nll, "oof_nll_raw": self.oof_nll_raw}
        return {"method": self.method, **fitted, **report}

    @classmethod
    def from_json(cls, value: object, num_classes: int) -> Calibration:
        """The calibration ``to_json`` wrote for ``num_classes`` classes; ``FbmlError`` otherwise."""
        value = _json_object(value, "the calibration")
        method = value.get("method")
        _check_choice("calibration method", method, CALIBRATIONS)
        own = ("temperature",) if method == "temperature" else ("scale", "bias")
        _keys(value, {"method", "folds", "oof_nll", "oof_nll_raw", *own}, f"the {method} calibration")
        report = {name: value[name] for name in ("folds", "oof_nll", "oof_nll_raw")}
        if method == "temperature":
            return cls("temperature", value["temperature"], (1.0,) * num_classes, (0.0,) * num_classes, **report)
        scale, bias = (value[name] for name in ("scale", "bias"))
        _require(isinstance(scale, list) and isinstance(bias, list), "calibration scale and bias must be lists")
        _require(len(scale) == len(bias) == num_classes, f"calibration scale and bias need {num_classes} values each")
        return cls("vector", 1.0, tuple(scale), tuple(bias), **report)


def _analyzer(options: LinearTextOptions, block: str) -> tuple[str, tuple[int, int]]:
    """The analyzer and n-gram range of a block (``"word"`` or ``"char"``)."""
    return ("word", options.word_ngrams) if block == "word" else (options.char_analyzer, options.char_ngrams)


def _counter(options: LinearTextOptions, block: str, vocabulary: tuple[str, ...]) -> NgramCounter:
    """The n-gram counter of a block over its vocabulary."""
    return NgramCounter(*_analyzer(options, block), vocabulary)


def _tfidf(counts: Rows, idf: Floats, sublinear: bool) -> Rows:
    """Counts to L2-normalised TF-IDF rows, as scikit-learn's ``TfidfTransformer`` computes them (the squares
    of a row summed in order, as ``sklearn.preprocessing.normalize`` sums them)."""
    weights = counts.values.astype(np.float64, copy=True)
    if sublinear:
        np.log(weights, out=weights)
        weights += 1.0
    weights *= idf[counts.indices]
    rows = counts.row_of_entries()
    norms = np.sqrt(np.bincount(rows, weights=weights * weights, minlength=len(counts)))
    weights /= np.where(norms > 0, norms, 1.0)[rows]
    return counts.with_values(weights)


def _log_softmax(logits: Floats) -> Floats:
    """``log(softmax(logits))`` per row, computed as ``scipy.special.log_softmax`` computes it."""
    largest = np.amax(logits, axis=1, keepdims=True)
    largest[~np.isfinite(largest)] = 0
    shifted = logits - largest
    with np.errstate(divide="ignore"):
        logarithms: Floats = shifted - np.log(np.sum(np.exp(shifted), axis=1, keepdims=True))
    return logarithms


@attrs.frozen
class _Block:
    """One fitted TF-IDF block: its vocabulary (column order), idf, and the training texts' rows."""

    vocabulary: tuple[str, ...]
    idf: Floats
    rows: Rows


def _fit_block(texts: Sequence[str], options: LinearTextOptions, block: str, counter: NgramCounter | None = None) -> _Block:
    """The block over ``counter``'s vocabulary when given, else over the n-grams of ``texts`` (``options.min_df``)."""
    analyzer, ngram_range = _analyzer(options, block)
    if counter is not None:
        vocabulary, counts = counter.vocabulary, counter.counts(texts)
    else:
        vocabulary, counts = fitted_counts(texts, analyzer, ngram_range, options.min_df)
    if not vocabulary:
        raise FbmlError(f"cannot build the {block} n-gram vocabulary of {len(texts)} texts: "
                        f"no {analyzer} n-gram occurs in {options.min_df} or more of them")
    document_frequency = np.bincount(counts.indices, minlength=len(vocabulary))
    idf = np.log((1.0 + len(texts)) / (1.0 + document_frequency)) + 1.0
    return _Block(vocabulary, idf, _tfidf(counts, idf, options.sublinear_tf))


def _classifier(options: LinearTextOptions, seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    if options.classifier == "logistic":
        return LogisticRegression(C=options.c, class_weight=options.class_weight, max_iter=options.max_iter)
    return LinearSVC(C=options.c, class_weight=options.class_weight, max_iter=options.max_iter, random_state=seed)


def _fit_uncalibrated(
    texts: Sequence[str], labels: NDArray[np.int64], num_classes: int, options: LinearTextOptions, seed: int,
    like: LinearTextModel | None = None,
) -> LinearTextModel:
    """Vocabularies (``like``'s, when given), idf and the linear model on ``texts``, with the identity calibration."""
    import scipy.sparse as sp

    words, chars = (None, None) if like is None else like.counters
    word, char = _fit_block(texts, options, "word", words), _fit_block(texts, options, "char", chars)
    classifier = _classifier(options, seed).fit(sp.hstack([word.rows.csr(), char.rows.csr()], format="csr"), labels)
    coef, intercept = np.asarray(classifier.coef_), np.asarray(classifier.intercept_)
    if num_classes == 2:  # scikit-learn scores class 1 only: split the score between the two classes
        coef, intercept = np.concatenate([-coef, coef]) / 2, np.concatenate([-intercept, intercept]) / 2
    return LinearTextModel(
        options=options,
        word_vocabulary=word.vocabulary,
        char_vocabulary=char.vocabulary,
        word_idf=word.idf,
        char_idf=char.idf,
        coef=np.ascontiguousarray(coef, dtype=np.float32),  # liblinear's is Fortran-ordered
        intercept=np.ascontiguousarray(intercept, dtype=np.float32),
        calibration=Calibration.identity(num_classes),
        counters=_counters_over(options, word.vocabulary, char.vocabulary) if like is None else like.counters,
    )


def _mean_nll(logits: Floats, labels: NDArray[np.int64]) -> float:
    return float(-_log_softmax(logits)[np.arange(len(labels)), labels].mean())


def _one_hot(labels: NDArray[np.int64], num_classes: int) -> Floats:
    return np.eye(num_classes, dtype=np.float64)[labels]


def fit_temperature(scores: Floats, labels: NDArray[np.int64]) -> float:
    """The temperature ``T`` minimising the mean negative log-likelihood of ``softmax(scores / T)``."""
    from scipy.optimize import minimize

    truth = _one_hot(labels, scores.shape[1])

    def loss(log_temperature: Floats) -> tuple[float, Floats]:
        logits = scores * math.exp(-float(log_temperature[0]))
        log_p = _log_softmax(logits)
        gradient = -float(((np.exp(log_p) - truth) * logits).sum()) / len(labels)
        return float(-(log_p * truth).sum() / len(labels)), np.array([gradient])

    bounds = [(-LOG_TEMPERATURE_BOUND, LOG_TEMPERATURE_BOUND)]
    result = minimize(loss, np.zeros(1), jac=True, method="L-BFGS-B", bounds=bounds)
    return float(math.exp(float(result.x[0])))


def fit_vector_scaling(scores: Floats, labels: NDArray[np.int64]) -> tuple[Floats, Floats]:
    """Per-class ``scale`` and ``bias`` minimising the mean NLL of ``softmax(scores * scale + bias)``."""
    from scipy.optimize import minimize

    classes = scores.shape[1]
    truth = _one_hot(labels, classes)

    def loss(parameters: Floats) -> tuple[float, Floats]:
        log_p = _log_softmax(scores * parameters[:classes] + parameters[classes:])
        residual = (np.exp(log_p) - truth) / len(labels)
        gradient = np.concatenate([(residual * scores).sum(axis=0), residual.sum(axis=0)])
        return float(-(log_p * truth).sum() / len(labels)), gradient

    start = np.concatenate([np.full(classes, 1.0 / fit_temperature(scores, labels)), np.zeros(classes)])
    bounds = [(0.0, VECTOR_SCALE_BOUND)] * classes + [(-VECTOR_BIAS_BOUND, VECTOR_BIAS_BOUND)] * classes
    result = minimize(loss, start, jac=True, method="L-BFGS-B", bounds=bounds)
    return result.x[:classes].copy(), result.x[classes:].copy()


def fit_calibration(scores: Floats, labels: NDArray[np.int64], method: str, folds: int) -> Calibration:
    """The calibration of ``method`` fitted on out-of-fold ``scores`` (n, classes) of ``labels``."""
    classes = scores.shape[1]
    if method == "temperature":
        calibration = Calibration("temperature", fit_temperature(scores, labels), (1.0,) * classes, (0.0,) * classes)
    else:
        scale, bias = fit_vector_scaling(scores, labels)
        calibration = Calibration("vector", 1.0, tuple(scale.tolist()), tuple(bias.tolist()))
    nll = _mean_nll(calibration.logits(scores), labels)
    return attrs.evolve(calibration, folds=folds, oof_nll=nll, oof_nll_raw=_mean_nll(scores, labels))


def _checked_labels(labels: np.ndarray, count: int, num_classes: int) -> NDArray[np.int64]:
    _require(_is_int(num_classes) and num_classes >= 2, f"num_classes must be an integer >= 2, got {num_classes!r}")
    array = np.asarray(labels)
    _require(array.shape == (count,), f"need one label per text: {count} texts, labels of shape {array.shape}")
    _require(np.issubdtype(array.dtype, np.integer), f"labels must be class indices (integers), got {array.dtype}")
    _require(bool(((array >= 0) & (array < num_classes)).all()), f"labels must lie in 0..{num_classes - 1}")
    return array.astype(np.int64)


def _fold_count(labels: NDArray[np.int64], num_classes: int, folds: int) -> int:
    counts = np.bincount(labels, minlength=num_classes)
    rarest = int(counts.argmin())
    _require(counts[rarest] >= 2, f"class {rarest} has {counts[rarest]} training text(s); every class needs at least 2")
    return min(folds, int(counts[rarest]))


def _out_of_fold_scores(
    texts: Sequence[str], labels: NDArray[np.int64], num_classes: int, options: LinearTextOptions, seed: int, folds: int
) -> Floats:
    """Decision scores of every training text by a model (vocabulary and idf included) fitted without its fold."""
    from sklearn.model_selection import StratifiedKFold

    scores = np.zeros((len(texts), num_classes), dtype=np.float64)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fit_rows, held_rows in splitter.split(np.zeros(len(texts)), labels):
        model = _fit_uncalibrated([texts[row] for row in fit_rows], labels[fit_rows], num_classes, options, seed)
        scores[held_rows] = model.normalised_scores([texts[row] for row in held_rows])
    return scores


def fit_linear_text(
    texts: Sequence[str],
    labels: np.ndarray,
    num_classes: int,
    *,
    options: LinearTextOptions = LinearTextOptions(),
    seed: int = 0,
    like: LinearTextModel | None = None,
) -> LinearTextModel:
    """Fit on listing texts (name first; raw or clean: normalised here as training text is) and class indices;
    calibrated on out-of-fold scores, then refitted on all.

    Deterministic for a ``seed`` (it seeds the folds and the ``LinearSVC``). Every class needs at
    least two texts; the folds are ``options.folds`` or fewer when the rarest class has fewer texts.
    ``like``: a model whose n-gram vocabularies (and counters) the model counts over instead of fitting its own, so
    that the two share them; the out-of-fold models that calibrate it still fit their own.
    """
    texts = normalised_texts(_checked_texts(texts))
    checked = _checked_labels(labels, len(texts), num_classes)
    _require(like is None or like.counts_as(options), "like must count n-grams as options say (the same analyzers and ranges)")
    folds = _fold_count(checked, num_classes, options.folds)
    scores = _out_of_fold_scores(texts, checked, num_classes, options, seed, folds)
    model = _fit_uncalibrated(texts, checked, num_classes, options, seed, like)
    return attrs.evolve(model, calibration=fit_calibration(scores, checked, options.calibration, folds))


def _checked_texts(texts: Sequence[str]) -> list[str]:
    _require(not isinstance(texts, str), "texts must be a sequence of strings, not one string")
    values = list(texts)
    _require(all(isinstance(text, str) for text in values), "every text must be a string")
    return values


def _own_counters(model: LinearTextModel) -> tuple[NgramCounter, NgramCounter]:
    """The word and char n-gram counters over ``model``'s vocabularies (checked)."""
    return _counters_over(model.options, model.word_vocabulary, model.char_vocabulary)


def _counters_over(options: object, words: object, chars: object) -> tuple[NgramCounter, NgramCounter]:
    """The word and char n-gram counters of ``options`` over these vocabularies (checked)."""
    _require(isinstance(options, LinearTextOptions), "options must be LinearTextOptions")
    assert isinstance(options, LinearTextOptions)
    return _vocabulary_counter(options, "word", words), _vocabulary_counter(options, "char", chars)


def _check_counter(counter: object, options: LinearTextOptions, block: str, vocabulary: object) -> None:
    """A counter given to a model counts ``block``'s n-grams as ``options`` say, over ``vocabulary`` (distinct,
    non-empty strings, as ``_vocabulary_counter`` checks them)."""
    _require(isinstance(counter, NgramCounter), f"the {block} counter must be an NgramCounter")
    assert isinstance(counter, NgramCounter)
    _require((counter.analyzer, counter.ngram_range) == _analyzer(options, block), f"the {block} counter counts other n-grams")
    _require(counter.vocabulary == vocabulary, f"the {block} counter counts over another vocabulary")
    _require("" not in counter.columns and len(counter.columns) == len(counter.vocabulary),
             f"the {block} vocabulary must be distinct non-empty strings")  # fmt: skip


def _vocabulary_counter(options: LinearTextOptions, block: str, value: object) -> NgramCounter:
    """The n-gram counter of a block (``"word"`` or ``"char"``) over ``value``, which must be distinct non-empty
    strings, at least one; ``FbmlError`` otherwise. Checked in C's loops, distinctness with the counter's own column
    dict: the char vocabulary has hundreds of thousands of entries."""
    name = f"{block} vocabulary"
    if not isinstance(value, (list, tuple)):
        raise FbmlError(f"the {name} must be a list of strings, got {type(value).__name__}")
    strings = len(value) > 0 and all(issubclass(kind, str) for kind in set(map(type, value)))
    _require(strings, f"the {name} must be non-empty strings, at least one")
    counter = _counter(options, block, tuple(value))
    _require("" not in counter.columns, f"the {name} must be non-empty strings, at least one")
    if len(counter.columns) < len(value):
        duplicates = sorted(term for term, count in Counter(value).items() if count > 1)
        raise FbmlError(f"duplicate {name} entr(ies): {duplicates[:3]}")
    return counter


def _check_array(name: str, array: object, dtype: type[np.floating[Any]], shape: tuple[int, ...]) -> None:
    if not isinstance(array, np.ndarray):
        raise FbmlError(f"{name} must be a numpy array, got {type(array).__name__}")
    _require(array.dtype == dtype, f"{name} must be {np.dtype(dtype).name}, got {array.dtype}")
    _require(array.shape == shape, f"{name} must have shape {shape}, got {array.shape}")
    _require(bool(np.isfinite(array).all()), f"{name} has non-finite values")


@attrs.frozen
class LinearTextModel:
    """A fitted classifier: vocabularies (column order), idf, coefficients (classes x features), calibration.

    Word columns come first, then character columns. The ``counters`` that turn text into counts are
    built once per instance from the vocabularies, so a batch of one text costs little; or given: those of
    another model over the same vocabularies, which the two then share.
    """

    options: LinearTextOptions
    word_vocabulary: tuple[str, ...] = attrs.field(converter=_as_tuple, repr=False)
    char_vocabulary: tuple[str, ...] = attrs.field(converter=_as_tuple, repr=False)
    word_idf: Floats = attrs.field(eq=attrs.cmp_using(eq=np.array_equal), repr=False)
    char_idf: Floats = attrs.field(eq=attrs.cmp_using(eq=np.array_equal), repr=False)
    coef: NDArray[np.float32] = attrs.field(eq=attrs.cmp_using(eq=np.array_equal), repr=False)
    intercept: NDArray[np.float32] = attrs.field(eq=attrs.cmp_using(eq=np.array_equal), repr=False)
    calibration: Calibration
    counters: tuple[NgramCounter, NgramCounter] = attrs.field(
        default=attrs.Factory(_own_counters, takes_self=True), kw_only=True, eq=False, repr=False)
    _weights: NDArray[np.float32] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        _require(isinstance(self.options, LinearTextOptions), "options must be LinearTextOptions")
        _require(isinstance(self.calibration, Calibration), "calibration must be a Calibration")
        _require(isinstance(self.counters, tuple) and len(self.counters) == 2, "counters must be a (word, char) pair")
        for counter, block, vocabulary in zip(self.counters, ("word", "char"), (self.word_vocabulary, self.char_vocabulary), strict=True):
            _check_counter(counter, self.options, block, vocabulary)
        words, chars = (counter.vocabulary for counter in self.counters)
        _require(isinstance(self.coef, np.ndarray) and self.coef.ndim == 2, "coef must be a 2-d array (classes x features)")
        classes = int(self.coef.shape[0])
        _require(classes >= 2, f"coef must have a row per class (at least 2), got {classes}")
        _check_array("coef", self.coef, np.float32, (classes, len(words) + len(chars)))
        _check_array("word_idf", self.word_idf, np.float64, (len(words),))
        _check_array("char_idf", self.char_idf, np.float64, (len(chars),))
        _check_array("intercept", self.intercept, np.float32, (classes,))
        _require(bool((self.word_idf > 0).all() and (self.char_idf > 0).all()), "idf values must be positive")
        calibrated = self.calibration.num_classes
        _require(calibrated == classes, f"the calibration is for {calibrated} classes, coef for {classes}")
        object.__setattr__(self, "_weights", np.ascontiguousarray(self.coef.T))

    @property
    def num_classes(self) -> int:
        """How many classes it scores."""
        return int(self.coef.shape[0])

    def counts_as(self, options: LinearTextOptions) -> bool:
        """Whether ``options`` count the same n-grams (analyzers and ranges) as this model's."""
        return all(_analyzer(self.options, block) == _analyzer(options, block) for block in ("word", "char"))

    @property
    def num_features(self) -> int:
        """Word plus character n-gram columns."""
        return len(self.word_vocabulary) + len(self.char_vocabulary)

    def features(self, texts: Sequence[str]) -> Rows:
        """TF-IDF rows (n, features): the word block then the char block, each L2-normalised."""
        values = _checked_texts(texts)
        word, char = (
            _tfidf(counter.counts(values), idf, self.options.sublinear_tf)
            for counter, idf in zip(self.counters, (self.word_idf, self.char_idf), strict=True)
        )
        return word.beside(char)

    def decision_function(self, texts: Sequence[str]) -> Floats:
        """The linear model's scores (n, classes) of raw texts (normalised here as training text was), before calibration."""
        return self.normalised_scores(normalised_texts(_checked_texts(texts)))

    def predict_proba(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Calibrated probabilities (n, classes) of raw texts (normalised here as training text was), float32,
        each row summing to 1."""
        return self.normalised_probabilities(normalised_texts(_checked_texts(texts)))

    def normalised_scores(self, texts: Sequence[str]) -> Floats:
        """``decision_function`` of texts already normalised (``fbml.text.listings.normalised_texts``)."""
        scores: Floats = self.features(texts).dot(self._weights).astype(np.float64) + self.intercept.astype(np.float64)
        return scores

    def normalised_probabilities(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """``predict_proba`` of texts already normalised (``fbml.text.listings.normalised_texts``)."""
        logits = self.calibration.logits(self.normalised_scores(texts))
        probabilities: Floats = np.exp(_log_softmax(logits))
        normalised: NDArray[np.float32] = (probabilities / probabilities.sum(axis=1, keepdims=True)).astype(np.float32)
        return normalised

    def to_json(self) -> dict[str, Any]:
        """Format, class count, options, vocabularies and calibration: everything but the arrays."""
        return {
            "format": LINEAR_TEXT_FORMAT,
            "num_classes": self.num_classes,
            "options": self.options.to_json(),
            "calibration": self.calibration.to_json(),
            "word_vocabulary": list(self.word_vocabulary),
            "char_vocabulary": list(self.char_vocabulary),
        }

    def arrays(self) -> dict[str, np.ndarray]:
        """The numeric parts: ``word_idf``, ``char_idf`` (float64), ``coef``, ``intercept`` (float32).

        C-contiguous, as ``safetensors.numpy.save`` needs (it writes a Fortran-ordered array's
        memory as if it were C-ordered).
        """
        parts = {"word_idf": self.word_idf, "char_idf": self.char_idf, "coef": self.coef, "intercept": self.intercept}
        return {name: np.ascontiguousarray(array) for name, array in parts.items()}

    @classmethod
    def from_parts(cls, json_value: object, arrays: Mapping[str, np.ndarray], *, like: LinearTextModel | None = None) -> LinearTextModel:
        """The model ``to_json`` and ``arrays`` describe, checked; ``FbmlError`` naming what is wrong. ``like``: a model
        whose counters it shares when it counts the same n-grams over the same vocabularies (as ``fit_linear_text(like=)``
        fits it), instead of building its own."""
        try:
            return cls._from_parts(json_value, arrays, like)
        except FbmlError as error:
            raise FbmlError(f"not a linear text model: {error}") from None

    @classmethod
    def _from_parts(cls, json_value: object, arrays: Mapping[str, np.ndarray], like: LinearTextModel | None) -> LinearTextModel:
        document = _json_object(json_value, "the JSON part")
        found = document.get("format")
        _require(found == LINEAR_TEXT_FORMAT, f"format must be {LINEAR_TEXT_FORMAT!r}, got {found!r}")
        _keys(document, {"format", "num_classes", "options", "calibration", *VOCABULARIES}, "the JSON part")
        num_classes = document["num_classes"]
        _require(_is_int(num_classes) and num_classes >= 2, f"num_classes must be an integer >= 2, got {num_classes!r}")
        _require(isinstance(arrays, Mapping), "the arrays must be a mapping of names to arrays")
        names = ", ".join(sorted(map(str, arrays)))
        _require(set(arrays) == set(ARRAY_NAMES), f"the arrays must be exactly {', '.join(ARRAY_NAMES)}; got {names}")
        rows = getattr(arrays["coef"], "shape", (None,))[0] if getattr(arrays["coef"], "ndim", 0) == 2 else None
        _require(rows == num_classes, f"coef must have {num_classes} rows (num_classes), got {rows}")
        options = LinearTextOptions.from_json(document["options"])
        words, chars = (_as_tuple(document[name]) for name in VOCABULARIES)
        same = like is not None and like.counts_as(options) and (words, chars) == (like.word_vocabulary, like.char_vocabulary)
        twin = like if same else None
        return cls(
            options=options,
            word_vocabulary=words if twin is None else twin.word_vocabulary,
            char_vocabulary=chars if twin is None else twin.char_vocabulary,
            word_idf=arrays["word_idf"],
            char_idf=arrays["char_idf"],
            coef=arrays["coef"],
            intercept=arrays["intercept"],
            calibration=Calibration.from_json(document["calibration"], num_classes),
            counters=_counters_over(options, words, chars) if twin is None else twin.counters,
        )
