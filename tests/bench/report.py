"""The benchmark report: bench/results.json as a table (text or Markdown) and a PNG chart of every
figure's ratio to the raw baseline measured in the same run. It only reads results; the benchmarks
write them (tests/bench/results.py).

    python -m tests.bench.report [--markdown] [--chart bench/ratios.png]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tests.bench.results import RESULTS

# units where more is better; for every other unit (ms, s, MB, msg lost, % core) less is better
HIGHER_IS_BETTER = ("/s",)


def higher_is_better(unit: str) -> bool:
    return unit.endswith(HIGHER_IS_BETTER)


def load(path: Path = RESULTS) -> dict[str, Any]:
    if not path.exists():
        raise SystemExit(f"{path}: no results yet; run `make bench` first")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _number(value: object) -> str:
    if value is None:
        return "-"
    assert isinstance(value, int | float)
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def table(data: dict[str, Any], markdown: bool) -> str:
    rows = []
    for name, figure in sorted(data.get("figures", {}).items()):
        better = "higher" if higher_is_better(figure["unit"]) else "lower"
        ratio = f"{figure['ratio']:.2f}" if figure.get("ratio") is not None else "-"
        rows.append((name, _number(figure["value"]), figure["unit"], _number(figure.get("baseline")), ratio, better))
    header = ("figure", "value", "unit", "baseline", "ratio", "better")
    machine = data.get("machine", {})
    where = ", ".join(f"{k} {v}" for k, v in sorted(machine.items()))
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---", "---:", "---", "---:", "---:", "---"]) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return f"Machine: {where}\n\n" + "\n".join(lines)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            str(c).ljust(w) if i in (0, 2, 5) else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [header, *rows]
    ]
    return f"machine: {where}\n" + "\n".join(lines)


def chart(data: dict[str, Any], path: Path) -> None:
    """One horizontal bar per figure with a baseline: value / baseline on a log axis, 1 = the raw baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = [(n, f) for n, f in sorted(data.get("figures", {}).items()) if f.get("ratio")]
    names = [n for n, _ in figures]
    ratios = [float(f["ratio"]) for _, f in figures]
    colors = []
    for _, f in figures:
        good = f["ratio"] >= 1 if higher_is_better(f["unit"]) else f["ratio"] <= 1
        colors.append("#2e7d32" if good else "#c62828")
    fig, ax = plt.subplots(figsize=(9, 0.38 * len(names) + 1.6))
    ax.barh(names, ratios, color=colors)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("value / raw baseline (log; throughput: higher is better, time and memory: lower is better)")
    machine = data.get("machine", {})
    ax.set_title(
        f"millgate benchmarks, {machine.get('cpus', '?')} CPUs, Python {machine.get('python', '?')}: "
        "green beats or meets its target, red falls short",
        fontsize=9,
    )
    for y, ratio in enumerate(ratios):
        ax.text(ratio, y, f" {ratio:.2f}", va="center", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.report", description=__doc__)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--chart", type=Path, help="write a PNG chart of the ratios here")
    args = parser.parse_args(argv)
    data = load(args.results)
    print(table(data, args.markdown))
    if args.chart:
        chart(data, args.chart)
        print(f"chart: {args.chart}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
