"""Canonical JSON: one byte string per value, and nothing else parses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelfleet.bundle import canonical_bytes, parse_canonical
from modelfleet.errors import ManifestError

# JSON values canonical JSON can hold: no floats.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)


def test_encoding_sorts_keys_and_drops_whitespace():
    value = {"b": [True, None, "x"], "a": {"z": 1, "y": -2}}

    assert canonical_bytes(value) == b'{"a":{"y":-2,"z":1},"b":[true,null,"x"]}'


def test_keys_sort_by_code_point_and_text_stays_utf8():
    value = {"é": 1, "z": 2, "Z": 3, "\U0001f600": 4}

    assert canonical_bytes(value) == '{"Z":3,"z":2,"é":1,"\U0001f600":4}'.encode()


@given(st.dictionaries(st.text(), st.integers(), max_size=8))
def test_encoding_does_not_depend_on_insertion_order(value):
    assert canonical_bytes(dict(reversed(value.items()))) == canonical_bytes(value)


@given(json_values)
def test_canonical_bytes_parse_back_to_the_same_value(value):
    assert parse_canonical(canonical_bytes(value)) == value


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(0.5, id="float"),
        pytest.param({"a": [1, {"b": 1.0}]}, id="nested_float"),
        pytest.param(float("nan"), id="nan"),
        pytest.param({"when": object()}, id="object"),
        pytest.param({1: "a"}, id="int_key"),
    ],
)
def test_encoding_refuses_what_canonical_json_cannot_hold(value):
    with pytest.raises(TypeError):
        canonical_bytes(value)


REFUSED = [
    pytest.param(b'{"a":0.5}', "float_in_manifest", id="float"),
    pytest.param(b'{"a":1e3}', "float_in_manifest", id="exponent"),
    pytest.param(b'{"a":NaN}', "float_in_manifest", id="nan"),
    pytest.param(b'{"a":-Infinity}', "float_in_manifest", id="infinity"),
    pytest.param(b'{"a":1,"a":1}', "duplicate_key", id="duplicate_key"),
    pytest.param(b'{"a":{"b":1,"b":2}}', "duplicate_key", id="nested_duplicate_key"),
    pytest.param(b'{"a":"\xff"}', "not_utf8", id="not_utf8"),
    pytest.param(b'{"a":"\xc0\xae"}', "not_utf8", id="overlong_utf8"),
    pytest.param(b'{"a":"\\ud800"}', "not_utf8", id="lone_surrogate_escape"),
    pytest.param(b'{"a":', "not_json", id="truncated"),
    pytest.param(b"", "not_json", id="empty"),
    pytest.param(b"9" * 5000, "not_json", id="integer_beyond_int_digit_limit"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, "not_json", id="nested_beyond_recursion_limit"),
    pytest.param(b'{"b":1,"a":2}', "non_canonical", id="unsorted_keys"),
    pytest.param(b'{"a": 1}', "non_canonical", id="whitespace"),
    pytest.param(b'{"a":1}\n', "non_canonical", id="trailing_newline"),
    pytest.param(b'{"a":"\\u00e9"}', "non_canonical", id="ascii_escape_of_non_ascii"),
    pytest.param(b'{"a":"\\u0041"}', "non_canonical", id="needless_escape"),
    pytest.param(b'{"a":-0}', "non_canonical", id="negative_zero"),
    pytest.param(b"\xef\xbb\xbf{}", "not_json", id="byte_order_mark"),
]


@pytest.mark.parametrize(("data", "code"), REFUSED)
def test_parsing_refuses_anything_but_canonical_json(data, code):
    with pytest.raises(ManifestError) as refused:
        parse_canonical(data)

    assert refused.value.code == code


def test_refusal_names_what_was_parsed():
    with pytest.raises(ManifestError, match=r"^manifest\.sig is not in canonical form"):
        parse_canonical(b'{"b":1,"a":2}', what="manifest.sig")
