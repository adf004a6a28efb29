#!/usr/bin/env python
"""How the shared host's state moves bench_speed's figures, from its JSON logs.

Every bench_speed run also times a fixed GEMM workload (the ``host`` library, "GEMM only
(the host's ceiling)"): how much arithmetic the host gives at that moment. This script
pools the runs of the logs that have it and asks, for batch 1, batch 256 and the epoch,
whether cconv's time, the other library's time (the one cconv's ratio is taken against)
and the ratio rise with the GEMM's time: Spearman's rank correlation (rho) and its p-value,
and the median ratio in the runs whose GEMM time is at most the median GEMM time
("quieter") and in the others ("busier").

Two views of the same runs:

* pooled: the values as measured. The host's state changes over tens of minutes, so this
  sees it change between logs; but logs of different commits also differ in cconv's code.
  Choose logs whose code is about the same (``--since``, or the paths).
* within logs: each value divided by the median of its log (same metric and library).
  The code drops out, and so does most of the host's variation: the libraries run one
  after another within a run, a minute or so apart, so a run's GEMM time describes the
  host near, not at, each library's measurement.

    python bench/host_effect.py --since 20261203T214314      # logs from that time on
    python bench/host_effect.py --since 20261203T214314 --log   # and write
                                                     # bench/results/host_effect_*.json
    python bench/host_effect.py bench/results/bench_speed_2026....json ...   # these logs
"""
import argparse
import datetime
import glob
import json
import os
import statistics
import subprocess
import sys

from scipy.stats import spearmanr

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
HOST = "host"                   # bench_speed's library name of the GEMM yardstick
METRICS = ("batch1", "batch256", "epoch")


def _label(log, name):
    return next(lib["label"] for lib in log["libraries"] if lib["name"] == name)


def log_rows(log, per_log):
    """[{"host": the GEMM's epoch time, metric: (cconv, other, ratio)}] per run of a
    bench_speed log (with ``per_log``, each value divided by its log's median), and
    {metric: the other library's label}."""
    host, main = _label(log, HOST), log["main"]
    others = {m: log["ratios"][m][main]["other"] for m in METRICS
              if main in log["ratios"].get(m, {})}
    rows = []
    for run in log["runs"]:
        row = {"host": run.get(host, {}).get("metrics", {}).get("epoch")}
        for m, other in others.items():
            c = run.get(main, {}).get("metrics", {}).get(m)
            o = run.get(other, {}).get("metrics", {}).get(m)
            if c and o:
                row[m] = (c, o, c / o)
        if row["host"] and len(row) > 1:
            rows.append(row)
    if per_log and rows:
        mid = {"host": statistics.median(r["host"] for r in rows)}
        for m in {m for r in rows for m in r if m != "host"}:
            vals = [r[m] for r in rows if m in r]
            mid[m] = tuple(statistics.median(v[i] for v in vals) for i in range(3))
        rows = [{k: (v / mid[k] if k == "host" else tuple(a / b for a, b in zip(v, mid[k])))
                 for k, v in r.items()} for r in rows]
    return rows, others


def analyse(logs, per_log=False):
    """{metric: statistics} over the pooled runs of ``logs`` (loaded bench_speed logs)."""
    rows, against = [], {}
    for log in logs:
        r, others = log_rows(log, per_log)
        rows += r
        for m, o in others.items():
            against.setdefault(m, set()).add(o)
    out = {}
    for m in METRICS:
        pts = [(r["host"], *r[m]) for r in rows if m in r]
        if len(pts) < 3:
            continue
        host = [p[0] for p in pts]
        res = {"runs": len(pts), "against": sorted(against.get(m, ()))}
        for i, key in enumerate(("cconv", "other", "ratio"), start=1):
            rho, p = spearmanr(host, [q[i] for q in pts])
            res[key] = {"rho": float(rho), "p": float(p)}
        if not per_log:     # (within logs, each half's median ratio is about its log's)
            mid = statistics.median(host)
            quiet = [p[3] for p in pts if p[0] <= mid]
            busy = [p[3] for p in pts if p[0] > mid]
            res["ratio_quieter"] = statistics.median(quiet)
            res["ratio_busier"] = statistics.median(busy) if busy else None
            res["quieter_runs"], res["busier_runs"] = len(quiet), len(busy)
        out[m] = res
    return out


def speed_logs(paths):
    """The bench_speed logs (with GEMM yardstick runs, no ISA cap) among ``paths``."""
    chosen = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            log = json.load(f)
        if (log.get("target") == "bench_speed" and log["settings"].get("isa", "native") == "native"
                and any(lib["name"] == HOST for lib in log.get("libraries", []))):
            chosen.append((path, log))
    return chosen


def report(stats):
    lines = ["metric     runs  rho(cconv, GEMM)  rho(other, GEMM)  rho(ratio, GEMM)  "
             "median ratio: quieter, busier half"]
    for m, s in stats.items():
        cells = [f"{s[k]['rho']:+.2f} (p {s[k]['p']:.1g})" for k in ("cconv", "other", "ratio")]
        halves = "-"
        if "ratio_quieter" in s:
            busier = "-" if s["ratio_busier"] is None else f"{s['ratio_busier']:.3f}"
            halves = (f"{s['ratio_quieter']:.3f} ({s['quieter_runs']}), "
                      f"{busier} ({s['busier_runs']})")
        lines.append(f"{m:<10} {s['runs']:>4}  {cells[0]:<16}  {cells[1]:<16}  {cells[2]:<16}  "
                     + halves)
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("logs", nargs="*", help="bench_speed logs (default: all under --results)")
    ap.add_argument("--results", default=RESULTS)
    ap.add_argument("--since", default="", help="only logs whose file name's time is at least "
                    "this (e.g. 20261203T214314)")
    ap.add_argument("--log", action="store_true", help="write the result to --results")
    args = ap.parse_args(argv)
    paths = args.logs or sorted(glob.glob(os.path.join(args.results, "bench_speed_*.json")))
    paths = [p for p in paths if os.path.basename(p).split("_")[2] >= args.since]
    logs = speed_logs(paths)
    if not logs:
        print("no bench_speed logs with the GEMM yardstick", file=sys.stderr)
        return 1
    views = {"pooled": analyse([log for _, log in logs]),
             "within_logs": analyse([log for _, log in logs], per_log=True)}
    first, last = logs[0][1]["commit"][:7], logs[-1][1]["commit"][:7]
    print(f"{len(logs)} bench_speed logs, {first} .. {last}")
    print("\npooled (values as measured):\n" + report(views["pooled"]))
    print("\nwithin logs (each value over its log's median):\n" + report(views["within_logs"]))
    if args.log:
        now = datetime.datetime.now(datetime.timezone.utc)
        commit = subprocess.run(["git", "-C", HERE, "rev-parse", "HEAD"], capture_output=True,
                                text=True).stdout.strip() or None
        out = os.path.join(args.results, f"host_effect_{now:%Y%m%dT%H%M%SZ}.json")
        with open(out, "w", encoding="utf-8") as f:
            json.dump({"tool": "bench/host_effect.py", "time": now.isoformat(timespec="seconds"),
                       "commit": commit, "argv": sys.argv[1:] if argv is None else list(argv),
                       "logs": [os.path.basename(p) for p, _ in logs], **views}, f, indent=1)
            f.write("\n")
        print(f"written {os.path.relpath(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
