"""Time ``import cconv`` in fresh interpreters (target: under 0.3 s).

Each run starts a new Python process (from a temporary directory, so the import comes from
the installed package) and times ``import cconv`` inside it with ``time.perf_counter``;
``import numpy`` (which cconv cannot avoid) is measured the same way in the same run as the
reference. One warm-up run of each is discarded (it compiles .pyc files and fills the OS
file cache); the median and minimum of the rest are reported, with ``python -X importtime``'s
slowest modules for the last cconv import.

To measure an install that has only the core dependencies (numpy, scipy, threadpoolctl),
point ``--python`` at a virtual environment holding just those and the cconv wheel, e.g.
the one that ``CCONV_KEEP_WORK=1 bash tools/build_wheel.sh`` leaves behind.

    python bench/bench_import.py [--runs 15] [--python /path/to/venv/bin/python]
"""
import argparse
import statistics
import subprocess
import sys
import tempfile

TARGET_S = 0.3

_TIMER = ("import time; t0 = time.perf_counter(); import {mod}; "
          "print(time.perf_counter() - t0)")


def time_import(python, module, cwd):
    out = subprocess.run([python, "-c", _TIMER.format(mod=module)], cwd=cwd, check=True,
                         capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def slowest_modules(python, module, cwd, n=8):
    """The n modules with the largest cumulative import time (microseconds)."""
    err = subprocess.run([python, "-X", "importtime", "-c", f"import {module}"], cwd=cwd,
                         check=True, capture_output=True, text=True).stderr
    rows = []
    for line in err.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _self_us, cum_us, name = line[len("import time:"):].split("|")
        # The name is indented by two spaces per level of the import tree: keep the
        # modules cconv imports directly and theirs (levels 0-2).
        depth = (len(name) - len(name.lstrip(" ")) - 1) // 2
        rows.append((int(cum_us), depth, name.strip()))
    return sorted((r for r in rows if r[1] <= 2), reverse=True)[:n]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--python", default=sys.executable,
                    help="interpreter to measure (default: this one)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as cwd:
        info = subprocess.run(
            [args.python, "-c",
             "import sys, cconv, threadpoolctl, json; "
             "print(json.dumps([sys.version.split()[0], cconv.__version__, cconv.__file__, "
             "[(d['internal_api'], d['num_threads']) for d in threadpoolctl.threadpool_info()]]))"],
            cwd=cwd, check=True, capture_output=True, text=True).stdout
        print(f"interpreter: {args.python}")
        print(f"python, cconv, imported from, thread pools loaded: {info.strip()}")
        results = {}
        for module in ("numpy", "cconv"):
            time_import(args.python, module, cwd)  # warm-up, discarded
            times = [time_import(args.python, module, cwd) for _ in range(args.runs)]
            results[module] = times
        print(f"\n{args.runs} fresh interpreters each (after one warm-up):")
        for module, times in results.items():
            print(f"  import {module:<6} median {statistics.median(times) * 1e3:7.1f} ms   "
                  f"min {min(times) * 1e3:7.1f} ms")
        med = statistics.median(results["cconv"])
        ratio = med / statistics.median(results["numpy"])
        print(f"  ratio cconv / numpy (median): {ratio:.2f}")
        verdict = "meets" if med < TARGET_S else "MISSES"
        print(f"\nimport cconv: {med * 1e3:.1f} ms median -- {verdict} the {TARGET_S * 1e3:.0f} ms target")
        print("\nslowest imports under `import cconv` (cumulative, python -X importtime):")
        for cum_us, _, name in slowest_modules(args.python, "cconv", cwd):
            print(f"  {cum_us / 1e3:7.1f} ms  {name}")
    return 0 if med < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
