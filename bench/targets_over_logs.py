#!/usr/bin/env python
"""A benchmark's targets over several of its logs: each log's verdict, and all their runs
taken together.

One log is 5 runs on a shared host whose state drifts over tens of minutes, so a target
near its bound passes in one log and misses in the next. Given logs of the same benchmark
(bench_speed or bench_isa) and, as the caller chooses them, of the same code, this prints
for every target the logs checked: each log's median and verdict, and the median and range
of the per-run values of all the logs' runs pooled. A run's value is the one the harness
checks: the library's figure over the figure of the library its log compared it with (the
check's ``against``), or the figure itself (e.g. the epoch's thread scaling).

    python bench/targets_over_logs.py bench/results/bench_speed_2026...json ...
    python bench/targets_over_logs.py --log LOGS...   # also bench/results/targets_over_logs_*.json
"""
import argparse
import datetime
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")


def run_values(log, check):
    """The per-run values of one of the log's checks."""
    lib, other, metric = check["library"], check["against"], check["metric"]
    out = []
    for run in log["runs"]:
        v = run.get(lib, {}).get("metrics", {}).get(metric)
        w = run.get(other, {}).get("metrics", {}).get(metric) if other else 1.0
        if v is not None and w:
            out.append(v / w)
    return out


def pool(logs):
    """[{label, bound, direction, logs: [{log, median, pass}], runs, median, min, max,
    pass, logs_passing}] over `logs` ({name: log}), in the first log's order of checks."""
    by_label = {}
    for name, log in logs.items():
        for c in log["checks"]:
            if c["median"] is None:
                continue
            t = by_label.setdefault(c["label"], {"label": c["label"], "bound": c["bound"],
                                                 "direction": c["direction"], "logs": [],
                                                 "values": []})
            t["logs"].append({"log": name, "median": c["median"], "pass": c["pass"]})
            t["values"] += run_values(log, c)
    out = []
    for t in by_label.values():
        vals = t.pop("values")
        med = statistics.median(vals)
        ok = med >= t["bound"] if t["direction"] == ">=" else med <= t["bound"]
        out.append({**t, "runs": len(vals), "median": med, "min": min(vals), "max": max(vals),
                    "pass": ok, "logs_passing": sum(bool(x["pass"]) for x in t["logs"])})
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("logs", nargs="+", help="JSON logs of one benchmark")
    p.add_argument("--log", action="store_true",
                   help="write bench/results/targets_over_logs_<time>.json (--results)")
    p.add_argument("--results", default=RESULTS, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    logs = {}
    for path in a.logs:
        with open(path) as f:
            logs[os.path.basename(path)] = json.load(f)
    kinds = {log["target"] for log in logs.values()}
    if len(kinds) != 1:
        p.error(f"logs of one benchmark, not of {sorted(kinds)}")
    targets = pool(logs)
    print(f"{kinds.pop()}: {len(logs)} logs, targets over all their runs")
    for t in targets:
        verdict = "PASS" if t["pass"] else "FAIL"
        each = ", ".join(format(x["median"], ".3f") for x in t["logs"])
        print(f"  {t['label']:<58} {t['direction']} {t['bound']:<4}  median {t['median']:.3f} "
              f"[{t['min']:.2f}-{t['max']:.2f}] over {t['runs']} runs  {verdict}; "
              f"passed in {t['logs_passing']} of {len(t['logs'])} logs ({each})")
    if a.log:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        path = os.path.join(a.results, f"targets_over_logs_{stamp}.json")
        with open(path, "w") as f:
            json.dump({"time": stamp, "logs": list(logs), "targets": targets}, f, indent=1)
        print(f"log: {os.path.relpath(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
