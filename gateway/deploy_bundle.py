"""Deployment bundles: a config dir (gateway.toml, adapters/, function code) as a tar.gz, built by
`millgate bundle build`, and carried out on the gateway by the deployment job: fetched, checked
against its sha256, unpacked without letting any member escape, validated, then deployed.

It refuses before it changes anything; the deployment itself is gateway/deploy.py's.
"""

from __future__ import annotations

import io
import logging
import shutil
import tarfile
from pathlib import Path, PurePosixPath

from gateway.atomic_file import written_whole
from gateway.config_loader import ConfigInvalid, load_config
from gateway.deploy_job import JobRefused, Request, fetch_verified, jobs_dir
from gateway.deploy_store import config_files
from gateway.paths import GatewayPaths

log = logging.getLogger(__name__)

GATEWAY_TOML = "gateway.toml"
RESULTS = {"succeeded": "ok", "staged": "ok", "rolled-back": "rolled-back", "refused": "refused"}


def build_bundle(config_dir: Path, out: Path) -> None:
    """Pack a valid config dir (validated first: a fleet is not sent a config that cannot load). It is
    written to OUT.tmp beside `out` and renamed once whole and on disk, so a full disk or a Ctrl-C
    never leaves a cut bundle under `out` for `bundle push` to upload; an OSError names its file."""
    load_config(config_dir)
    try:
        with written_whole(out) as sink, tarfile.open(out, "w:gz", fileobj=sink) as archive:
            for path in sorted(config_files(config_dir)):  # `out`: the name in the gzip header
                relative = path.relative_to(config_dir).as_posix()
                info = archive.gettarinfo(str(path), arcname=relative)
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                with path.open("rb") as source:
                    archive.addfile(info, source)
    except OSError as exc:
        if exc.filename is None:  # a failed write says nothing of where
            raise OSError(exc.errno, exc.strerror or str(exc), str(out)) from exc
        raise


def unpack_bundle(archive_path: Path, target: Path, max_bytes: int) -> Path:
    """Unpack into `target` (created; must not exist) and return the config dir inside it. Only regular
    files and directories with relative paths that stay inside are accepted; raises JobRefused."""
    target.mkdir(mode=0o755, parents=True)
    total = 0
    try:
        with tarfile.open(archive_path, "r:gz") as archive:
            for member in archive:
                name = PurePosixPath(member.name)
                parts = [p for p in name.parts if p != "."]
                if name.is_absolute() or ".." in parts:
                    raise JobRefused(f"bundle member {member.name!r}: path leaves the bundle")
                if not (member.isfile() or member.isdir()):
                    raise JobRefused(f"bundle member {member.name!r}: only files and directories are allowed")
                if not parts:
                    continue
                destination = target.joinpath(*parts)
                if member.isdir():
                    destination.mkdir(mode=0o755, parents=True, exist_ok=True)
                    continue
                total += member.size
                if total > max_bytes:
                    raise JobRefused(f"bundle unpacks to more than [deployment] max_bundle_bytes ({max_bytes} bytes)")
                destination.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                source = archive.extractfile(member)
                assert source is not None  # a regular file always has a body
                with destination.open("wb") as sink:
                    shutil.copyfileobj(source, sink)
                destination.chmod(0o755 if member.mode & 0o111 else 0o644)
    except (tarfile.TarError, EOFError, OSError, io.UnsupportedOperation) as exc:
        raise JobRefused(f"bundle is not a readable tar.gz: {exc}") from exc
    if (target / GATEWAY_TOML).is_file():
        return target
    tops = [p for p in target.iterdir()]
    if len(tops) == 1 and (tops[0] / GATEWAY_TOML).is_file():
        return tops[0]
    raise JobRefused(f"bundle has no {GATEWAY_TOML} at its top (nor in a single top directory)")


def run_bundle_job(request: Request, config_dir: Path, state_dir: Path) -> tuple[str, str]:
    """Fetch, verify, unpack, validate and deploy one bundle; (result, reason) for the shadow."""
    from gateway.deploy import deploy, record_refusal

    running = load_config(config_dir)
    paths = GatewayPaths.resolve(config_dir, state_dir, running.gateway.gateway.log_dir)
    settings = running.gateway.deployment
    work = jobs_dir(state_dir) / "bundle"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(mode=0o700, parents=True)
    source = work / request.version
    try:
        archive = work / "bundle.tar.gz"
        fetch_verified(request, archive, settings)
        source = unpack_bundle(archive, source, int(settings.max_bundle_bytes))
        archive.unlink()
        try:
            thing = load_config(source).gateway.gateway.thing_name
        except ConfigInvalid as exc:
            raise JobRefused(f"invalid config: {exc}") from exc
        mine = running.gateway.gateway.thing_name
        if thing != mine:
            raise JobRefused(f"the bundle is for thing {thing!r}, this gateway is {mine!r}")
    except JobRefused as exc:
        record_refusal(paths, source, "cloud", request.version, str(exc))
        return "refused", str(exc)
    outcome = deploy(source, paths, by="cloud", version=request.version)
    return RESULTS.get(outcome.result, "failed"), outcome.message
