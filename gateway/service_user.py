"""The account millgate's components run as: the `millgate` system user when started as root and it
exists (the Debian package creates it), otherwise whoever started the gateway (a dev checkout).
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass

SERVICE_USER = "millgate"


@dataclass(frozen=True)
class ServiceUser:
    name: str
    uid: int
    gid: int

    @property
    def owner(self) -> tuple[int, int]:
        return (self.uid, self.gid)


def service_user() -> ServiceUser:
    if os.geteuid() == 0:
        try:
            entry = pwd.getpwnam(SERVICE_USER)
            return ServiceUser(entry.pw_name, entry.pw_uid, entry.pw_gid)
        except KeyError:
            pass
    entry = pwd.getpwuid(os.geteuid())
    return ServiceUser(entry.pw_name, entry.pw_uid, os.getegid())
