"""What a long-lived function's runner (functions/pinned.py) needs to start, written by the launcher
from the validated config next to supervisord.conf. The runner reads this instead of loading the
config itself: the config models cost every process that imports them about 9 MB (pydantic and its
classes, docs/benchmarks.md), and the runner is the one component that cannot share them with
supervisord (it runs user code, so it is exec'd, not forked: gateway/preload.py).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from functions.mount_namespace import VolumeMount
from gateway.atomic_file import write_atomic
from gateway.paths import GatewayPaths


@dataclass(frozen=True)
class RunnerSpec:
    name: str
    runtime: str  # "native" or "greengrass-v1"
    handler: str
    uid: int
    gid: int
    memory_mb: int
    timeout_s: float
    queue_size: int
    thing_name: str
    status_interval_s: float
    log_level: str
    log_dir: str | None  # [gateway] log_dir, None for the default under the state dir
    subscriptions: list[str]  # the topic filters routed to the function
    environment: dict[str, str]  # the function's environment, v1 variables included for a v1 function
    mounts: list[VolumeMount] = field(default_factory=list)  # its volumes that have a destination


def spec_path(paths: GatewayPaths, function: str) -> Path:
    return paths.generated_dir / "functions" / f"{function}.json"


def write_spec(paths: GatewayPaths, spec: RunnerSpec) -> None:
    """Root-only (0600): the environment may hold the function's secrets; the runner reads it as root,
    before it drops to the function's uid."""
    path = spec_path(paths, spec.name)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, json.dumps(asdict(spec), indent=2, sort_keys=True) + "\n", 0o600, None)


def read_spec(paths: GatewayPaths, function: str) -> RunnerSpec:
    fields = json.loads(spec_path(paths, function).read_text())
    fields["mounts"] = [VolumeMount(**m) for m in fields.get("mounts", [])]
    return RunnerSpec(**fields)
