"""What OTA compares after a restart (gateway/package_version.py): a .deb's own Version, read with
dpkg-deb from real packages, against the running distribution's version."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest

from gateway.package_version import PackageUnreadable, deb_version, running_version, same_release
from tests.fixtures.debs import make_deb


def test_the_running_version_is_the_installed_distributions() -> None:
    assert running_version() == metadata.version("millgate")


def test_a_debs_version_is_read_from_its_control_file_not_its_name(tmp_path: Path) -> None:
    deb = tmp_path / "millgate_9.9_all.deb"  # a misleading name
    make_deb(deb, "1:2.3.0-1")
    assert deb_version(deb) == "1:2.3.0-1"


@pytest.mark.parametrize("body", [b"", b"!<arch>\ndebian-binary   garbage", b"PK\x03\x04 a zip"])
def test_a_file_that_is_not_a_package_is_refused_with_the_file_named(tmp_path: Path, body: bytes) -> None:
    deb = tmp_path / "broken.deb"
    deb.write_bytes(body)
    with pytest.raises(PackageUnreadable, match=r"broken\.deb: not a readable Debian package"):
        deb_version(deb)


@pytest.mark.parametrize(
    ("deb", "running", "same"),
    [
        ("0.2.0", "0.2.0", True),
        ("1:0.2.0", "0.2.0", True),  # the epoch orders Debian versions; it is not part of the release
        ("0.2.0-3", "0.2.0", True),  # a Debian revision of the same upstream release
        ("0.2.0~rc1", "0.2.0rc1", True),  # Debian's pre-release tilde, PEP 440's bare form
        ("0.2.0", "0.1.0", False),
        ("0.2.0-3", "0.2.0.post3", False),
        ("0.2.0rc1", "0.2.0", False),
        ("10.0", "1.0", False),
    ],
)
def test_same_release(deb: str, running: str, same: bool) -> None:
    assert same_release(deb, running) is same
