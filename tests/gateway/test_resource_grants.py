"""Resource grants at deployment refuse what the config check refuses, against the dirs the gateway
really uses and with links resolved: a volume that is a link into the state dir gets no ACL entry.

Issue 4 ("only the access its resources grant ... cannot read an undeclared file the gateway owns
(the CA key)") and ../shared/DESIGN.md "Functions".
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.config import Function, Resource, ResourceGrant
from gateway.resource_grants import grant_resources

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setfacl") is None, reason="granting ACLs to other uids needs root and setfacl"
)

UID = 1201


def _acl(path: Path) -> str:
    return subprocess.run(["getfacl", "-cp", str(path)], capture_output=True, text=True, check=True).stdout


def test_volume_linked_into_the_state_dir_is_refused_and_granted_nothing(tmp_path: Path) -> None:
    state, config, logs = tmp_path / "state", tmp_path / "etc", tmp_path / "log"
    for directory in (state / "ca", config, logs):
        directory.mkdir(parents=True)
    key = state / "ca" / "group-ca.key.pem"
    key.write_text("secret")
    shared = tmp_path / "shared"
    shared.mkdir()
    (tmp_path / "innocent").symlink_to(state / "ca")
    resources = {
        "innocent": Resource(name="innocent", kind="volume", path=str(tmp_path / "innocent")),
        "shared": Resource(name="shared", kind="volume", path=str(shared)),
    }
    function = Function(
        name="f",
        code="functions/f",
        handler="m.handler",
        run_as=f"{UID}:{UID}",
        resources=[ResourceGrant(name="shared", access="rw"), ResourceGrant(name="innocent", access="rw")],
    )

    access = grant_resources(function, resources, True, state, config, logs)

    assert access.problems == [
        f"resource 'innocent': '{tmp_path / 'innocent'}' lies in the gateway state dir {state}: "
        "functions never get the gateway's own files"
    ]
    assert f"user:{UID}:" not in _acl(key)
    assert f"user:{UID}:" not in _acl(state / "ca")
    # the function will not run, so nothing else is granted either
    assert f"user:{UID}:" not in _acl(shared)


def test_allowed_volume_gets_its_acl_entry(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    shared = tmp_path / "shared"
    shared.mkdir()
    function = Function(
        name="f", code="c", handler="m.handler", run_as=f"{UID}:{UID}", resources=[ResourceGrant(name="v")]
    )
    resources = {"v": Resource(name="v", kind="volume", path=str(shared))}
    access = grant_resources(function, resources, True, state, tmp_path / "etc", tmp_path / "log")
    assert access.problems == []
    assert f"user:{UID}:r-x" in _acl(shared)
