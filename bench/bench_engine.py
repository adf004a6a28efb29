"""Benchmark: the paper network's training epoch under two cconv installations, interleaved.

Runs bench_train.py's cconv worker (one warm-up batch, then ``--repeat`` timed epochs of
the paper network on 1,777 random 64x64x3 images, batch 128) in its own process under
each Python interpreter, alternating which goes first in each round, for ``--rounds``
rounds. A run's time is the median of its epochs; the report gives, for each interpreter,
the median and the range of its runs' times, and the median and range of the per-round
ratios B / A, also of the worker processes' CPU time (less sensitive than wall time to
other jobs on a shared machine). The raw numbers go to ``bench/results/engine-<time>.json``.

Used to check that a change of the training engine costs nothing: A is the old code
(e.g. main's virtual environment), B the new.

``--measure step`` times something steadier on a shared machine: the CPU time
(``time.process_time``) of one ``train_on_batch`` of the paper network on a batch of 128,
one thread everywhere (cconv and BLAS), the median of ``--steps`` steps after 3 warm-up
steps, each run in its own process.

Usage::

    python bench/bench_engine.py --python-a /work/venvs/main/bin/python \\
        --python-b /work/venvs/models/bin/python --rounds 7 --repeat 3
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import harness  # noqa: E402


STEP_WORKER = """
import json, statistics, sys, time
import numpy as np
import cconv
from threadpoolctl import threadpool_limits
sys.path.insert(0, {here!r})
from paper_net import data as _data
from cconv import optim
from cconv.layers import Conv2D, Dense, Dropout, Flatten, MaxPool2D
cconv.set_num_threads(1)
threadpool_limits(1)
x, y = _data({batch})
model = cconv.Sequential([
    Conv2D(32, 3, activation="relu"), MaxPool2D(2), Conv2D(64, 3, activation="relu"), MaxPool2D(2),
    Conv2D(128, 3, activation="relu"), MaxPool2D(2), Flatten(), Dense(128, activation="relu"),
    Dense(256, activation="relu"), Dropout(0.5), Dense(34, activation="softmax")],
    input_shape=(64, 64, 3), seed=0)
model.compile(optim.Adam(lr=1e-3), "categorical_crossentropy")
for _ in range(3):
    model.train_on_batch(x, y)
times = []
for _ in range({steps}):
    t = time.process_time()
    logs = model.train_on_batch(x, y)
    times.append(time.process_time() - t)
print(json.dumps({{"times": times, "loss": logs["loss"], "threads": 1}}))
"""


def run(python, args):
    if args.measure == "step":
        code = STEP_WORKER.format(here=HERE, batch=args.batch, steps=args.steps)
        proc = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=HERE)
        if proc.returncode != 0:
            raise RuntimeError(f"{python}: {proc.stderr.strip()[-2000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        return {"median": statistics.median(result["times"]), "times": result["times"], "cpu_s": 1.0,
                "loss": result["loss"], "threads": 1, "cconv": _where(python)}
    settings = {"threads": args.threads, "epochs": args.repeat, "images": args.images,
                "batch": args.batch, "isa": "native"}
    cmd = [python, os.path.join(HERE, "bench_train.py"), "--worker", "cconv", "--settings",
           json.dumps(settings)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"{python}: {proc.stderr.strip()[-2000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith(harness.MARK)][-1]
    result = json.loads(line[len(harness.MARK):])       # bench/harness.py's worker record
    times, version = result["info"]["epoch_times"], _where(python)
    return {"median": statistics.median(times), "times": times, "cpu_s": cpu,
            "loss": result["info"]["loss"], "threads": result["info"]["threads"],
            "peak_mb": result["metrics"]["peak_mb"], "cconv": version}


def _where(python):
    return subprocess.run([python, "-c", "import cconv, os; print(os.path.dirname(cconv.__file__))"],
                          capture_output=True, text=True).stdout.strip()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--python-a", required=True, help="interpreter with the reference cconv")
    p.add_argument("--python-b", required=True, help="interpreter with the cconv under test")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeat", type=int, default=3, help="timed epochs per run")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--images", type=int, default=1777)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--measure", choices=("epoch", "step"), default="epoch",
                   help="wall time of epochs (bench_train's worker) or CPU time of single steps")
    p.add_argument("--steps", type=int, default=15, help="timed steps per run with --measure step")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    args = p.parse_args(argv)
    runs = {"a": [], "b": []}
    for r in range(args.rounds):
        order = ("a", "b") if r % 2 == 0 else ("b", "a")
        for key in order:
            runs[key].append(run(getattr(args, f"python_{key}"), args))
        print(f"round {r + 1}/{args.rounds}: A {runs['a'][-1]['median']:.3f} s, B {runs['b'][-1]['median']:.3f} s, "
              f"B/A {runs['b'][-1]['median'] / runs['a'][-1]['median']:.3f}", flush=True)
    ratios = [b["median"] / a["median"] for a, b in zip(runs["a"], runs["b"])]
    cpu_ratios = [b["cpu_s"] / a["cpu_s"] for a, b in zip(runs["a"], runs["b"])]
    summary = {}
    for key in ("a", "b"):
        t = [x["median"] for x in runs[key]]
        summary[key] = {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t)}
    summary["ratio_b_over_a"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    summary["cpu_ratio_b_over_a"] = {"median": statistics.median(cpu_ratios), "min": min(cpu_ratios),
                                     "max": max(cpu_ratios)}
    for key, label in (("a", "A"), ("b", "B")):
        s = summary[key]
        print(f"{label} ({runs[key][0]['cconv']}): median {s['median_s']:.3f} s, range {s['min_s']:.3f}-{s['max_s']:.3f} s")
    r = summary["ratio_b_over_a"]
    print(f"B/A per round: median {r['median']:.3f}, range {r['min']:.3f}-{r['max']:.3f} ({args.rounds} rounds)")
    c = summary["cpu_ratio_b_over_a"]
    if args.measure == "epoch":
        print(f"B/A of the whole worker process's CPU time (imports, data, warm-up and epochs): median "
              f"{c['median']:.3f}, range {c['min']:.3f}-{c['max']:.3f}")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"engine-{args.measure}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(path, "w") as f:
        json.dump({"args": vars(args), "runs": runs, "ratios": ratios, "cpu_ratios": cpu_ratios, "summary": summary,
                   "load": os.getloadavg()}, f, indent=1)
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
