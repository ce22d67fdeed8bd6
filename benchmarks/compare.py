"""Compare two results files from benchmarks/run.py as a Markdown table.

    python benchmarks/compare.py benchmarks/results/runtime.json benchmarks/results/ray.json

Prints, for each workload: our value, Ray's value, ours/Ray, the target for that
ratio and whether it is met. Ratios come only from the two files given.
Standard library only, so any Python can run it.
"""

from __future__ import annotations

import json
import operator
import sys

from machine_info import machine_line

# Targets on the ratio ours/Ray. "<=" for times and memory, ">=" for rates.
TARGETS: dict[str, tuple[str, float] | None] = {
    "init_s": ("<=", 0.1),
    "shutdown_s": ("<=", 1.0),
    "idle_rss_mb": ("<=", 0.15),
    "idle_processes": None,  # reported, no target
    "tasks_async_per_s": (">=", 2.0),
    "tasks_sync_per_s": (">=", 2.0),
    "actor_calls_sync_per_s": (">=", 2.0),
    "actor_calls_async_per_s": (">=", 2.0),
    "actor_calls_concurrent_per_s": (">=", 2.0),
    "actor_create_per_s": (">=", 10.0),
    "pg_create_remove_per_s": (">=", 10.0),  # issue 4: Ray 2.60 did ~2/s on a 2-core machine
    "put_small_per_s": (">=", 2.0),
    "get_small_per_s": (">=", 2.0),
    "put_gbps_100mb": (">=", 1.0),
    "get_gbps_100mb": (">=", 1.0),
    "pass_100mb_to_10_tasks_s": ("<=", 1.0),
    "chain_1000_tasks_s": ("<=", 0.5),
    "wait_1000_refs_s": ("<=", 0.4),  # issue 15 (was 0.5)
    # issue 4: several node managers on one machine
    "internode_gbps_100mb": (">=", 1.0),
    "tasks_4_nodes_per_s": (">=", 2.0),
    "dead_node_detect_s": ("<=", 1.0),
    "actor_recover_s": ("<=", 1.0),
    # issue 5: Dask on the runtime vs Dask-on-Ray (the Ray run uses ray.util.dask)
    "dask_groupby_s": ("<=", 1.0),
    # issue 15: Datasets >= 2x Ray Data, i.e. time ratio <= 0.5 (issue 5 asked 1.5x)
    "data_map_batches_s": ("<=", 0.5),
    "data_parquet_roundtrip_s": ("<=", 0.5),
    "runtime_env_pip_first_task_s": ("<=", 0.3),
    "runtime_env_pip_cached_task_s": ("<=", 0.1),
    "working_dir_job_s": ("<=", 0.5),
}

# Targets between two numbers of our own run: (numerator, denominator) -> (op, bound).
WITHIN: dict[tuple[str, str], tuple[str, float]] = {
    ("dask_groupby_s", "dask_groupby_threads_s"): ("<=", 1.2),  # within 1.2x of Dask's threads (issue 15; was 1.5)
}

_OPS = {"<=": operator.le, ">=": operator.ge}


def fmt_value(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, int):
        return str(v)
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def compare(ours: dict, ray: dict) -> tuple[list[str], int, int]:
    """Markdown lines, number of targets met, number of targets with both values."""
    a, b = ours.get("results", {}), ray.get("results", {})
    names = list(TARGETS) + sorted((set(a) | set(b)) - set(TARGETS))
    lines = [
        "| workload | ours | Ray | ours/Ray | target | met? |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    met = judged = 0
    for name in names:
        if name not in a and name not in b:
            continue
        x, y = a.get(name), b.get(name)
        ratio = x / y if x is not None and y not in (None, 0) else None
        target = TARGETS.get(name)
        if target is None:
            target_s, verdict = "—", "—"
        else:
            op, bound = target
            target_s = f"{op} {bound:g}"
            if ratio is None:
                verdict = "n/a"
            else:
                judged += 1
                ok = _OPS[op](ratio, bound)
                met += ok
                verdict = "yes" if ok else "NO"
        ratio_s = "n/a" if ratio is None else f"{ratio:.3g}"
        lines.append(f"| {name} | {fmt_value(x)} | {fmt_value(y)} | {ratio_s} | {target_s} | {verdict} |")
    return lines, met, judged


def compare_within(ours: dict) -> tuple[list[str], int, int]:
    """Ratios between two numbers of our own run (e.g. our Dask scheduler against Dask's)."""
    a = ours.get("results", {})
    lines = ["| ours | against (ours) | ratio | target | met? |", "| --- | --- | ---: | --- | --- |"]
    met = judged = 0
    for (num, den), (op, bound) in WITHIN.items():
        x, y = a.get(num), a.get(den)
        ratio = x / y if x is not None and y not in (None, 0) else None
        verdict = "n/a"
        if ratio is not None:
            judged += 1
            ok = _OPS[op](ratio, bound)
            met += ok
            verdict = "yes" if ok else "NO"
        lines.append(f"| {num} {fmt_value(x)} | {den} {fmt_value(y)} | "
                     f"{'n/a' if ratio is None else f'{ratio:.3g}'} | {op} {bound:g} | {verdict} |")
    return (lines if judged or any(n in a for n, _ in WITHIN) else []), met, judged


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        ours = json.load(f)
    with open(argv[2]) as f:
        ray = json.load(f)
    m_ours, m_ray = ours.get("machine", {}), ray.get("machine", {})
    print(f"Machine: {machine_line(m_ours)}")
    if m_ray != m_ours:
        print(f"Ray's results file was made on: {machine_line(m_ray)}")
    print(
        f"Backends: {ours.get('backend')} {ours.get('backend_version') or ''} vs "
        f"{ray.get('backend')} {ray.get('backend_version') or ''}".rstrip()
    )
    print()
    lines, met, judged = compare(ours, ray)
    print("\n".join(lines))
    w_lines, w_met, w_judged = compare_within(ours)
    if w_lines:
        print()
        print("\n".join(w_lines))
    print()
    total = len([t for t in TARGETS.values() if t]) + len(WITHIN)
    print(f"{met + w_met} of {total} targets met ({judged + w_judged} with both values present).")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
