"""Maps an OPC-UA status code to the gateway's quality (good, uncertain, bad) and the reason an
operator reads, e.g. `BadNodeIdUnknown: The node id refers to a node that does not exist...`.

Only the mapping; it reads no values and does no I/O.
"""

from __future__ import annotations

from asyncua import ua

from adapters.base.tag import Quality

SEVERITY_MASK = 0xC000_0000
GOOD_BITS, UNCERTAIN_BITS = 0x0000_0000, 0x4000_0000


def quality_of(code: int) -> Quality:
    """Part 4 7.39: the top two bits of a status code are its severity (00 good, 01 uncertain, 1x bad)."""
    severity = code & SEVERITY_MASK
    if severity == GOOD_BITS:
        return Quality.GOOD
    if severity == UNCERTAIN_BITS:
        return Quality.UNCERTAIN
    return Quality.BAD


def status_reason(code: int) -> str:
    """`Name` (and its description) of a status code, or its hex value if the stack does not know it."""
    name, doc = ua.status_codes.get_name_and_doc(code & 0xFFFF_0000)
    if doc.startswith("Unknown StatusCode"):
        return f"{name} (0x{code:08X})"
    return f"{name}: {doc}" if doc else name
