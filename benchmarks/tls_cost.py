"""What mutual TLS costs: two results files of benchmarks/run.py, TLS off and on, as a table.

    make bench-tls
    python benchmarks/tls_cost.py benchmarks/results/tls_off.json benchmarks/results/tls_on.json

For each workload: the value without TLS, with TLS, and the cost (the share of the rate lost,
or of the time added), against the budget of 20 %. Standard library only.
"""

from __future__ import annotations

import json
import sys

BUDGET = 0.20  # issue 14: TLS may cost at most 20 % on these
WORKLOADS = ("internode_gbps_100mb", "tasks_4_nodes_per_s", "client_tasks_per_s", "client_put_get_gbps_10mb")


def cost(name: str, off: float, on: float) -> float:
    """The fraction lost: of the rate for rates (per_s, gbps), of the time for times."""
    rate = name.endswith(("_per_s",)) or "gbps" in name
    return 1 - on / off if rate else on / off - 1


def main(off_path: str, on_path: str) -> int:
    off, on = (json.load(open(p))["results"] for p in (off_path, on_path))
    print("| workload | TLS off | TLS on | on/off | cost | within 20 % |")
    print("|---|---|---|---|---|---|")
    for name in WORKLOADS:
        a, b = off.get(name), on.get(name)
        if a is None or b is None:
            print(f"| `{name}` | {a} | {b} | | | not measured |")
            continue
        c = cost(name, a, b)
        print(f"| `{name}` | {a:.4g} | {b:.4g} | {b / a:.2f} | {c:+.0%} | {'yes' if c <= BUDGET else 'no'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
