"""The TF-IDF linear text classifier: learning, calibration, determinism, and its JSON + arrays form."""

from __future__ import annotations

import copy
import json
import math
import random
from typing import Any

import attrs
import numpy as np
import pytest
from fbml.errors import FbmlError
from fbml.modeling.linear_text import (
    LINEAR_TEXT_FORMAT,
    LinearTextModel,
    LinearTextOptions,
    _fit_block,
    _fit_uncalibrated,
    _log_softmax,
    _out_of_fold_scores,
    fit_linear_text,
    fit_temperature,
)
from fbml.text.vocabulary import TOKEN_PATTERN
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

WORDS = (
    ("sofa", "table", "chair", "lamp", "wardrobe", "cushion"),
    ("phone", "charger", "screen", "battery", "iphone", "samsung"),
    ("bike", "helmet", "tent", "football", "racket", "kayak"),
)
FILLER = ("good", "condition", "collection", "only", "used", "new")
CLASSES = len(WORDS)


def corpus(per_class: int, seed: int, purity: float = 0.75) -> tuple[list[str], np.ndarray]:
    """Listings of a name and a description; each word is its class's with probability ``purity``."""
    rng = random.Random(seed)
    texts, labels = [], []
    for label in range(CLASSES):
        for _ in range(per_class):
            words = [rng.choice(WORDS[label] if rng.random() < purity else rng.choice(WORDS)) for _ in range(5)]
            texts.append(" ".join([*words[:2], *words[2:], *rng.sample(FILLER, 2)]).capitalize())
            labels.append(label)
    return texts, np.array(labels, dtype=np.int64)


TEXTS, LABELS = corpus(20, seed=0)
PURE = [f"{a} {b} {c}" for words in WORDS for a, b, c in zip(words, words[1:], words[2:], strict=False)]
PURE_LABELS = np.repeat(np.arange(CLASSES), len(WORDS[0]) - 2)
PROBE = [*PURE, "", "!!! ???", "xyzzy quux", "Café Sofa", "SOFA   TABLE"]


@pytest.fixture(scope="module")
def model() -> LinearTextModel:
    return fit_linear_text(TEXTS, LABELS, CLASSES, seed=0)


@pytest.fixture(scope="module")
def vector_model() -> LinearTextModel:
    return fit_linear_text(TEXTS, LABELS, CLASSES, options=LinearTextOptions(calibration="vector"), seed=0)


@pytest.fixture(scope="module")
def char_model() -> LinearTextModel:
    """The other option values: word 2-3-grams, ``char`` 1-4-grams, raw term frequencies, min_df 2, logistic."""
    options = LinearTextOptions(word_ngrams=(2, 3), char_ngrams=(1, 4), char_analyzer="char", sublinear_tf=False, min_df=2,
                                classifier="logistic", folds=2)
    return fit_linear_text(TEXTS, LABELS, CLASSES, options=options, seed=0)


def scikit_learn_probabilities(model: LinearTextModel, texts: list[str]) -> np.ndarray:
    """``predict_proba`` as the model computed it with scikit-learn and scipy: ``CountVectorizer`` counts over the
    vocabularies, TF-IDF L2-normalised by ``sklearn.preprocessing.normalize``, a float32 sparse product, then
    ``scipy.special.log_softmax`` of the calibrated scores."""
    import scipy.sparse as sp
    from scipy.special import log_softmax
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.preprocessing import normalize

    options = model.options
    blocks = []
    for vocabulary, idf, analyzer, ngram_range in (
        (model.word_vocabulary, model.word_idf, "word", options.word_ngrams),
        (model.char_vocabulary, model.char_idf, options.char_analyzer, options.char_ngrams),
    ):
        pattern = {"token_pattern": TOKEN_PATTERN} if analyzer == "word" else {}
        counter = CountVectorizer(vocabulary={term: column for column, term in enumerate(vocabulary)}, analyzer=analyzer,
                                  ngram_range=ngram_range, lowercase=True, dtype=np.float64, **pattern)
        weights = sp.csr_matrix(counter.transform(texts)).astype(np.float64)
        if options.sublinear_tf:
            np.log(weights.data, out=weights.data)
            weights.data += 1.0
        weights.data *= idf[weights.indices]
        blocks.append(normalize(weights, norm="l2") if weights.shape[0] else weights)
    rows = sp.hstack(blocks, format="csr").astype(np.float32)
    scores = np.asarray(rows @ np.ascontiguousarray(model.coef.T), dtype=np.float64) + model.intercept.astype(np.float64)
    probabilities = np.exp(log_softmax(model.calibration.logits(scores), axis=1))
    return (probabilities / probabilities.sum(axis=1, keepdims=True)).astype(np.float32)


ANY_TEXT = st.text(max_size=60) | st.lists(st.sampled_from([*sum(WORDS, ()), *FILLER, "Café", "  ", "\t", "3", "!!"]),
                                            max_size=8).map(" ".join)


@settings(max_examples=60, deadline=None)
@given(texts=st.lists(ANY_TEXT, max_size=6))
def test_probabilities_are_bit_for_bit_the_scikit_learn_pipelines(
    model: LinearTextModel, vector_model: LinearTextModel, char_model: LinearTextModel, texts: list[str]
) -> None:
    """Predicting without scikit-learn or scipy changed nothing: every option value, the same float32 probabilities
    (of the texts as the model reads them: normalised as training text was)."""
    from fbml.text.listings import normalised_texts

    for fitted in (model, vector_model, char_model):
        np.testing.assert_array_equal(fitted.predict_proba(texts), scikit_learn_probabilities(fitted, normalised_texts(texts)))


@pytest.mark.parametrize("block", ["word", "char"])
def test_fitted_blocks_are_scikit_learns_tfidf(char_model: LinearTextModel, block: str) -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer

    for options in (LinearTextOptions(), char_model.options):
        fitted = _fit_block(TEXTS, options, block)
        analyzer, ngram_range = ("word", options.word_ngrams) if block == "word" else (options.char_analyzer, options.char_ngrams)
        pattern = {"token_pattern": TOKEN_PATTERN} if analyzer == "word" else {}
        reference = TfidfVectorizer(analyzer=analyzer, ngram_range=ngram_range, min_df=options.min_df,
                                    sublinear_tf=options.sublinear_tf, **pattern)
        expected = reference.fit_transform(TEXTS)
        assert fitted.vocabulary == tuple(sorted(reference.vocabulary_))
        np.testing.assert_allclose(fitted.idf, reference.idf_, rtol=1e-15)
        np.testing.assert_allclose(fitted.rows.csr().toarray(), expected.toarray(), rtol=1e-12, atol=1e-15)


@settings(max_examples=200)
@given(st.lists(st.lists(st.floats(-1e6, 1e6) | st.sampled_from([0.0, 709.0, -745.0, 1e300]), min_size=3, max_size=3),
                min_size=1, max_size=4))
def test_log_softmax_is_scipys(rows: list[list[float]]) -> None:
    from scipy.special import log_softmax

    logits = np.array(rows, dtype=np.float64)
    np.testing.assert_array_equal(_log_softmax(logits), log_softmax(logits, axis=1))


def test_it_learns_separable_classes(model: LinearTextModel) -> None:
    probabilities = model.predict_proba(PURE)
    assert probabilities.argmax(axis=1).tolist() == PURE_LABELS.tolist()
    assert probabilities.max(axis=1).min() > 0.5
    assert model.num_classes == CLASSES


def test_probabilities_are_float32_rows_summing_to_one(model: LinearTextModel) -> None:
    probabilities = model.predict_proba(PROBE)
    assert probabilities.dtype == np.float32 and probabilities.shape == (len(PROBE), CLASSES)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    assert model.predict_proba([]).shape == (0, CLASSES)


@settings(max_examples=60)
@given(texts=st.lists(st.text(max_size=80) | st.lists(st.sampled_from(sum(WORDS, ())), max_size=6).map(" ".join), max_size=5))
def test_any_text_gives_valid_probabilities(model: LinearTextModel, texts: list[str]) -> None:
    probabilities = model.predict_proba(texts)
    assert probabilities.shape == (len(texts), CLASSES) and np.isfinite(probabilities).all()
    assert (probabilities >= 0).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)


def test_texts_without_known_ngrams_get_the_calibrated_prior(model: LinearTextModel) -> None:
    empty, punctuation = model.predict_proba(["", "!!! ???"])
    logits = model.intercept.astype(np.float64) / model.calibration.temperature
    prior = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(empty, prior, atol=1e-6)
    np.testing.assert_array_equal(empty, punctuation)
    assert model.features(["", "!!! ???"]).values.size == 0


def test_text_is_read_lowercased(model: LinearTextModel) -> None:
    """The model reads text as the cleaning writes it (ASCII: callers normalise first, as serving does)."""
    np.testing.assert_array_equal(model.predict_proba(["SOFA Table"]), model.predict_proba(["sofa table"]))


def test_temperature_is_fitted_on_out_of_fold_scores(model: LinearTextModel) -> None:
    calibration = model.calibration
    assert calibration.method == "temperature" and calibration.folds == 5
    out_of_fold = _out_of_fold_scores(TEXTS, LABELS, CLASSES, model.options, 0, 5)
    assert calibration.temperature == fit_temperature(out_of_fold, LABELS)
    in_sample = _fit_uncalibrated(TEXTS, LABELS, CLASSES, model.options, 0).decision_function(TEXTS)
    assert not math.isclose(fit_temperature(in_sample, LABELS), calibration.temperature, rel_tol=0.05)
    assert not math.isclose(calibration.temperature, 1.0, rel_tol=0.05)
    assert calibration.oof_nll < calibration.oof_nll_raw
    assert model.to_json()["calibration"]["temperature"] == calibration.temperature


def test_probabilities_are_the_softmax_of_tempered_scores(model: LinearTextModel) -> None:
    logits = model.decision_function(PROBE) / model.calibration.temperature
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(model.predict_proba(PROBE), expected / expected.sum(axis=1, keepdims=True), atol=1e-6)


def test_vector_scaling_fits_a_scale_and_bias_per_class(vector_model: LinearTextModel, model: LinearTextModel) -> None:
    calibration = vector_model.calibration
    assert calibration.method == "vector" and calibration.temperature == 1.0
    assert len(calibration.scale) == len(calibration.bias) == CLASSES and len(set(calibration.bias)) > 1
    assert calibration.oof_nll <= model.calibration.oof_nll + 1e-9  # it nests temperature scaling
    assert set(vector_model.to_json()["calibration"]) >= {"scale", "bias"}


def json_and_arrays(model: LinearTextModel) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    return json.loads(json.dumps(model.to_json())), load_safetensors(save_safetensors(model.arrays()))


@pytest.mark.parametrize("kind", ["temperature", "vector"])
def test_round_trip_gives_identical_probabilities(kind: str, model: LinearTextModel, vector_model: LinearTextModel) -> None:
    fitted = model if kind == "temperature" else vector_model
    direct = LinearTextModel.from_parts(fitted.to_json(), fitted.arrays())
    stored = LinearTextModel.from_parts(*json_and_arrays(fitted))
    assert direct == fitted and stored == fitted
    for loaded in (direct, stored):
        np.testing.assert_array_equal(loaded.predict_proba(PROBE), fitted.predict_proba(PROBE))
    assert fitted.to_json()["format"] == LINEAR_TEXT_FORMAT
    assert {name: array.dtype.name for name, array in stored.arrays().items()} == {
        "word_idf": "float64", "char_idf": "float64", "coef": "float32", "intercept": "float32",
    }
    assert fitted.coef.shape == (CLASSES, len(fitted.word_vocabulary) + len(fitted.char_vocabulary))


def test_arrays_are_c_contiguous_for_safetensors(model: LinearTextModel) -> None:
    fortran = attrs.evolve(model, coef=np.asfortranarray(model.coef))
    assert all(array.flags.c_contiguous for array in fortran.arrays().values())
    np.testing.assert_array_equal(LinearTextModel.from_parts(*json_and_arrays(fortran)).coef, model.coef)


def test_fitting_is_deterministic_for_a_seed(model: LinearTextModel) -> None:
    again = fit_linear_text(TEXTS, LABELS, CLASSES, seed=0)
    assert again == model and again.to_json() == model.to_json()
    np.testing.assert_array_equal(again.predict_proba(PROBE), model.predict_proba(PROBE))


def test_two_classes_and_logistic_regression_work() -> None:
    keep = LABELS < 2
    options = LinearTextOptions(classifier="logistic", c=10.0, word_ngrams=(1, 1), char_ngrams=(3, 4), char_analyzer="char")
    binary = fit_linear_text(np.array(TEXTS)[keep].tolist(), LABELS[keep], 2, options=options, seed=3)
    probabilities = binary.predict_proba(PURE[:8])
    assert probabilities.argmax(axis=1).tolist() == PURE_LABELS[:8].tolist()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(LinearTextModel.from_parts(*json_and_arrays(binary)).predict_proba(PROBE), binary.predict_proba(PROBE))


@pytest.mark.parametrize(
    ("texts", "labels", "num_classes", "message"),
    [
        (TEXTS, LABELS[:-1], CLASSES, "one label per text"),
        (TEXTS, LABELS, 2, "labels must lie in"),
        (TEXTS, LABELS.astype(np.float64), CLASSES, "integers"),
        (TEXTS[:-19], LABELS[:-19], CLASSES, "class 2 has 1 training text"),
        (TEXTS, LABELS, 4, "class 3 has 0 training text"),
        ([*TEXTS[:-1], None], LABELS, CLASSES, "every text must be a string"),
        (["", "!!"] * 3, np.array([0, 1] * 3), 2, "cannot build the word n-gram vocabulary"),
        (TEXTS, LABELS, 1, "num_classes must be"),
    ],
)
def test_fit_refuses_bad_input(texts: Any, labels: np.ndarray, num_classes: int, message: str) -> None:
    with pytest.raises(FbmlError, match=message):
        fit_linear_text(texts, labels, num_classes)


@pytest.mark.parametrize(
    "changes",
    [{"word_ngrams": (2, 1)}, {"char_ngrams": (0, 3)}, {"char_analyzer": "word"}, {"min_df": 0}, {"c": -1.0},
     {"c": math.nan}, {"classifier": "svm"}, {"class_weight": "auto"}, {"calibration": "platt"}, {"folds": 1},
     {"sublinear_tf": 1}, {"max_iter": True}],
)
def test_options_refuse_bad_values(changes: dict[str, Any]) -> None:
    with pytest.raises(FbmlError, match=next(iter(changes))):
        LinearTextOptions(**changes)


def test_options_round_trip_through_json() -> None:
    options = LinearTextOptions(word_ngrams=(1, 3), char_analyzer="char", class_weight=None, calibration="vector")
    assert LinearTextOptions.from_json(json.loads(json.dumps(options.to_json()))) == options


# --- from_parts refuses what is not a model: each mutation makes a valid document invalid --------------


def _set(path: tuple[str, ...], value: Any) -> Any:
    def mutate(document: dict[str, Any]) -> None:
        target = document
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return mutate


def _delete(path: tuple[str, ...]) -> Any:
    def mutate(document: dict[str, Any]) -> None:
        target = document
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
    return mutate


def _duplicate(key: str, index: int) -> Any:
    def mutate(document: dict[str, Any]) -> None:
        vocabulary = document[key]
        vocabulary[(index + 1) % len(vocabulary)] = vocabulary[index % len(vocabulary)]
    return mutate


def _drop_entry(key: str) -> Any:
    return lambda document: document[key].pop()


TOP_KEYS = ("format", "num_classes", "options", "calibration", "word_vocabulary", "char_vocabulary")
OPTION_KEYS = tuple(field.name for field in attrs.fields(LinearTextOptions))
NON_STRINGS = st.sampled_from([None, 3, 1.5, True, ["a"], {"a": 1}, ""])
VOCABULARIES = st.sampled_from(["word_vocabulary", "char_vocabulary"])

json_mutations = st.one_of(
    st.sampled_from(TOP_KEYS).map(lambda key: _delete((key,))),
    st.sampled_from(OPTION_KEYS).map(lambda key: _delete(("options", key))),
    st.sampled_from(("method", "temperature", "folds", "oof_nll", "oof_nll_raw")).map(lambda key: _delete(("calibration", key))),
    st.text(max_size=20).filter(lambda text: text != LINEAR_TEXT_FORMAT).map(lambda text: _set(("format",), text)),
    st.sampled_from([LINEAR_TEXT_FORMAT.replace("/1", "/2"), None, 1]).map(lambda value: _set(("format",), value)),
    st.sampled_from([2, 4, 0, -3, 3.0, "3", None, True]).map(lambda value: _set(("num_classes",), value)),
    st.tuples(VOCABULARIES, st.integers(0, 10_000)).map(lambda pair: _duplicate(*pair)),
    st.tuples(VOCABULARIES, st.integers(0, 10_000), NON_STRINGS).map(lambda triple: _set((triple[0], triple[1] % 40), triple[2])),
    st.tuples(VOCABULARIES, st.sampled_from(["sofa", None, 7, {"sofa": 0}, []])).map(lambda pair: _set((pair[0],), pair[1])),
    VOCABULARIES.map(_drop_entry),
    st.sampled_from([0.0, -1.0, math.inf, math.nan, "1", None, [1.0]]).map(lambda value: _set(("calibration", "temperature"), value)),
    st.sampled_from(["platt", None, 1]).map(lambda value: _set(("calibration", "method"), value)),
    st.sampled_from([[2, 1], [0, 2], [1], [1, 2, 3], "1-2", [1.0, 2.0], None]).map(lambda value: _set(("options", "word_ngrams"), value)),
    st.sampled_from(["word", None, 5]).map(lambda value: _set(("options", "char_analyzer"), value)),
    st.sampled_from([0.0, -1, "1", None, math.inf]).map(lambda value: _set(("options", "c"), value)),
    st.text(min_size=1, max_size=8).filter(lambda key: key not in TOP_KEYS).map(lambda key: _set((key,), 1)),
)

array_mutations = st.one_of(
    st.sampled_from(("word_idf", "char_idf", "coef", "intercept")).map(lambda name: lambda arrays: arrays.pop(name)),
    st.sampled_from(("word_idf", "char_idf", "intercept")).map(lambda name: lambda arrays: arrays.update({name: arrays[name][:-1]})),
    st.sampled_from(("coef", "intercept", "word_idf")).map(lambda name: lambda arrays: arrays.update({name: arrays[name].astype(np.float16)})),
    st.just(lambda arrays: arrays.update(coef=arrays["coef"][:, :-1])),
    st.just(lambda arrays: arrays.update(coef=arrays["coef"][:-1])),
    st.just(lambda arrays: arrays.update(coef=arrays["coef"].ravel())),
    st.just(lambda arrays: arrays.update(coef=arrays["coef"].tolist())),
    st.just(lambda arrays: arrays.update(extra=np.zeros(1, dtype=np.float32))),
    st.tuples(st.sampled_from(["coef", "intercept", "word_idf", "char_idf"]), st.sampled_from([math.nan, math.inf, -math.inf]), st.integers(0, 10_000)).map(
        lambda triple: lambda arrays: arrays[triple[0]].reshape(-1).__setitem__(triple[2] % arrays[triple[0]].size, triple[1])
    ),
    st.sampled_from(("word_idf", "char_idf")).map(lambda name: lambda arrays: arrays[name].__setitem__(0, -1.0)),
)


@settings(max_examples=150)
@given(mutation=json_mutations)
def test_from_parts_refuses_a_mutated_json_document(model: LinearTextModel, mutation: Any) -> None:
    document, arrays = json_and_arrays(model)
    mutation(document)
    with pytest.raises(FbmlError, match="^not a linear text model: "):
        LinearTextModel.from_parts(document, arrays)


@settings(max_examples=100)
@given(mutation=array_mutations)
def test_from_parts_refuses_mutated_arrays(model: LinearTextModel, mutation: Any) -> None:
    document, arrays = json_and_arrays(model)
    arrays = {name: array.copy() for name, array in arrays.items()}
    mutation(arrays)
    with pytest.raises(FbmlError, match="^not a linear text model: "):
        LinearTextModel.from_parts(document, arrays)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [prefix] + [path for key, item in value.items() for path in _paths(item, (*prefix, key))]
    if isinstance(value, list):
        return [prefix] + [path for index, item in enumerate(value[:3]) for path in _paths(item, (*prefix, index))]
    return [prefix]


@settings(max_examples=150)
@given(data=st.data(), replacement=json_values)
def test_from_parts_gives_a_model_or_an_fbml_error_for_any_json(model: LinearTextModel, data: st.DataObject, replacement: Any) -> None:
    document, arrays = json_and_arrays(model)
    path = data.draw(st.sampled_from(_paths(document)))
    if path:
        _set(path, replacement)(document)
    else:
        document = replacement
    try:
        loaded = LinearTextModel.from_parts(document, arrays)
    except FbmlError as error:
        assert str(error).startswith("not a linear text model: ") and "\n" not in str(error)
    else:
        assert loaded.predict_proba(PURE[:2]).shape == (2, CLASSES)


def test_a_few_named_refusals(model: LinearTextModel) -> None:
    document, arrays = json_and_arrays(model)
    cases = [
        ({**document, "format": "fbml.linear-text/0"}, arrays, "format must be 'fbml.linear-text/1'"),
        ({**document, "word_vocabulary": [*document["word_vocabulary"][:-1], document["word_vocabulary"][0]]}, arrays, "duplicate word vocabulary"),
        ({**document, "char_vocabulary": "abc"}, arrays, "char vocabulary must be a list of strings"),
        ({key: value for key, value in document.items() if key != "options"}, arrays, "lacks options"),
        (document, {**arrays, "coef": np.full_like(arrays["coef"], np.nan)}, "coef has non-finite values"),
        (document, {**arrays, "coef": arrays["coef"][:, 1:]}, "coef must have shape"),
        (document, {**arrays, "intercept": arrays["intercept"][:2]}, r"intercept must have shape \(3,\)"),
        ({**document, "num_classes": 4}, arrays, "coef must have 4 rows"),
        (copy.deepcopy(document) | {"calibration": {**document["calibration"], "temperature": -1}}, arrays, "temperature must be a number from e"),
        (copy.deepcopy(document) | {"calibration": {**document["calibration"], "temperature": 1e-300}}, arrays, "temperature must be a number from e"),
    ]
    for json_value, parts, message in cases:
        with pytest.raises(FbmlError, match=message):
            LinearTextModel.from_parts(json_value, parts)


NOT_DISTINCT = [
    ("word", lambda vocabulary: vocabulary[:-1] + [vocabulary[0]], "duplicate word vocabulary entr(ies): ['{0}']"),
    ("char", lambda vocabulary: [vocabulary[1], *vocabulary[1:-2], vocabulary[0], vocabulary[0]],
     "duplicate char vocabulary entr(ies): ['{0}', '{1}']"),
    ("char", lambda vocabulary: ["", *vocabulary[1:]], "the char vocabulary must be non-empty strings, at least one"),
    ("word", lambda vocabulary: ["", *vocabulary[1:-1], vocabulary[1]], "the word vocabulary must be non-empty strings, at least one"),
    ("word", lambda vocabulary: [*vocabulary[:-1], 3], "the word vocabulary must be non-empty strings, at least one"),
    ("char", lambda vocabulary: [], "the char vocabulary must be non-empty strings, at least one"),
]  # fmt: skip


@pytest.mark.parametrize(("block", "change", "message"), NOT_DISTINCT)
def test_a_vocabulary_not_of_distinct_strings_is_named(model: LinearTextModel, block: str, change: Any, message: str) -> None:
    """Repeated entries are named (the first three, sorted); an empty string is refused before a repeat."""
    document, arrays = json_and_arrays(model)
    vocabulary = document[f"{block}_vocabulary"]
    document[f"{block}_vocabulary"] = change(vocabulary)
    with pytest.raises(FbmlError) as info:
        LinearTextModel.from_parts(document, arrays)
    assert str(info.value) == "not a linear text model: " + message.format(*sorted(vocabulary[:2]))


def test_the_counters_use_the_vocabularies_in_column_order(model: LinearTextModel) -> None:
    words, chars = model.counters
    assert words.vocabulary is model.word_vocabulary and chars.vocabulary is model.char_vocabulary
    assert list(words.columns.values()) == list(range(len(model.word_vocabulary)))


def test_prediction_refuses_a_single_string_or_non_strings(model: LinearTextModel) -> None:
    with pytest.raises(FbmlError, match="not one string"):
        model.predict_proba("sofa table")
    with pytest.raises(FbmlError, match="every text must be a string"):
        model.predict_proba(["sofa", None])  # type: ignore[list-item]


def subset_model(like: LinearTextModel | None) -> LinearTextModel:
    """A model of two of the three classes' texts (as a subcategory model is fitted on some of a bundle's listings)."""
    chosen = LABELS < 2
    return fit_linear_text([text for text, keep in zip(TEXTS, chosen, strict=True) if keep], LABELS[chosen], 2, seed=0, like=like)


def test_a_model_fitted_like_another_shares_its_counters_and_vocabularies(model: LinearTextModel) -> None:
    twin = subset_model(like=model)
    assert twin.counters is model.counters
    assert twin.word_vocabulary is model.word_vocabulary and twin.char_vocabulary is model.char_vocabulary
    own = subset_model(like=None)
    assert len(own.word_vocabulary) < len(model.word_vocabulary)  # the fewer texts' own vocabulary is smaller
    agree = np.mean(twin.predict_proba(PROBE).argmax(axis=1) == own.predict_proba(PROBE).argmax(axis=1))
    assert agree >= 0.9  # the same texts, counted over more columns


def own_columns(model: LinearTextModel, own: LinearTextModel) -> list[int]:
    """The columns of ``model``'s vocabularies that ``own``'s vocabularies hold, in ``own``'s order."""
    words, chars = model.counters
    return [words.columns[gram] for gram in own.word_vocabulary] + [len(model.word_vocabulary) + chars.columns[gram]
                                                                    for gram in own.char_vocabulary]


def test_only_the_texts_columns_get_weights_when_fitted_like_another(model: LinearTextModel) -> None:
    twin, own = subset_model(like=model), subset_model(like=None)
    unseen = np.ones(twin.num_features, dtype=bool)
    unseen[own_columns(model, own)] = False
    assert unseen.any() and not twin.coef[:, unseen].any()


def test_loading_like_another_shares_its_counters_only_when_the_vocabularies_are_the_same(model: LinearTextModel) -> None:
    twin, own = subset_model(like=model), subset_model(like=None)
    loaded = LinearTextModel.from_parts(*json_and_arrays(twin), like=model)
    assert loaded.counters is model.counters and loaded == twin
    np.testing.assert_array_equal(loaded.predict_proba(PROBE), LinearTextModel.from_parts(*json_and_arrays(twin)).predict_proba(PROBE))
    assert LinearTextModel.from_parts(*json_and_arrays(own), like=model).counters is not model.counters
    document, arrays = json_and_arrays(twin)
    document["options"]["char_analyzer"] = "char"
    assert LinearTextModel.from_parts(document, arrays, like=model).counters is not model.counters


def test_a_model_refuses_counters_of_other_vocabularies_or_n_grams(model: LinearTextModel, char_model: LinearTextModel) -> None:
    with pytest.raises(FbmlError, match="counter counts over another vocabulary"):
        attrs.evolve(subset_model(like=None), counters=model.counters)
    with pytest.raises(FbmlError, match="counts other n-grams"):
        attrs.evolve(model, options=char_model.options)
    with pytest.raises(FbmlError, match="like must count n-grams as options say"):
        fit_linear_text(TEXTS, LABELS, CLASSES, options=char_model.options, like=model)
