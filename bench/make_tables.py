#!/usr/bin/env python
"""The README's benchmark tables, made from the JSON logs of bench/harness.py.

By default the newest log of each benchmark (and of each instruction-set cap: ``--isa
avx2`` runs get their own table) under bench/results/. For each: one row per reported
metric with the ratio of cconv to the fastest other library (the median of the per-run
ratios and their range; the same for a library that is not a contender, such as
``--baseline``'s cconv under another interpreter) and every library's median, then the targets with PASS/FAIL, and a
line saying where the figures come from (log file, runs, commit, threads, machine, date).
Only logs of at least ``--min-runs`` runs (default 5) are used.

    python bench/make_tables.py                  # print the tables
    python bench/make_tables.py --update         # rewrite them in README.md, between
                                                 # <!-- bench:begin --> and <!-- bench:end -->
    python bench/make_tables.py --check          # exit 1 if README.md differs from the logs
    python bench/make_tables.py bench/results/bench_core_....json ...   # these logs
"""
import argparse
import glob
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tools"))
from harness import fmt, run_orders  # noqa: E402
from readme_sections import update_or_check  # noqa: E402

TIME_UNITS = ("s", "ms", "us")


def newest_logs(directory, min_runs):
    """The newest log of each (benchmark, instruction-set cap) with enough runs."""
    chosen = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
        with open(path, encoding="utf-8") as f:
            log = json.load(f)
        if "target" not in log or "rows" not in log:     # not a bench/harness.py log
            continue
        if len(log.get("runs", [])) < min_runs:
            continue
        key = (log["target"], log["settings"].get("isa", "native"))
        if key not in chosen or log["time"] > chosen[key][1]["time"]:
            chosen[key] = (path, log)
    return [chosen[k] for k in sorted(chosen)]


def order_text(log):
    """How the log's runs ordered the libraries: the harness's order since every other run
    is reversed after its first library, a plain rotation before."""
    orders = log.get("order") or []
    if len(orders) > 1 and len(orders[0]) > 2 and orders == run_orders(orders[0], len(orders)):
        return "a rotating order (every other run reversed after its first library)"
    return "a rotating order"


def main_python(log, main):
    """The footnote's words on cconv's own interpreter when the run named it with --python
    (another build of cconv), with the clones its workers reported; else nothing."""
    lib = next((lib for lib in log["libraries"] if lib["label"] == main), None)
    if lib is None or not any(a.startswith(lib["name"] + "=") for a in log.get("argv") or []):
        return ""
    clones = sorted({j["info"]["clones"] for run in log["runs"]
                     for j in (run.get(main, {}).get("jobs") or {"": run.get(main, {})}).values()
                     if (j.get("info") or {}).get("clones") is not None})
    return (f" {main}: under `{lib['python']}`"
            + (f" (clones of its plain C loops: {'; '.join(clones)})" if clones else "") + ".")


def table(path, log):
    libs = [lib["label"] for lib in log["libraries"]]
    main = log.get("main", "cconv")
    others = [lib for lib in libs if lib != main]
    # libraries that are not contenders (a --baseline cconv): their own ratio column
    extra = [lib["label"] for lib in log["libraries"]
             if not lib.get("contender", True) and not lib.get("reference")]
    units, stats, ratios = log["units"], log["stats"], log["ratios"]
    isa = log["settings"].get("isa", "native")
    title = f"`{log['argv'][0]}`" + (" with every library capped at AVX2" if isa == "avx2" else "")
    # Times are not shown: on the shared machine they drift from run to run; the ratios of
    # two processes of the same run hold. Other units (MB, x, %) are shown per library.
    shown = [lib for lib in libs if any(units.get(m, "") not in TIME_UNITS and lib in
                                        stats.get(m, {}) for _, m in log["rows"])]
    lines = [f"**{title}**: {log['description']}", "",
             f"| benchmark | {main} / fastest other: median [range] | "
             + "".join(f"{lib} / fastest other | " for lib in extra)
             + "".join(f"{lib} (median) | " for lib in shown),
             "|---|---|" + "---|" * (len(extra) + len(shown))]
    for label, metric in log["rows"]:
        unit = units.get(metric, "")
        r = ratios.get(metric, {}).get(main)
        ratio = (f"**{r['median']:.2f}x** [{r['min']:.2f}-{r['max']:.2f}] of {r['other']}" if r
                 else "-")
        extra_cells = [f"{x['median']:.2f}x [{x['min']:.2f}-{x['max']:.2f}]" if x else "-"
                       for x in (ratios.get(metric, {}).get(lib) for lib in extra)]
        if not others or not any(o in stats.get(metric, {}) for o in others):
            s = stats.get(metric, {}).get(main)    # a metric of cconv alone: its own range
            ratio = f"**{fmt(s['median'], unit)}** [{fmt(s['min'], unit)}-{fmt(s['max'], unit)}]" \
                if s else "-"
        cells = ["-" if unit in TIME_UNITS or lib not in stats.get(metric, {})
                 else fmt(stats[metric][lib]["median"], unit) for lib in shown]
        lines.append(f"| {label} | {ratio} | " + "".join(c + " | " for c in extra_cells + cells))
    if log.get("checks"):
        lines += ["", "| target | bound | median | verdict |", "|---|---|---|---|"]
        for c in log["checks"]:
            verdict = {True: "PASS", False: "FAIL", None: "n/a"}[c["pass"]]
            if c["pass"] and c["pass_every_run"] is False:
                verdict += " (not in every run)"
            value = "-" if c["median"] is None else f"{c['median']:.2f}"
            lines.append(f"| {c['label']} | {c['direction']} {c['bound']} | {value} | {verdict} |")
    m, s = log["machine"], log["settings"]
    loads = [j["load_before"] for run in log["runs"] for r in run.values()
             for j in (r.get("jobs") or {"": r}).values() if j.get("load_before") is not None]
    steals = [j["steal"] for run in log["runs"] for r in run.values()
              for j in (r.get("jobs") or {"": r}).values() if j.get("steal") is not None]
    noise = (f" The machine is shared and noisy: its load average before the workers was "
             f"{min(loads):.1f}-{max(loads):.1f} on {m.get('cpus_allowed', m.get('cpu_count'))} "
             f"CPUs." if loads else " The machine is shared and noisy.")
    if steals:
        noise += (f" The hypervisor took {100 * min(steals):.0f}-{100 * max(steals):.0f}% of "
                  f"the CPU time while a worker ran (steal, from /proc/stat).")
    shown = ", ".join(f"{k} {v}" for k, v in s.items() if k not in ("env", "isa"))
    lines += ["", f"{len(log['runs'])} runs, each library in its own process, in "
              f"{order_text(log)}; ratios are per run (library / the fastest other library in the same "
              f"run). Log `{os.path.relpath(path, ROOT)}`: commit "
              f"{(log['commit'] or 'unknown')[:10]}{' with uncommitted changes' if log['dirty'] else ''}, "
              f"{log['time'][:10]}, {shown}, {m.get('cpu', '?')} "
              f"({', '.join(m.get('isa', []))}), {m.get('cpus_allowed', m.get('cpu_count'))} CPUs."
              + "".join(f" {lib['label']}: {lib['name']} under `{lib['python']}`"
                        + "".join(f" with {k}={v}" for k, v in lib.get("env", {}).items())
                        + ", not a contender." for lib in log["libraries"] if lib["label"] in extra)
              + "".join(f" {lib['label']}: a measure of the machine itself, not a library "
                        f"(`{log['argv'][0]}` says what it runs)."
                        for lib in log["libraries"] if lib.get("reference"))
              + main_python(log, main) + noise]
    return "\n".join(lines)


def render(logs):
    if not logs:
        return ("No benchmark logs with enough runs under `bench/results/` yet: run "
                "`python bench/bench_core.py`, `python bench/bench_train.py`, "
                "`python bench/bench_layers.py`, `python bench/bench_speed.py` and "
                "`python bench/bench_isa.py` (5 runs each) on a quiet machine, then "
                "`python bench/make_tables.py --update`.")
    return "\n\n".join(table(path, log) for path, log in logs)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("logs", nargs="*", help="log files (default: the newest of each benchmark)")
    p.add_argument("--results", default=os.path.join(HERE, "results"))
    p.add_argument("--min-runs", type=int, default=5)
    p.add_argument("--readme", default=os.path.join(ROOT, "README.md"))
    g = p.add_mutually_exclusive_group()
    g.add_argument("--update", action="store_true")
    g.add_argument("--check", action="store_true")
    a = p.parse_args(argv)
    if a.logs:
        logs = []
        for path in a.logs:
            with open(path, encoding="utf-8") as f:
                logs.append((os.path.abspath(path), json.load(f)))
    else:
        logs = newest_logs(a.results, a.min_runs)
    body = render(logs)
    if not (a.update or a.check):
        print(body)
        return 0
    return update_or_check(a.readme, {"bench": body}, a.check, "python bench/make_tables.py --update")


if __name__ == "__main__":
    sys.exit(main())
