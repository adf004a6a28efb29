"""The shared harness of cconv's benchmarks: each library in its own process, runs interleaved.

A benchmark script (``bench_core.py``, ``bench_train.py``, ...) defines

* one worker function per library, ``fn(settings) -> {metric: value}``, which imports its
  library itself, sets its threads, warms up and measures (the helpers below time calls and
  measure memory growth);
* a :class:`Target`: its name, its libraries (each may run under another interpreter, e.g.
  Keras on TensorFlow from /work/venv-tf), the metrics' units, the rows of the README table
  and the targets to check; if a library's figures need several processes (e.g. training at
  2 threads and at 1), its :class:`Job` s, and metrics derived from theirs (the 2-thread /
  1-thread speed-up);

and ends with ``sys.exit(harness.run(TARGET, WORKERS, __file__, options))``. The parent
process then, for ``--runs`` runs (at least 5 for figures that go into the README), starts
fresh processes (one per library, or one per library and job) in an order that rotates from
run to run, the libraries after the first reversed in every other run (run 1: A B C D, run
2: B A D C, run 3: C D A B, ...; printed), so that every library is measured under the same
machine load, goes first equally often and does not always run right after the same other
library (whatever a process leaves behind would then weigh on one library only). It prints
the median and the range of every metric and the ratio of each library to the fastest other
library (the median of the per-run ratios, and their range: a ratio compares two
measurements made seconds apart, so a slow spell of the shared machine that spans both
cancels out), and writes everything to a JSON log under ``bench/results/``: commit, machine,
settings, the run order, every worker's raw measurements, thread pools (threadpoolctl),
versions and environment. ``bench/make_tables.py`` makes the README's tables from those
logs. Options every script has: ``--runs``, ``--threads``, ``--isa avx2`` (cap every library's vectorised
code), ``--only``, ``--baseline PYTHON`` (the main library's worker under another
interpreter, beside the others but not a contender), ``--python NAME=PATH``, ``--job``,
``--out`` (the log's directory), ``--no-log``.

The worker side runs under any Python with only the standard library (plus what the
library itself needs): nothing here imports numpy or cconv at module level.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
MARK = "@@bench-result "
#: Environment variables recorded with every worker (thread pools, instruction sets).
ENV_PREFIXES = ("OMP_", "GOMP_", "KMP_", "MKL_", "OPENBLAS_", "ATEN_", "ONEDNN_", "DNNL_",
                "TF_", "CCONV_", "KERAS_")
#: Pause between two worker processes (the previous one's threads and memory are gone).
SETTLE = 0.5


@dataclass
class Library:
    """A contender: its worker's name in the script, the interpreter that runs it, and
    extra environment variables for its process. A library that is not a contender (e.g.
    ``--baseline``: the same cconv under another interpreter) gets its ratios like the
    others but is never the "fastest other library" of anybody's ratio; a reference (a
    measure of the machine itself) gets its figures only."""
    name: str
    label: str = ""
    python: str = sys.executable
    env: dict = field(default_factory=dict)
    contender: bool = True
    reference: bool = False    # a yardstick of the machine, not a library: no ratios at all

    def __post_init__(self):
        self.label = self.label or self.name


@dataclass
class Job:
    """One process of each library in a run: its settings override the run's (e.g.
    ``{"threads": 1}``), and its metrics get `suffix` appended (``epoch`` -> ``epoch_1t``)."""
    name: str
    settings: dict = field(default_factory=dict)
    suffix: str = ""


@dataclass
class Check:
    """A target: `library`'s `metric` against `bound`. against=None: the library's median
    ratio to the fastest other library; a tuple of library names: its ratio to the best of
    those (e.g. PyTorch's two layouts); "value": the library's own median (a speed-up).
    Target.checks may also hold plain (label, metric, library, bound) tuples."""
    label: str
    metric: str
    library: str
    bound: float
    against: object = None


@dataclass
class Target:
    """A benchmark: its libraries and how to report it.

    rows: (label, metric) pairs for the README table, in order.
    units: metric -> unit ("s", "ms", "MB", "x", "%"); times are shown in it.
    higher_is_better: metrics where more is better (speed-ups, shares); ratios are still
    library / fastest other, so the best other is then the largest.
    checks: :class:`Check` s (or (label, metric, library, bound) tuples) -> PASS when the
    library's median ratio to the fastest other library (for a metric only it has: its
    median) is <= bound, or >= bound for a higher_is_better metric.
    jobs: the processes each library runs per run (default: one, with the run's settings).
    derived: metric -> fn(metrics of one library in one run) -> value, computed in the parent
    after the library's jobs (skipped when an input is missing).
    """
    name: str
    description: str
    libraries: list
    rows: list
    units: dict
    higher_is_better: tuple = ()
    checks: list = field(default_factory=list)
    main: str = "cconv"            # the library whose ratios the README shows
    jobs: list = field(default_factory=lambda: [Job("")])
    derived: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- worker side

def rss_mb():
    """Current resident set size (MB), from /proc (Linux)."""
    return _status("VmRSS")


def _status(key):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


class Memory:
    """Memory of a block: ``with Memory() as m: train()`` gives m.base_mb (resident after
    imports and data, when the block starts), m.growth_mb (the block's peak minus that
    baseline: what the training itself needs) and m.peak_mb (the whole process's peak, the
    imports included). The peak is reset at the start (Linux /proc/self/clear_refs);
    without that, growth is measured from the process's peak so far."""

    def __enter__(self):
        self.before_peak = _status("VmHWM")
        self.base_mb = rss_mb()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.reset = True
        except OSError:
            self.reset = False
        return self

    def __exit__(self, *exc):
        during = _status("VmHWM")
        self.peak_mb = max(self.before_peak, during)
        self.growth_mb = during - self.base_mb
        return False


#: Untimed calls (for at least this long) before each timed call of time_call().
BURST = 0.1


def time_call(fn, repeats, burst=BURST, warmup=0):
    """(median, list) of `repeats` timed calls of fn, each right after `burst` seconds of
    untimed calls: the steady state of a loop, where the previous call has just ended
    (burst=0: back to back, after `warmup` untimed calls)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t1 = time.perf_counter()
        while time.perf_counter() - t1 < burst:
            fn()
        t2 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t2)
    return statistics.median(times), times


def per_call(fn, repeats, calls=None, seconds=1.0, warmup=0.2):
    """Seconds per call of fn: the fastest of `repeats` batches of calls (the batch the rest
    of the shared machine disturbed least: the call's own cost), after `warmup` seconds (and
    at least 3 calls) of untimed calls. A batch has `calls` calls, or (calls=None) as many as
    take about seconds / repeats."""
    t0 = time.perf_counter()
    n = 0
    while n < 3 or time.perf_counter() - t0 < warmup:
        fn()
        n += 1
    if calls is None:
        calls = max(1, int(seconds / repeats / ((time.perf_counter() - t0) / n)))
    best = float("inf")
    for _ in range(repeats):
        t1 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t1) / calls)
    return best


def cap_cconv_isa(settings):
    """In a cconv worker: apply the run's instruction-set cap (--isa avx2) to cconv's kernels
    (the other libraries get it from the environment, see isa_env)."""
    if settings.get("isa") == "avx2":
        from cconv import _core
        _core.simd_level(1)


def _process_info(name):
    info = {"library": name, "python": platform.python_version(), "executable": sys.executable,
            "env": {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)}}
    try:
        from threadpoolctl import threadpool_info
        info["threadpools"] = [{k: d.get(k) for k in ("user_api", "internal_api", "num_threads",
                                                       "version", "filepath")}
                               for d in threadpool_info()]
    except ImportError:
        info["threadpools"] = None
    for mod in ("cconv", "torch", "numpy", "scipy", "tensorflow", "keras"):
        if mod in sys.modules:
            info.setdefault("versions", {})[mod] = getattr(sys.modules[mod], "__version__", None)
    return info


def worker_main(workers, argv):
    """Run the worker named by --worker with the --settings JSON; print its result line."""
    p = argparse.ArgumentParser()
    p.add_argument("--worker", required=True)
    p.add_argument("--settings", required=True)
    a, _ = p.parse_known_args(argv)
    settings = json.loads(a.settings)
    t0 = time.perf_counter()
    metrics = workers[a.worker](settings)
    info = metrics.pop("info", {})
    result = {"metrics": metrics, "info": {**_process_info(a.worker), **info},
              "wall_s": time.perf_counter() - t0, "peak_mb": _status("VmHWM")}
    print(MARK + json.dumps(result), flush=True)
    return 0


# ----------------------------------------------------------------------------- parent side

def _git(*args):
    try:
        return subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info():
    info = {"platform": platform.platform(), "machine": platform.machine(),
            "python": platform.python_version(), "cpu_count": os.cpu_count()}
    try:
        info["cpus_allowed"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        for line in text.splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines()
                      if ln.startswith("flags")), [])
        info["isa"] = [f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512vl") if f in flags]
    except OSError:
        pass
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            info["cgroup_cpu_max"] = f.read().strip()
    except OSError:
        pass
    try:
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return info


def isa_env(isa):
    """Environment that caps every library's vectorised code at `isa` ("avx2"), or {}.

    PyTorch's ATen kernels (ATEN_CPU_CAPABILITY), oneDNN under PyTorch and TensorFlow
    (ONEDNN_MAX_CPU_ISA), OpenBLAS under numpy and scipy (OPENBLAS_CORETYPE=Haswell: its
    AVX2 kernels); cconv reads the setting in its worker (_core.simd_level)."""
    if isa in (None, "", "native"):
        return {}
    if isa != "avx2":
        raise ValueError(f"isa must be 'native' or 'avx2', got {isa!r}")
    return {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
            "DNNL_MAX_CPU_ISA": "AVX2", "OPENBLAS_CORETYPE": "Haswell"}


def run_orders(names, runs):
    """The run orders: run i starts with library i mod n and goes on in the listed order,
    or, for odd i, in the reverse order (with two libraries, a plain alternation)."""
    orders = []
    for i in range(runs):
        order = names[i % len(names):] + names[:i % len(names)]
        orders.append(order if i % 2 == 0 else order[:1] + order[:0:-1])
    return orders


def cpu_ticks(path="/proc/stat"):
    """(steal, total) clock ticks of all CPUs since boot from Linux's /proc/stat, or None.
    Steal is the time the hypervisor ran something else while this (virtual) machine's CPUs
    had work: on a shared host it rises under sustained load, and it slows a run on two
    threads more than a run on one."""
    try:
        with open(path) as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    ticks = [int(v) for v in fields[1:9]]     # user nice system idle iowait irq softirq steal
    return ticks[7], sum(ticks)


def steal_share(before, after):
    """The share of the CPU time between two cpu_ticks() readings that the hypervisor took."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def _run_worker(script, lib, settings, timeout):
    env = {**os.environ, **settings.get("env", {}), **lib.env}
    if lib.python != sys.executable:      # another interpreter: none of this one's paths
        env.pop("PYTHONPATH", None)
    cmd = [lib.python, script, "--worker", lib.name, "--settings", json.dumps(settings)]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    ticks = cpu_ticks()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    steal = steal_share(ticks, cpu_ticks())
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        return {"error": f"exit {proc.returncode}", "stderr_tail": tail, "load_before": load,
                "steal": steal}
    result = json.loads(lines[-1][len(MARK):])
    result["load_before"] = load
    result["steal"] = steal
    return result


def _run_library(script, lib, settings, target, jobs, timeout):
    """A library's record of one run: its jobs, one process each (see merge_jobs)."""
    records = {}
    for i, job in enumerate(jobs):
        if i:
            time.sleep(SETTLE)
        records[job.name] = _run_worker(script, lib, {**settings, **job.settings}, timeout)
    return merge_jobs(target, jobs, records)


def merge_jobs(target, jobs, records):
    """One library's record of a run from its jobs' records ({job name: worker record}):
    with one job, that job's record; with several, their metrics merged (each with its job's
    suffix), the first job's info and load, every job's record under "jobs" (and "error" if
    one failed); then the target's derived metrics."""
    if len(jobs) == 1 and not jobs[0].suffix:
        record = records[jobs[0].name]
    else:
        ok = [(job, records[job.name]) for job in jobs if "error" not in records[job.name]]
        first = ok[0][1] if ok else records[jobs[0].name]
        record = {"metrics": {m + job.suffix: v for job, r in ok for m, v in r["metrics"].items()},
                  "info": first.get("info", {}), "load_before": first.get("load_before"),
                  "steal": first.get("steal"),
                  "wall_s": sum(r.get("wall_s", 0.0) for _, r in ok), "jobs": records}
        failed = [job.name for job in jobs if "error" in records[job.name]]
        if failed:
            record["error"] = "; ".join(f"{name}: {records[name]['error']}" for name in failed)
            record["stderr_tail"] = [ln for name in failed for ln in records[name]["stderr_tail"]]
    for metric, fn in target.derived.items():
        try:
            record["metrics"][metric] = fn(record["metrics"])
        except (KeyError, ZeroDivisionError, TypeError):
            pass
    return record


def _ratio(runs, metric, lib, others, per, better):
    """lib's ratio to the best (by median) of `others`: {other, median, min, max, values} of
    the per-run ratios, or None."""
    others = [o for o in others if o in per and o != lib]
    if not others or lib not in per:
        return None
    other = better(others, key=lambda o: per[o]["median"])
    vals = [run[lib]["metrics"][metric] / run[other]["metrics"][metric] for run in runs
            if run.get(lib, {}).get("metrics", {}).get(metric) is not None
            and run.get(other, {}).get("metrics", {}).get(metric)]
    if not vals:
        return None
    return {"other": other, "median": statistics.median(vals), "min": min(vals),
            "max": max(vals), "values": vals}


def summarize(target, runs):
    """{metric: {library: {median, min, max, n, values}}} and the ratios to the fastest
    other library (a contender running another worker: the baseline cconv is compared with
    the others, not with cconv): {metric: {library: {other, median, min, max, values}}}."""
    libs = [lib.label for lib in target.libraries]
    worker = {lib.label: lib.name for lib in target.libraries}
    contenders = [lib.label for lib in target.libraries if lib.contender and not lib.reference]
    references = {lib.label for lib in target.libraries if lib.reference}
    stats, ratios = {}, {}
    metrics = sorted({m for run in runs for r in run.values() if "metrics" in r
                      for m in r["metrics"]})
    for m in metrics:
        per = {}
        for lib in libs:
            vals = [run[lib]["metrics"][m] for run in runs
                    if lib in run and m in run[lib].get("metrics", {})
                    and run[lib]["metrics"][m] is not None]
            if vals:
                per[lib] = {"median": statistics.median(vals), "min": min(vals),
                            "max": max(vals), "n": len(vals), "values": vals}
        stats[m] = per
        better = max if m in target.higher_is_better else min
        ratios[m] = {}
        for lib in per:
            if lib in references:
                continue
            r = _ratio(runs, m, lib, [c for c in contenders if worker[c] != worker[lib]],
                       per, better)
            if r:
                ratios[m][lib] = r
    return stats, ratios


def checksum_agreement(runs):
    """Largest relative difference between the libraries' info["checksum"] entries (sums of
    the same outputs, computed in each process), or None when no worker reports one."""
    worst = None
    for run in runs:
        sums = [r["info"]["checksum"] for r in run.values() if "checksum" in r.get("info", {})]
        for key in set().union(*sums) if len(sums) > 1 else ():
            vals = [s[key] for s in sums if key in s]
            scale = max(abs(v) for v in vals) or 1.0
            diff = (max(vals) - min(vals)) / scale
            worst = diff if worst is None else max(worst, diff)
    return worst


def _label(target, name):
    """The label of the library called `name` (a name or already a label)."""
    return next((lib.label for lib in target.libraries if name in (lib.name, lib.label)), name)


def check_targets(target, stats, ratios, runs=()):
    out = []
    for c in target.checks:
        c = c if isinstance(c, Check) else Check(*c)
        lib = _label(target, c.library)
        hib = c.metric in target.higher_is_better
        s = stats.get(c.metric, {}).get(lib)
        if c.against == "value":
            r = None
        elif c.against:
            r = _ratio(runs, c.metric, lib, [_label(target, o) for o in c.against],
                       stats.get(c.metric, {}), max if hib else min)
        else:
            r = ratios.get(c.metric, {}).get(lib)
        if not r and c.against and c.against != "value":
            s = None        # none of the libraries to compare with ran
        value = r["median"] if r else (s["median"] if s else None)
        rng = (r["min"], r["max"]) if r else ((s["min"], s["max"]) if s else None)
        ok = None if value is None else (value >= c.bound if hib else value <= c.bound)
        every = None if rng is None else (rng[0] >= c.bound if hib else rng[1] <= c.bound)
        out.append({"label": c.label, "metric": c.metric, "library": lib,
                    "against": r["other"] if r else None, "bound": c.bound,
                    "direction": ">=" if hib else "<=", "median": value, "range": rng,
                    "pass": ok, "pass_every_run": every})
    return out


def fmt(value, unit):
    if value is None:
        return "-"
    if unit == "s":
        return f"{value:.3g} s" if value >= 1 else f"{value * 1e3:.3g} ms"
    if unit == "%":
        return f"{100 * value:.0f}%"
    if unit == "x":
        return f"{value:.2f}x"
    return f"{value:.4g} {unit}".strip()


def main(target, script, argv=None, settings_parser=None, default_runs=5):
    """Parse the parent's options, run the interleaved runs, print and log the results.

    settings_parser(parser) may add the target's own options; every option becomes part of
    the settings that the workers receive (and that the log records)."""
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=target.description)
    p.add_argument("--runs", type=int, default=default_runs,
                   help=f"runs, each library once per run (default {default_runs}; "
                        "at least 5 for the README)")
    p.add_argument("--threads", type=int, default=2, help="threads for every library")
    p.add_argument("--isa", default="native", choices=["native", "avx2"],
                   help="cap every library's vectorised code (avx2: no AVX-512 anywhere)")
    p.add_argument("--only", action="append", help="run only these libraries")
    p.add_argument("--baseline", "--baseline-python", metavar="PYTHON",
                   help=f"also run {target.main}'s worker under this interpreter (e.g. the "
                        "environment of the code before a change), as a library that is not "
                        "a contender: before/after figures under the same load")
    p.add_argument("--variant", action="append", default=[], metavar="VAR=VALUE",
                   help=f"also run {target.main}'s worker with this environment variable set "
                        "(e.g. an opt-in), as a library that is not a contender")
    p.add_argument("--python", action="append", default=[], metavar="NAME=PATH",
                   help="run library NAME's worker under the interpreter PATH")
    if len(target.jobs) > 1:
        p.add_argument("--job", action="append", choices=[job.name for job in target.jobs],
                       help="run only these of each library's processes")
    p.add_argument("--out", default=RESULTS, help="directory of the JSON log")
    p.add_argument("--no-log", action="store_true", help="write no JSON log")
    p.add_argument("--timeout", type=float, default=3600, help="per worker process, seconds")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--settings", help=argparse.SUPPRESS)
    if settings_parser:
        settings_parser(p)
    a = p.parse_args(argv)
    try:
        libs = libraries(target, a.python, a.baseline, a.only, a.variant)
    except ValueError as e:
        p.error(str(e))
    if not libs:
        p.error(f"no library left; choose from {[lib.name for lib in target.libraries]}")
    jobs = [job for job in target.jobs if not getattr(a, "job", None) or job.name in a.job]
    target = dataclasses.replace(target, libraries=libs)
    parent_only = {"runs", "only", "out", "no_log", "timeout", "worker", "settings",
                   "baseline", "python", "job", "variant"}
    settings = {k: v for k, v in vars(a).items() if k not in parent_only}
    settings["env"] = isa_env(a.isa)
    orders = run_orders([lib.label for lib in libs], a.runs)
    by_label = {lib.label: lib for lib in libs}
    commit, dirty = _git("rev-parse", "HEAD"), bool(_git("status", "--porcelain",
                                                          "--untracked-files=no"))
    print(f"{target.name}: {target.description}")
    print(f"commit {commit[:10] if commit else 'unknown'}{' (uncommitted changes)' if dirty else ''}; "
          f"settings {json.dumps({k: v for k, v in settings.items() if k != 'env'})}"
          f"{'; env ' + json.dumps(settings['env']) if settings['env'] else ''}")
    print("run order (rotating; every other run reversed after its first library):")
    for i, order in enumerate(orders):
        print(f"  run {i + 1}: {', '.join(order)}")
    runs = []
    for i, order in enumerate(orders):
        run = {}
        for label in order:
            t0 = time.perf_counter()
            r = _run_library(script, by_label[label], settings, target, jobs, a.timeout)
            run[label] = r
            shown = {metric for _, metric in target.rows}
            status = ", ".join(
                [f"{m} {fmt(v, target.units.get(m, ''))}" for m, v in r.get("metrics", {}).items()
                 if m in shown] + ([r["error"]] if "error" in r else []))
            print(f"  run {i + 1} {label:<22} {time.perf_counter() - t0:6.1f} s  {status}",
                  flush=True)
            if "error" in r:
                print("    " + "\n    ".join(r["stderr_tail"]))
            time.sleep(SETTLE)
        runs.append(run)
    log = make_log(target, runs, settings, script, argv, jobs, orders, commit, dirty)
    report(target, log["stats"], log["ratios"], log["checks"], len(runs))
    if log["checksum_agreement"] is not None:
        print(f"\noutputs: the libraries' checksums differ by at most "
              f"{log['checksum_agreement']:.1e} (relative)")
    if not a.no_log:
        os.makedirs(a.out, exist_ok=True)
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        suffix = f"-{a.isa}" if a.isa != "native" else ""
        path = os.path.join(a.out, f"{target.name}{suffix}_{stamp}_{(commit or 'nogit')[:8]}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(log, f, indent=1)
            f.write("\n")
        print(f"log: {os.path.relpath(path)}")
    return log


def make_log(target, runs, settings, script, argv=(), jobs=None, orders=None, commit=None,
              dirty=False):
    """The JSON log of the runs (a list of {library label: record}) of `target`, whose
    libraries are the ones that ran: statistics, ratios and targets included."""
    stats, ratios = summarize(target, runs)
    return {"target": target.name, "description": target.description,
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "argv": [os.path.relpath(script, ROOT)] + list(argv), "commit": commit,
            "dirty": dirty, "machine": machine_info(), "settings": settings,
            "libraries": [{"name": lib.name, "label": lib.label, "python": lib.python,
                           "env": lib.env, "contender": lib.contender,
                           "reference": lib.reference}
                          for lib in target.libraries],
            "jobs": [dataclasses.asdict(job) for job in (jobs or target.jobs)],
            "order": orders or [list(run) for run in runs], "runs": runs, "stats": stats,
            "ratios": ratios, "checks": check_targets(target, stats, ratios, runs),
            "checksum_agreement": checksum_agreement(runs),
            "rows": target.rows, "units": target.units, "main": _label(target, target.main),
            "higher_is_better": list(target.higher_is_better)}


def libraries(target, pythons=(), baseline=None, only=None, variants=()):
    """The target's libraries (those named in `only`, if given) with the interpreters of
    --python NAME=PATH, --baseline and the --variant VAR=VALUE environments; ValueError
    when an interpreter is not there or a variant is not VAR=VALUE."""
    chosen = {}
    for item in pythons:
        name, sep, path = item.partition("=")
        if not sep or name not in {lib.name for lib in target.libraries}:
            raise ValueError(f"--python takes NAME=PATH with NAME one of "
                             f"{[lib.name for lib in target.libraries]}, got {item!r}")
        chosen[name] = path
    libs = [dataclasses.replace(lib, python=chosen.get(lib.name, lib.python))
            for lib in target.libraries]
    if baseline:
        main = next(lib for lib in libs if target.main in (lib.name, lib.label))
        libs.insert(libs.index(main) + 1, dataclasses.replace(
            main, label=f"{main.label} (baseline)", python=baseline, contender=False))
    main = next(lib for lib in libs if target.main in (lib.name, lib.label))
    for item in reversed(variants):
        var, sep, value = item.partition("=")
        if not sep or not var:
            raise ValueError(f"--variant takes VAR=VALUE, got {item!r}")
        libs.insert(libs.index(main) + 1, dataclasses.replace(
            main, label=f"{main.label} ({item})", env={**main.env, var: value}, contender=False))
    libs = [lib for lib in libs if not only or lib.name in only]
    for lib in libs:
        if not shutil.which(lib.python):
            raise ValueError(f"library {lib.name}: no interpreter {lib.python!r}; give "
                             f"another with --python {lib.name}=PATH or leave it out with --only")
    return libs


def run(target, workers, script, settings_parser=None, argv=None):
    """A benchmark script's entry point: in a worker process (--worker) run the worker,
    otherwise the parent (:func:`main`). Returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if "--worker" in argv:
        return worker_main(workers, argv)
    main(target, os.path.abspath(script), argv, settings_parser)
    return 0


def report(target, stats, ratios, checks, nruns):
    print(f"\n== {target.name}: median [min-max] over {nruns} runs; ratio = library / fastest "
          "other library, median [min-max] of the per-run ratios")
    for label, metric in target.rows:
        unit = target.units.get(metric, "")
        print(f"  {label}")
        for lib, s in stats.get(metric, {}).items():
            r = ratios.get(metric, {}).get(lib)
            rtext = (f"   {r['median']:.2f}x [{r['min']:.2f}-{r['max']:.2f}] of {r['other']}"
                     if r else "")
            print(f"    {lib:<22} {fmt(s['median'], unit):>10} [{fmt(s['min'], unit)} - "
                  f"{fmt(s['max'], unit)}]{rtext}")
    if checks:
        print("\n== targets (on the median; 'every run' on the whole range)")
        for c in checks:
            verdict = {True: "PASS", False: "FAIL", None: "n/a"}[c["pass"]]
            every = {True: "every run", False: "not every run", None: ""}[c["pass_every_run"]]
            value = "-" if c["median"] is None else f"{c['median']:.3g}"
            print(f"  {c['label']:<60} {c['direction']} {c['bound']:<6} median {value:<8} "
                  f"{verdict} ({every})")
