"""A deployment's version and a function's code version follow links to directories, as the copies
they stand for do: code behind a linked directory that changes is a new version."""

from __future__ import annotations

from pathlib import Path

from gateway.deploy_store import config_digest
from gateway.function_deploy import code_version


def test_a_change_behind_a_linked_function_directory_is_a_new_version(tmp_path: Path) -> None:
    config, elsewhere = tmp_path / "etc", tmp_path / "src" / "anomaly"
    elsewhere.mkdir(parents=True)
    (elsewhere / "detector.py").write_text("THRESHOLD = 3\n")
    (config / "functions").mkdir(parents=True)
    (config / "gateway.toml").write_text('[gateway]\nthing_name = "gw"\n')
    (config / "functions" / "anomaly").symlink_to(elsewhere)
    before = (config_digest(config), code_version(config / "functions" / "anomaly"))

    (elsewhere / "detector.py").write_text("THRESHOLD = 4\n")

    after = (config_digest(config), code_version(config / "functions" / "anomaly"))
    assert after[0] != before[0] and after[1] != before[1]


def test_a_link_loop_is_walked_once(tmp_path: Path) -> None:
    (tmp_path / "functions" / "f").mkdir(parents=True)
    (tmp_path / "functions" / "f" / "f.py").write_text("x = 1\n")
    (tmp_path / "functions" / "f" / "again").symlink_to(tmp_path / "functions")
    assert len(config_digest(tmp_path)) == 12
    assert len(code_version(tmp_path / "functions")) == 12
