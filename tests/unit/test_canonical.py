import hashlib

import pytest
import rfc8785
from hypothesis import given
from hypothesis import strategies as st

from messages.canonical import b64, canonical, digest, loads_strict, unb64
from messages.errors import CanonicalizationError


def test_keys_sorted_by_utf16_and_no_whitespace():
    # RFC 8785 3.2.3: property names sort by their UTF-16 code units.
    value = {"b": 1, "a": [True, None], "\u20ac": "x", "\U0001f600": 2, "\ufb33": 3}
    out = canonical(value)
    assert out == '{"a":[true,null],"b":1,"\u20ac":"x","\U0001f600":2,"\ufb33":3}'.encode()


def test_numbers_in_es6_form():
    assert canonical([1.0, 1e21, 1e-7, -0.0, 333333333.33333329]) == (
        b"[1,1e+21,1e-7,0,333333333.3333333]"
    )


def test_digest_is_sha256_of_canonical_bytes():
    value = {"z": 1, "a": "b"}
    assert digest(value) == hashlib.sha256(b'{"a":"b","z":1}').digest()
    assert digest(value) == digest({"a": "b", "z": 1})


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), {1: "x"}, b"bytes", 2**64])
def test_values_without_a_canonical_form_are_refused(bad):
    with pytest.raises(CanonicalizationError):
        canonical(bad)


@pytest.mark.parametrize("text", ['{"a":1,"a":2}', '{"a":NaN}', "[Infinity]"])
def test_strict_loading_refuses_ambiguous_json(text):
    with pytest.raises(ValueError):
        loads_strict(text)


def test_base64_must_be_canonical():
    assert unb64(b64(b"\x01\x02")) == b"\x01\x02"
    # "AQI=" and "AQJ=" decode to the same bytes with a lax decoder.
    with pytest.raises(ValueError):
        unb64("AQJ=")
    with pytest.raises(ValueError):
        unb64("AQI")


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=16,
)


@given(json_values)
def test_fast_path_agrees_with_the_reference_serializer(value):
    try:
        expected = rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, UnicodeEncodeError):
        with pytest.raises(CanonicalizationError):
            canonical(value)
        return
    assert canonical(value) == expected


def test_keys_beyond_the_bmp_sort_by_utf16_code_units():
    # U+1F600 sorts after U+FB33 by code point but before it by UTF-16 code unit.
    assert canonical({"\U0001f600": 1, "\ufb33": 2}) == '{"\U0001f600":1,"\ufb33":2}'.encode()


def test_lone_surrogates_have_no_canonical_form():
    with pytest.raises(CanonicalizationError):
        canonical({"k": "\ud800"})
