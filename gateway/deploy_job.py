"""Cloud-requested work that must outlive the core: one job record per kind (deployment | package)
under <state>/cloud-deploy/<kind>.json holding the request, the job's pid and, once done, its result;
the detached job process that carries a request out; the S3 download and checksum both kinds share.

The core writes a record and spawns the job; the job writes the result; whichever core is running
then reports it. Nothing here talks MQTT.

Usage (spawned by the core): python -m gateway.deploy_job --kind K --config C --state S [--detach]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gateway.atomic_file import write_atomic
from gateway.config import DeploymentSection
from gateway.deploy_store import known_fields

log = logging.getLogger(__name__)

JOBS_DIR = "cloud-deploy"
KINDS = ("deployment", "package")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~:-]{0,127}$")
START_GRACE_S = 60.0  # a job that has not written its pid this long after the spawn never started


class RequestInvalid(ValueError):
    pass


class JobRefused(RuntimeError):
    """The request is refused before anything on the gateway changed; the message says why."""


@dataclass(frozen=True)
class Request:
    version: str
    bucket: str
    key: str
    sha256: str

    @classmethod
    def parse(cls, kind: str, value: Any) -> Request:
        """desired.<kind> from the shadow; raises RequestInvalid naming the field."""
        if not isinstance(value, dict):
            raise RequestInvalid(f"desired.{kind}: expected an object with version, bucket, key, sha256")
        fields: dict[str, str] = {}
        for name in ("version", "bucket", "key", "sha256"):
            item = value.get(name)
            if not isinstance(item, str) or not item:
                raise RequestInvalid(f"desired.{kind}.{name}: missing or not a string")
            fields[name] = item
        if not VERSION.match(fields["version"]):
            raise RequestInvalid(
                f"desired.{kind}.version: {fields['version']!r} is not a version (A-Z a-z 0-9 . _ + ~ : -)"
            )
        fields["sha256"] = fields["sha256"].lower()
        if not SHA256.match(fields["sha256"]):
            raise RequestInvalid(f"desired.{kind}.sha256: not 64 hex digits")
        return cls(**fields)


@dataclass
class JobRecord:
    kind: str
    request: Request
    spawned_at: float
    pid: int | None = None
    result: dict[str, Any] | None = None  # the reported state: version, sha256, result, reason, at
    reported: bool = False

    @property
    def done(self) -> bool:
        return self.result is not None


def jobs_dir(state_dir: Path) -> Path:
    return state_dir / JOBS_DIR


def read_job(state_dir: Path, kind: str) -> JobRecord | None:
    path = jobs_dir(state_dir) / f"{kind}.json"
    try:
        raw = json.loads(path.read_text())
        raw["request"] = Request(**known_fields(Request, raw["request"]))
        return JobRecord(**known_fields(JobRecord, raw))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        log.warning("event=job-record-unreadable file=%s reason=%s", path, exc)
        return None


def write_job(state_dir: Path, record: JobRecord) -> None:
    directory = jobs_dir(state_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(directory / f"{record.kind}.json", json.dumps(asdict(record), indent=2), 0o600)


def result_fields(request: Request, result: str, reason: str) -> dict[str, Any]:
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {"version": request.version, "sha256": request.sha256, "result": result, "reason": reason, "at": at}


def finish(state_dir: Path, record: JobRecord, result: str, reason: str) -> None:
    record.result = result_fields(record.request, result, reason)
    write_job(state_dir, record)
    level = logging.INFO if result == "ok" else logging.ERROR
    log.log(level, "event=cloud-%s-%s version=%s reason=%s", record.kind, result, record.request.version, reason)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        for chunk in iter(lambda: source.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_verified(request: Request, target: Path, settings: DeploymentSection) -> None:
    """Download s3://bucket/key into `target` through the short-lived gateway.model_fetch child (boto3
    stays out of this process) and check its sha256; raises JobRefused with the reason."""
    argv = [sys.executable, "-m", "gateway.model_fetch", "--uri", f"s3://{request.bucket}/{request.key}"]
    argv += ["--file", str(target)]
    if settings.s3_region:
        argv += ["--region", settings.s3_region]
    if settings.s3_endpoint_url:
        argv += ["--endpoint-url", settings.s3_endpoint_url]
    target.unlink(missing_ok=True)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=settings.fetch_timeout_s)
    except subprocess.TimeoutExpired:
        raise JobRefused(
            f"s3://{request.bucket}/{request.key}: not downloaded within {settings.fetch_timeout_s:g} s"
        ) from None
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise JobRefused(f"download failed: {lines[-1] if lines else f'model_fetch exited {done.returncode}'}")
    found = sha256_file(target)
    if found != request.sha256:
        target.unlink(missing_ok=True)
        raise JobRefused(
            f"s3://{request.bucket}/{request.key}: sha256 mismatch: expected {request.sha256}, got {found}"
        )


def spawn(kind: str, config_dir: Path, state_dir: Path) -> None:
    """Start the job so that it survives the core (and, for a package, the whole service) restarting:
    a transient systemd unit when systemd runs the machine, else a double-forked setsid process."""
    job = [sys.executable, "-m", "gateway.deploy_job", "--kind", kind, "--config", str(config_dir)]
    job += ["--state", str(state_dir)]
    if kind == "package" and Path("/run/systemd/system").is_dir() and shutil.which("systemd-run"):
        unit = f"millgate-ota-{int(time.time())}"
        subprocess.run(["systemd-run", "--unit", unit, "--collect", "--quiet", *job], check=True, timeout=30)
        return
    # the launcher forks twice and returns at once; its grandchild is nobody's child in the core's group
    subprocess.run([*job, "--detach"], check=True, timeout=30, stdin=subprocess.DEVNULL)


def _detach(log_file: Path) -> None:
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    log_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.close(null)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="millgate-deploy-job")
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--detach", action="store_true")
    args = parser.parse_args(argv)
    state = args.state.absolute()
    if args.detach:
        _detach(jobs_dir(state) / f"{args.kind}.log")
    from gateway.logs import setup_logging

    setup_logging(f"{args.kind}-job")
    record = read_job(state, args.kind)
    if record is None or record.done:
        log.error("event=job-without-request kind=%s state=%s", args.kind, state)
        return 1
    record.pid = os.getpid()
    write_job(state, record)
    try:
        if args.kind == "deployment":
            from gateway.deploy_bundle import run_bundle_job

            result, reason = run_bundle_job(record.request, args.config, state)
        else:
            from gateway.ota import run_package_job

            result, reason = run_package_job(record.request, args.config, state)
    except Exception as exc:  # the record must get a result whatever happened, or the core waits forever
        log.exception("event=job-crashed kind=%s", args.kind)
        result, reason = "failed", f"{args.kind} job crashed: {exc}"
    finish(state, record, result, reason)
    return 0 if result == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
