"""`millgate spool export FILE` and `millgate bundle build --out FILE` leave FILE whole or not at all: a
write that fails half-way (here the file-size limit, as a full disk would) leaves no cut file under
FILE, nor a FILE.tmp beside it, and an earlier FILE as it was; the error names the file.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

from storage.spool import Message, Spool
from tests.fixtures.gateway import REPO, run_cli

MILLGATE = str(Path(sys.executable).parent / "millgate")
FILE_SIZE_LIMIT = 96 * 1024  # above what opening the spool writes (its 32 KiB -shm), below the export


def run_with_file_size_limit(*argv: str) -> subprocess.CompletedProcess[str]:
    """millgate with RLIMIT_FSIZE set: a write past it fails with EFBIG (SIGXFSZ ignored), as on a full disk."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))

    return subprocess.run([MILLGATE, *argv], capture_output=True, text=True, timeout=60, cwd=REPO, preexec_fn=limit)


def test_a_spool_export_cut_short_leaves_the_earlier_export_and_no_partial_file(dirs, tmp_path: Path) -> None:
    config, state = dirs
    (state / "uplink").mkdir(parents=True)
    spool = Spool(state / "uplink" / "spool.db")
    spool.append([Message(f"plant/{n}", b"x" * 100) for n in range(2000)])
    spool.close()
    where = ("--config", str(config), "--state", str(state))
    out = tmp_path / "export.jsonl"
    out.write_text('{"earlier": "export"}\n')

    cut = run_with_file_size_limit("spool", "export", str(out), *where)
    assert cut.returncode == 1
    assert cut.stderr == f"millgate spool: {out}: File too large; nothing exported\n"
    assert out.read_text() == '{"earlier": "export"}\n'
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("export")) == ["export.jsonl"]

    whole = run_cli("spool", "export", str(out), config=config, state=state)
    assert whole.returncode == 0, whole.stderr
    assert [json.loads(line)["topic"] for line in out.read_text().splitlines()] == [f"plant/{n}" for n in range(2000)]
    assert not out.with_name("export.jsonl.tmp").exists()


def test_a_bundle_build_cut_short_leaves_no_bundle_to_push(dirs, tmp_path: Path) -> None:
    config, _ = dirs
    (config / "models").mkdir()
    (config / "models" / "weights.bin").write_bytes(os.urandom(4 * FILE_SIZE_LIMIT))  # does not compress
    bundle = tmp_path / "b.tar.gz"

    cut = run_with_file_size_limit("bundle", "build", str(config), "--out", str(bundle))
    assert cut.returncode == 1
    assert cut.stderr == f"millgate bundle build: [Errno 27] File too large: '{bundle}'\n"
    assert not bundle.exists() and not bundle.with_name("b.tar.gz.tmp").exists()

    whole = run_cli("bundle", "build", str(config), "--out", str(bundle))
    assert whole.returncode == 0, whole.stderr
    assert not bundle.with_name("b.tar.gz.tmp").exists()
    listed = subprocess.run(["tar", "-tzf", str(bundle)], capture_output=True, text=True, check=True)
    assert sorted(listed.stdout.split()) == ["gateway.toml", "models/weights.bin"]
