"""Benchmark: inference of the paper network exported to ONNX, ONNX Runtime vs cconv.

The LFW paper's network (64x64x3, 724,962 parameters) is exported with ``model.export``
(NHWC inputs, NCHW inside: see cconv.onnx.export) and run by

* cconv: ``model.predict`` (inference mode),
* ONNX Runtime: ``InferenceSession.run`` on the exported file (CPU provider, all graph
  optimisations),

each in its own subprocess at the same thread count, for batches of 1 and 32 images.
Every worker warms up, then times ``--iters`` calls and reports the median time of one.
Workers of the two libraries alternate over ``--rounds`` rounds; the parent prints the
median and range of the per-round ratio ONNX Runtime / cconv (below 1: ONNX Runtime
faster) and writes them with the raw times to ``bench/results/onnx-<time>.json``.

Usage::

    python bench/bench_onnx.py                       # 2 threads, 5 rounds
    python bench/bench_onnx.py --threads 1 --rounds 7
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402  (its time_call)


def _batch(n):
    return np.random.default_rng(0).random((n, 64, 64, 3), dtype=np.float32)


def _time(fn, iters):
    """The median of `iters` back-to-back timed calls, after 2 untimed ones."""
    return harness.time_call(fn, iters, burst=0, warmup=2)[0]


def worker(args):
    x = _batch(args.batch)
    if args.worker == "cconv":
        import cconv
        cconv.set_num_threads(args.threads)
        model = cconv.load_model(args.model)
        seconds = _time(lambda: model.predict(x, batch_size=args.batch), args.iters)
    else:
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        opts.inter_op_num_threads = 1
        s = ort.InferenceSession(args.onnx, opts, providers=["CPUExecutionProvider"])
        name = s.get_inputs()[0].name
        seconds = _time(lambda: s.run(None, {name: x}), args.iters)
    print(json.dumps({"seconds": seconds}))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--worker", choices=["cconv", "ort"])
    p.add_argument("--batch", type=int)
    p.add_argument("--model")
    p.add_argument("--onnx")
    args = p.parse_args()
    if args.worker:
        return worker(args)

    import tempfile

    import cconv
    import onnxruntime

    tmp = tempfile.mkdtemp()
    model = cconv.models.paper_lfw(seed=0)
    model.save(os.path.join(tmp, "paper.npz"))
    model.export(os.path.join(tmp, "paper.onnx"))
    results = {"threads": args.threads, "rounds": args.rounds, "iters": args.iters,
               "cconv": cconv.__version__, "onnxruntime": onnxruntime.__version__,
               "python": platform.python_version(), "machine": platform.machine(),
               "load_before": os.getloadavg(), "batches": {}}
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    for batch in (1, 32):
        times = {"cconv": [], "ort": []}
        for _ in range(args.rounds):
            for w in ("cconv", "ort"):
                cmd = [sys.executable, __file__, "--worker", w, "--batch", str(batch),
                       "--threads", str(args.threads), "--iters", str(args.iters),
                       "--model", os.path.join(tmp, "paper.npz"),
                       "--onnx", os.path.join(tmp, "paper.onnx")]
                out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
                times[w].append(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])
        ratios = [o / c for o, c in zip(times["ort"], times["cconv"])]
        results["batches"][str(batch)] = {
            "seconds": times, "ratio_ort_over_cconv": ratios,
            "median": statistics.median(ratios), "range": [min(ratios), max(ratios)]}
        print(f"batch {batch:2d}: ONNX Runtime / cconv time, median {statistics.median(ratios):.2f} "
              f"(range {min(ratios):.2f}-{max(ratios):.2f}, {args.rounds} rounds)")
    results["load_after"] = os.getloadavg()
    out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, time.strftime("onnx-%Y%m%d-%H%M%S.json"))
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
    print("log:", path)


if __name__ == "__main__":
    main()
