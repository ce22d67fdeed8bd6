"""The scale curves (benchmarks/scale.py results) as a chart and a Markdown table.

    python benchmarks/scale_chart.py benchmarks/results/scale_runtime.json benchmarks/results/scale_ray.json \
        --png docs/images/scale.png

The table goes to stdout, ready for docs/benchmarks.md; the PNG is what that page shows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# (curve, value key, axis label, better) for each panel; the x axis is the curve's size.
PANELS = [
    ("tasks", "tasks_per_s", "tasks/s", "higher"),
    ("tasks", "driver_bytes_per_pending_task", "driver bytes per pending task", "lower"),
    ("actors", "actors_per_s", "actors created/s", "higher"),
    ("actors", "pss_bytes_per_actor", "MB (PSS) per actor", "lower"),
    ("objects", "meta_bytes_per_object", "process bytes per 1 MiB object", "lower"),
    ("nodes", "tasks_per_s", "tasks/s on N node managers", "higher"),
    ("nodes", "latency_p50_ms", "scheduling latency p50 (ms)", "lower"),
    ("nodes", "latency_p99_ms", "scheduling latency p99 (ms)", "lower"),
]
X_LABEL = {"tasks": "tasks submitted", "actors": "actors alive", "objects": "objects held", "nodes": "node managers"}
SCALE = {"pss_bytes_per_actor": 1e-6}


def points(results: dict, curve: str, key: str) -> list[tuple[int, float]]:
    return [(p["n"], p[key] * SCALE.get(key, 1)) for p in results.get(curve, []) if key in p]


def chart(ours: dict, ray: dict, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(16, 7))
    for ax, (curve, key, label, better) in zip(axes.flat, PANELS):
        for name, results, style in (("ours", ours, "o-"), ("Ray", ray, "s--")):
            xy = points(results, curve, key)
            if xy:
                ax.plot([x for x, _ in xy], [y for _, y in xy], style, label=name)
        ax.set_xscale("log" if curve != "nodes" else "linear")
        ax.set_yscale("log" if curve in ("actors",) or key == "meta_bytes_per_object" else "linear")
        ax.set_xlabel(X_LABEL[curve])
        ax.set_title(f"{label} ({better} is better)", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("How cost grows with work: ours and Ray's, one run each (benchmarks/scale.py)")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=80)


def table(ours: dict, ray: dict) -> str:
    rows = ["| curve | N | measure | ours | Ray | ours/Ray |", "| --- | ---: | --- | ---: | ---: | ---: |"]
    for curve, key, label, _ in PANELS:
        mine, theirs = dict(points(ours, curve, key)), dict(points(ray, curve, key))
        for n in sorted(set(mine) | set(theirs)):
            a, b = mine.get(n), theirs.get(n)
            ratio = f"{a / b:.2f}" if a is not None and b else "-"
            rows.append(f"| {curve} | {n:,} | {label} | {_fmt(a)} | {_fmt(b)} | {ratio} |")
    return "\n".join(rows)


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ours")
    parser.add_argument("ray")
    parser.add_argument("--png", default="docs/images/scale.png")
    args = parser.parse_args()
    ours, ray = (json.loads(Path(p).read_text()) for p in (args.ours, args.ray))
    chart(ours, ray, Path(args.png))
    print(table(ours, ray))
    errors = [f"{r['backend']} {c} {p['n']}: {p['error'].splitlines()[0]}" for r in (ours, ray)
              for c in ("tasks", "actors", "objects", "nodes") for p in r.get(c, []) if "error" in p]
    for e in errors:
        print("error:", e, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
