#!/usr/bin/env python
"""Per-call overhead of a tiny convolution and max pool: cconv against torch.nn.functional.

Issue 15 asks that calling cconv from Python cost at most what calling PyTorch costs. On a
batch of one 8x8 image with 4 channels the kernels take well under a microsecond, so the
time of a call is its overhead: argument checks, dispatch, allocation, entering the
kernel. Measured:

* ``conv``: a 3x3 convolution with bias, padding 1, 4 -> 8 channels (cconv NHWC/HWIO,
  PyTorch NCHW/OIHW, ``torch.no_grad()``);
* ``conv_out`` (cconv only): the same with ``out=`` and ``workspace=``, as a loop that
  allocates nothing would call it;
* ``pool``: 2x2 max pooling; cconv always returns the winners' indices as well, so the
  PyTorch figure is ``return_indices=True`` (``pool_no_indices``: PyTorch without them);
* ``pool_out`` (cconv only): the same with ``out=``.

Each library runs in its own process, started afresh for every run; the order of the
libraries alternates from run to run, so both see the same machine load and go first
equally often. In a process: the thread count ``--threads`` for both libraries, 2,000
warm-up calls, then ``--repeats`` batches of ``--calls`` calls, and the time per call of the
fastest batch (the one the rest of the shared machine disturbed least). Over the ``--runs`` runs (at least 5) it prints the median
and the range of every figure and of the ratio cconv / PyTorch computed within each run (a
slow spell of the shared machine that spans both processes of a run cancels out), and
writes everything to ``bench/results/overhead-<date>.json``.

(A simple harness of its own: the shared one of bench/harness.py had not landed when this
was written.)

Usage::

    python bench/bench_overhead.py                 # 7 runs, 2 threads
    python bench/bench_overhead.py --runs 5 --calls 2000 --repeats 21
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MARK = "@@overhead "
SHAPE = (1, 8, 8, 4)            # N, H, W, C
COUT = 8


def _per_call(fn, calls, repeats):
    """Seconds per call: the fastest of `repeats` batches of `calls` calls, after a warm-up.
    (The fastest batch is the one the rest of the shared machine disturbed least: a call's
    own cost, which is what is compared here; the spread over runs is reported.)"""
    for _ in range(2000):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best


def worker_cconv(args):
    import numpy as np

    import cconv
    from cconv import functional as F

    cconv.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(SHAPE, dtype=np.float32)
    w = rng.standard_normal((3, 3, SHAPE[3], COUT), dtype=np.float32)
    b = rng.standard_normal(COUT, dtype=np.float32)
    y = np.empty(SHAPE[:3] + (COUT,), np.float32)
    ws = cconv.Workspace()
    p, a = F.max_pool2d(x, 2)
    out = {
        "conv": lambda: F.conv2d(x, w, b, padding=1),
        "conv_out": lambda: F.conv2d(x, w, b, padding=1, out=y, workspace=ws),
        "pool": lambda: F.max_pool2d(x, 2),
        "pool_out": lambda: F.max_pool2d(x, 2, out=(p, a)),
    }
    return {k: _per_call(f, args.calls, args.repeats) for k, f in out.items()}, {
        "cconv": cconv.__version__, "threads": cconv.get_num_threads()}


def worker_torch(args):
    import torch
    import torch.nn.functional as TF

    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPE[0], SHAPE[3], SHAPE[1], SHAPE[2], generator=gen)
    w = torch.randn(COUT, SHAPE[3], 3, 3, generator=gen)
    b = torch.randn(COUT, generator=gen)
    with torch.no_grad():
        out = {
            "conv": lambda: TF.conv2d(x, w, b, padding=1),
            "pool": lambda: TF.max_pool2d(x, 2, return_indices=True),
            "pool_no_indices": lambda: TF.max_pool2d(x, 2),
        }
        times = {k: _per_call(f, args.calls, args.repeats) for k, f in out.items()}
    return times, {"torch": torch.__version__, "threads": torch.get_num_threads()}


WORKERS = {"cconv": worker_cconv, "torch": worker_torch}
#: cconv figure -> the PyTorch figure it is compared with.
PAIRS = {"conv": "conv", "conv_out": "conv", "pool": "pool", "pool_out": "pool"}


def run_worker(name, args):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name,
           "--threads", str(args.threads), "--calls", str(args.calls),
           "--repeats", str(args.repeats)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith(MARK))
    return json.loads(line[len(MARK):])


def summary(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=1000, help="calls per timed batch")
    ap.add_argument("--repeats", type=int, default=15, help="timed batches per process")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        times, info = WORKERS[args.worker](args)
        print(MARK + json.dumps({"times": times, "info": info}))
        return
    if args.runs < 5:
        ap.error("--runs must be at least 5 (the figures are the median and range over runs)")
    runs = []
    for r in range(args.runs):
        order = ["cconv", "torch"] if r % 2 == 0 else ["torch", "cconv"]
        results = {}
        for name in order:
            time.sleep(0.5)                 # the previous process's threads are gone
            results[name] = run_worker(name, args)
        ratios = {k: results["cconv"]["times"][k] / results["torch"]["times"][t]
                  for k, t in PAIRS.items()}
        runs.append({"order": order, "results": results, "ratios": ratios})
        print(f"run {r + 1}/{args.runs} ({' then '.join(order)}): "
              + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()), flush=True)
    report = {"cconv_us": {}, "torch_us": {}, "ratio": {}}
    for lib, key in (("cconv", "cconv_us"), ("torch", "torch_us")):
        for k in runs[0]["results"][lib]["times"]:
            report[key][k] = summary([1e6 * run["results"][lib]["times"][k] for run in runs])
    for k in PAIRS:
        report["ratio"][k] = summary([run["ratios"][k] for run in runs])
    print(f"\nper-call time, median [min, max] over {args.runs} runs, {args.threads} threads:")
    for k, v in report["cconv_us"].items():
        t = report["torch_us"][PAIRS[k]]
        r = report["ratio"][k]
        print(f"  {k:9s} cconv {v['median']:6.2f} us [{v['min']:.2f}, {v['max']:.2f}]   "
              f"torch {PAIRS[k]} {t['median']:6.2f} us [{t['min']:.2f}, {t['max']:.2f}]   "
              f"ratio {r['median']:.2f}x [{r['min']:.2f}, {r['max']:.2f}]")
    t = report["torch_us"]["pool_no_indices"]
    print(f"  (torch pool without indices: {t['median']:.2f} us [{t['min']:.2f}, {t['max']:.2f}])")
    try:
        commit = subprocess.run(["git", "-C", HERE, "rev-parse", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = ""
    log = {"benchmark": "overhead", "date": datetime.datetime.now().isoformat(timespec="seconds"),
           "commit": commit, "machine": platform.platform(), "cpus": os.cpu_count(),
           "python": platform.python_version(), "settings": vars(args), "shape": SHAPE,
           "cout": COUT, "summary": report, "runs": runs}
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    path = os.path.join(HERE, "results", f"overhead-{log['date'].replace(':', '')}.json")
    with open(path, "w") as f:
        json.dump(log, f, indent=1)
    print(f"log: {os.path.relpath(path)}")


if __name__ == "__main__":
    main()
