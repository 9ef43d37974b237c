"""The register codec: known layouts for every type and order, and (property) every value a tag can
hold survives encode then decode, whatever the word and byte order."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.modbus.codec import INT_RANGES, CodecError, TagCodec

ORDERS = st.sampled_from(["big", "little"])


def codec(type_: str, width: int, word: str = "big", byte: str = "big", **kw: object) -> TagCodec:
    return TagCodec(type=type_, width=width, word_order=word, byte_order=byte, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("word", "byte", "registers"),
    [
        ("big", "big", [0x4049, 0x0FDB]),  # ABCD
        ("big", "little", [0x4940, 0xDB0F]),  # BADC
        ("little", "big", [0x0FDB, 0x4049]),  # CDAB
        ("little", "little", [0xDB0F, 0x4940]),  # DCBA
    ],
)
def test_float32_in_all_four_layouts(word: str, byte: str, registers: list[int]) -> None:
    tag = codec("float32", 2, word, byte)
    assert tag.decode(registers, 0) == 3.1415927
    assert tag.encode(3.1415927) == registers


def test_scale_and_offset_apply_both_ways() -> None:
    tag = codec("int16", 1, scale=0.1, offset=-40.0)
    assert tag.decode([650], 0) == 25.0
    assert tag.encode(25.0) == [650]
    with pytest.raises(CodecError, match="outside the int16 range"):
        tag.encode(4000)


def test_bit_in_register_keeps_the_other_bits() -> None:
    tag = codec("bool", 1, bit=15)
    assert tag.decode([0x8000], 0) is True
    assert tag.encode_bit(False, 0xFFFF) == 0x7FFF
    assert tag.encode_bit(True, 0x0001) == 0x8001


def test_refuses_values_that_do_not_fit() -> None:
    with pytest.raises(CodecError, match="not a whole number"):
        codec("uint16", 1).encode(1.5)
    with pytest.raises(CodecError, match="not a number"):
        codec("uint16", 1).encode("12")
    with pytest.raises(CodecError, match="holds 4"):
        codec("string", 2).encode("ABCDE")
    with pytest.raises(CodecError, match="not a bool"):
        codec("bool", 1, is_bit=True).encode(2)


@given(st.sampled_from(sorted(INT_RANGES)), st.data(), ORDERS, ORDERS)
def test_integers_round_trip(type_: str, data: st.DataObject, word: str, byte: str) -> None:
    low, high = INT_RANGES[type_]
    value = data.draw(st.integers(low, high))
    width = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "int64": 4}[type_]
    tag = codec(type_, width, word, byte)
    registers = tag.encode(value)
    assert isinstance(registers, list) and len(registers) == width and all(0 <= r <= 0xFFFF for r in registers)
    assert tag.decode([0, *registers], 1) == value


@given(st.floats(width=32, allow_nan=False, allow_infinity=False), ORDERS, ORDERS)
def test_float32_round_trips_to_the_same_float32(value: float, word: str, byte: str) -> None:
    tag = codec("float32", 2, word, byte)
    decoded = tag.decode(tag.encode(value), 0)  # type: ignore[arg-type]
    assert struct.pack(">f", decoded) == struct.pack(">f", value) or (value == 0 and decoded == 0)


@given(st.floats(allow_nan=False, allow_infinity=False), ORDERS, ORDERS)
def test_float64_round_trips(value: float, word: str, byte: str) -> None:
    tag = codec("float64", 4, word, byte)
    assert tag.decode(tag.encode(value), 0) == value  # type: ignore[arg-type]


@given(st.text(st.characters(min_codepoint=33, max_codepoint=0x7FF), max_size=8), ORDERS)
def test_strings_round_trip(value: str, byte: str) -> None:
    tag = codec("string", 8, byte=byte)
    if len(value.encode()) > 16:
        with pytest.raises(CodecError):
            tag.encode(value)
    else:
        assert tag.decode(tag.encode(value), 0) == value  # type: ignore[arg-type]


@given(st.integers(-32768, 32767), st.sampled_from([0.1, 0.5, 2.0, 10.0]), st.sampled_from([0.0, -40.0, 273.15]))
def test_scaled_integers_round_trip(raw: int, scale: float, offset: float) -> None:
    tag = codec("int16", 1, scale=scale, offset=offset)
    value = tag.decode([raw & 0xFFFF], 0)
    assert math.isfinite(value)
    assert tag.encode(value) == [raw & 0xFFFF]


@pytest.mark.parametrize(
    ("tag", "value", "message"),
    [
        (codec("int16", 1), 10**400, "outside the int16 range"),  # math.isfinite raised OverflowError
        (codec("int16", 1, scale=0.1), 1e308, "outside the int16 range after scale 0.1"),  # round(inf)
        (codec("int64", 4, scale=0.1), 10**400, "outside the int64 range"),
        (codec("float32", 2), 10**400, "outside the float32 range"),
        (codec("float64", 4), 10**400, "outside the float64 range"),
        (codec("float64", 4, scale=0.1), 1e308, "outside the float64 range after scale 0.1"),  # encoded +Inf
        (codec("float64", 4, scale=3.0), 1.7976931348623157e308, "outside the float64 range"),  # +Inf read back
        (codec("float64", 4), math.nan, "cannot be written"),
    ],
)
def test_values_no_register_holds_are_refused_with_a_codec_error(tag: TagCodec, value: float, message: str) -> None:
    with pytest.raises(CodecError, match=message) as refused:
        tag.encode(value)
    assert len(str(refused.value)) < 200  # a 400-digit number is not quoted in full


@given(
    st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(10**400), 10**400),
    st.sampled_from(["int16", "int64", "float32", "float64"]),
    st.sampled_from([1.0, 0.1, 3.0, 1e-300, 1e300]),
    st.sampled_from([0.0, -1e307, 1e307]),
)
def test_whatever_encode_accepts_reads_back_as_a_finite_number(
    value: float, type_: str, scale: float, offset: float
) -> None:
    tag = codec(type_, {"int16": 1, "float32": 2}.get(type_, 4), scale=scale, offset=offset)
    try:
        registers = tag.encode(value)
    except CodecError:
        return
    assert math.isfinite(tag.decode(registers, 0))  # type: ignore[arg-type]
