"""The one writer of bench/results.json: every benchmark records its figures here (value, unit, the raw
baseline measured in the same run, and their ratio) and prints them as a table.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results.json"


def machine() -> dict[str, object]:
    with open("/proc/meminfo") as meminfo:
        total_kb = int(next(line for line in meminfo if line.startswith("MemTotal")).split()[1])
    return {
        "cpus": os.cpu_count(),
        "memory_mb": total_kb // 1024,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "arch": platform.machine(),
    }


def record(name: str, value: float, unit: str, baseline: float | None, note: str = "") -> dict[str, object]:
    """Merge one figure into bench/results.json (safe against benchmarks running side by side)."""
    ratio = round(value / baseline, 3) if baseline else None
    figure: dict[str, object] = {
        "value": round(value, 3),
        "unit": unit,
        "baseline": round(baseline, 3) if baseline is not None else None,
        "ratio": ratio,
    }
    if note:
        figure["note"] = note
    RESULTS.parent.mkdir(exist_ok=True)
    with open(RESULTS.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        data["machine"] = machine()
        data.setdefault("figures", {})[name] = figure
        tmp = RESULTS.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        os.replace(tmp, RESULTS)
    print(f"{name:<32} {figure['value']:>12} {unit:<10} baseline {figure['baseline']!s:>12}  ratio {ratio}")
    return figure
