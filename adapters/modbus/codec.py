"""Turns register contents into tag values and back: int16..int64, float32/64, strings, bits in a
register, with word order (big = high word first, little = low word first / CDAB), byte order within
each register, and scale/offset (value = raw * scale + offset).

Pure functions over integers: no I/O, no pymodbus.
"""

from __future__ import annotations

import math
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.adapter_config import ModbusTag

FORMATS = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q", "float32": "f", "float64": "d"}
INT_RANGES = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
}


class CodecError(ValueError):
    """A value that cannot be encoded for its tag (wrong type, out of range, too long)."""


class NotFinite(ValueError):
    """Registers that hold NaN or an infinity: no value to publish. PLCs write NaN (0x7FC00000) on
    purpose to flag a sensor fault, so this is the device's way of saying "bad", not a decode error."""


def _float32_shortest(value: float) -> float:
    """The shortest decimal that is the same float32, so 0.1f publishes as 0.1 and not 0.100000001."""
    packed = struct.pack(">f", value)
    for digits in range(6, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.pack(">f", candidate) == packed:
            return candidate
    return value


def _brief(value: Any) -> str:
    """A value for an error message: a 4,000-digit integer is not worth quoting in full."""
    try:
        text = repr(value)
    except ValueError:  # over Python's int-to-text digit limit
        return f"an integer of more than {sys.get_int_max_str_digits()} digits"
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"


def _tidy(value: float) -> float:
    """Drop binary noise from scaling (23.400000000000002 -> 23.4) without losing real precision."""
    return float(f"{value:.12g}") if math.isfinite(value) else value


@dataclass(frozen=True, slots=True)
class TagCodec:
    """How one tag's registers (or bit) map to its value."""

    type: str  # int16 ... string, or "bool"
    width: int  # registers (1 for bits)
    word_order: str = "big"
    byte_order: str = "big"
    scale: float = 1.0
    offset: float = 0.0
    bit: int | None = None
    is_bit: bool = False

    @classmethod
    def for_tag(cls, tag: ModbusTag, word_order: str, byte_order: str) -> TagCodec:
        return cls(
            type=tag.type or "bool",
            width=tag.register_count,
            word_order=tag.word_order or word_order,
            byte_order=tag.byte_order or byte_order,
            scale=tag.scale,
            offset=tag.offset,
            bit=tag.bit,
            is_bit=tag.is_bit,
        )

    @property
    def scaled(self) -> bool:
        return self.scale != 1.0 or self.offset != 0.0

    # ---- registers -> value ---------------------------------------------------------------

    def _bytes(self, words: Sequence[int]) -> bytes:
        if self.word_order == "little" and self.type != "string":
            words = list(reversed(words))
        return struct.pack((">" if self.byte_order == "big" else "<") + "H" * len(words), *words)

    def decode(self, data: Sequence[Any], at: int) -> Any:
        """The value of this tag in a block read: `data` holds registers (ints) or bits, `at` its offset."""
        if self.is_bit:
            return bool(data[at])
        if self.bit is not None:
            return bool((data[at] >> self.bit) & 1)
        words = data[at : at + self.width]
        if self.type == "string":
            return self._bytes(words).rstrip(b"\x00 ").decode("utf-8", errors="replace")
        if self.type == "uint16" and self.byte_order == "big":
            raw: Any = words[0]
        else:
            (raw,) = struct.unpack(">" + FORMATS[self.type], self._bytes(words))
        if self.type == "float32":
            raw = _float32_shortest(raw)
        value = _tidy(raw * self.scale + self.offset) if self.scaled else raw
        if isinstance(value, float) and not math.isfinite(value):
            raw_text = " ".join(f"{w:04X}" for w in words)
            what = "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")
            scaled = f" after scale {self.scale} and offset {self.offset}" if self.scaled and math.isfinite(raw) else ""
            raise NotFinite(f"{self.type} is {what}{scaled} (registers {raw_text}): the device flags no valid value")
        return value

    # ---- value -> registers ---------------------------------------------------------------

    def encode(self, value: Any) -> list[int] | bool:
        """Registers to write (or the bit for a coil); raise CodecError if `value` does not fit."""
        if self.is_bit:
            return self._as_bool(value)
        if self.bit is not None:
            raise CodecError("a bit inside a register is written with encode_bit (read, modify, write)")
        if self.type == "string":
            return self._encode_string(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CodecError(f"{value!r} is not a number; a {self.type} tag takes a number")
        if isinstance(value, float) and not math.isfinite(value):
            raise CodecError(f"{value!r} cannot be written to a {self.type} register")
        beyond = CodecError(
            f"{_brief(value)} is outside the {self.type} range"
            + (f" after scale {self.scale} and offset {self.offset}" if self.scaled else "")
        )
        try:
            raw: Any = (value - self.offset) / self.scale if self.scaled else value
            if self.type not in INT_RANGES:
                raw = float(raw)
        except OverflowError:  # an integer of hundreds of digits: no float holds it
            raise beyond from None
        if isinstance(raw, float) and not math.isfinite(raw):  # 1e308 with scale 0.1: no register holds it
            raise beyond
        fmt = FORMATS[self.type]
        if self.type in INT_RANGES:
            rounded = round(raw)
            if isinstance(raw, float) and not math.isclose(raw, rounded, abs_tol=1e-6) and not self.scaled:
                raise CodecError(f"{value!r} is not a whole number; a {self.type} tag holds integers")
            low, high = INT_RANGES[self.type]
            if not low <= rounded <= high:
                hint = (
                    f" (raw {_brief(rounded)} after scale {self.scale} and offset {self.offset})" if self.scaled else ""
                )
                raise CodecError(f"{_brief(value)} is outside the {self.type} range {low}..{high}{hint}")
            raw = rounded
        elif self.type == "float32" and abs(raw) > 3.4028234663852886e38:
            raise CodecError(f"{value!r} is outside the float32 range")
        try:
            packed = struct.pack(">" + fmt, raw)
        except (struct.error, OverflowError) as exc:
            raise CodecError(f"{_brief(value)} cannot be written to a {self.type} register: {exc}") from None
        words = self._words(packed)
        if self.scaled:  # must read back as a number: the largest float64 with scale 3 overflows on the way back
            try:
                self.decode(words, 0)
            except NotFinite:
                raise beyond from None
        return words

    def encode_bit(self, value: Any, register: int) -> int:
        """The register with this tag's bit set to `value` and every other bit kept."""
        assert self.bit is not None
        mask = 1 << self.bit
        return (register | mask) if self._as_bool(value) else (register & ~mask)

    def _words(self, packed: bytes) -> list[int]:
        words = list(struct.unpack(">" + "H" * (len(packed) // 2), packed))
        if self.byte_order == "little":
            words = [((w & 0xFF) << 8) | (w >> 8) for w in words]
        if self.word_order == "little" and self.type != "string":
            words.reverse()
        return words

    def _encode_string(self, value: Any) -> list[int]:
        if not isinstance(value, str):
            raise CodecError(f"{value!r} is not a string; a string tag takes text")
        data = value.encode("utf-8")
        if len(data) > self.width * 2:
            raise CodecError(f"{value!r} is {len(data)} bytes; this string tag holds {self.width * 2}")
        return self._words(data.ljust(self.width * 2, b"\x00"))

    @staticmethod
    def _as_bool(value: Any) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise CodecError(f"{value!r} is not a bool; send true/false (or 1/0)")
