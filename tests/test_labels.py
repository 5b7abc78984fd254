"""The label codec: hypothesis properties."""

from __future__ import annotations

import pytest
from fbml.errors import FbmlError
from fbml.text.labels import LabelCodec, UnknownLabelError, label_codec
from hypothesis import given
from hypothesis import strategies as st

labels = st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=30)


@given(labels)
def test_decode_encode_round_trips(values: list[str]) -> None:
    codec = label_codec(values)
    assert codec.decode(codec.encode(values)) == values


@given(labels, st.randoms())
def test_codec_does_not_depend_on_input_order(values: list[str], random) -> None:
    shuffled = values[:]
    random.shuffle(shuffled)
    assert label_codec(values) == label_codec(shuffled)
    assert list(label_codec(values).classes) == sorted(set(values))


@given(labels)
def test_json_round_trip(values: list[str]) -> None:
    codec = label_codec(values)
    assert LabelCodec.from_json(codec.to_json()) == codec


def test_unknown_labels_and_indices_are_clear_errors() -> None:
    codec = label_codec(["b", "a"])
    with pytest.raises(UnknownLabelError, match=r"unknown label\(s\) \['zebra'\]"):
        codec.encode(["a", "zebra"])
    with pytest.raises(UnknownLabelError, match="out of range"):
        codec.decode([2])
    with pytest.raises(FbmlError, match="sorted"):
        LabelCodec.from_json({"format": "fbml.label-codec/1", "classes": ["b", "a"]})
    with pytest.raises(FbmlError, match="not a label codec"):
        LabelCodec.from_json({"classes": "a"})
