"""JSON as the wire carries it: NaN, Infinity and numbers beyond a double's range are not JSON. What
millgate reads from outside and may echo back (write commands, shadow documents) is parsed this way, so
that what it sends on is JSON again. It parses; it decides nothing about what the document means.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any


class NotJson(ValueError):
    """The text is not strict JSON; the message says what is wrong in words an operator can act on."""


def _constant(name: str) -> Any:
    raise NotJson(f"payload holds {name}, which is not JSON; send a finite number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 is JSON syntax, but no double holds it: Python reads inf
        raise NotJson(f"payload holds {text[:40]}, beyond the largest number a double holds (1.8e308)")
    return value


def loads(payload: bytes | str) -> Any:
    """The payload's JSON value; raises NotJson. RecursionError (nesting past the parser) is left to
    the caller, which knows how deep its documents may go."""
    try:
        return json.loads(payload, parse_constant=_constant, parse_float=_finite)
    except NotJson:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NotJson(f"payload is not JSON ({exc})") from None
    except ValueError:  # int() refuses the digits: Python's guard against quadratic-time conversion
        raise NotJson(f"payload holds a number of more than {sys.get_int_max_str_digits()} digits") from None
