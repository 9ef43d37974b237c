"""The seminar's IP detector: the addresses this machine is reachable at on its interfaces (IPv4 from
the kernel per interface, global IPv6 from /proc), for the broker certificate and discovery.

It only reads; it never decides which address a device should use (config overrides do that).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import socket
import struct
from pathlib import Path

_SIOCGIFADDR = 0x8915
_IF_INET6 = Path("/proc/net/if_inet6")


def _ipv4(interface: str) -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            request = struct.pack("256s", interface.encode()[:15])
            answer = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, request)
        except OSError:  # no IPv4 address on this interface
            return None
    return socket.inet_ntoa(answer[20:24])


def _ipv6() -> list[str]:
    found = []
    with contextlib.suppress(OSError):
        for line in _IF_INET6.read_text().splitlines():
            raw = line.split()[0]
            address = ipaddress.IPv6Address(bytes.fromhex(raw))
            if not (address.is_link_local or address.is_loopback):
                found.append(str(address))
    return found


def interface_addresses(include_loopback: bool = False) -> list[str]:
    """Every interface address, IPv4 first, in interface order, without duplicates."""
    found: dict[str, None] = {}
    for _index, name in socket.if_nameindex():
        address = _ipv4(name)
        if address and (include_loopback or not ipaddress.IPv4Address(address).is_loopback):
            found[address] = None
    for address in _ipv6():
        found[address] = None
    return list(found)
