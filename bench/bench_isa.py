"""Benchmark: cconv against PyTorch on a machine without AVX-512 (simulated), interleaved.

Every library is capped at AVX2 in its own process:

* cconv: its vectorised kernels at simd_level 1 (AVX2 + FMA), and the OpenBLAS of
  numpy/scipy at its Haswell kernels (``OPENBLAS_CORETYPE=Haswell``);
* PyTorch: ``ATEN_CPU_CAPABILITY=avx2``, ``ONEDNN_MAX_CPU_ISA=AVX2`` (``DNNL_MAX_CPU_ISA``).

(cconv's plain C loops, compiled with ``target_clones``, are picked by the loader from the
CPU's features and keep their AVX-512 clone here: the simulation covers the explicitly
vectorised kernels and BLAS, not those loops.)

Each process measures the paper network (bench_train.py's) at ``--threads`` threads:

* ``epoch``: one warm-up batch, then one training epoch over 1,777 random 64x64x3 images,
  batch 128, Adam, seconds;
* ``b1``: inference on one image (``model.predict(x1)``; PyTorch: ``model(x)`` in
  ``inference_mode`` with the softmax), ms per call: the median of 7 batches of calls
  after 0.3 s of warm-up.

Contenders: cconv under ``--python`` (this tree's environment) and, if given, under
``--baseline-python`` (e.g. the code before a change), PyTorch NCHW and channels_last. A
round runs every contender once, in an order that rotates from round to round; ratios
are taken within a round, cconv over the faster PyTorch layout of that round, and the
report gives, over ``--rounds`` rounds (at least 5), the median and the range of every
figure and ratio. The raw numbers go to ``bench/results/isa-<isa>-<time>.json``.

Usage::

    python bench/bench_isa.py --baseline-python /work/venvs/baseline/bin/python --rounds 5
    python bench/bench_isa.py --isa native          # the same, nothing capped
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
N_CLASSES = 34

#: What caps every library at AVX2 (cconv's kernels are capped in the worker itself).
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
            "DNNL_MAX_CPU_ISA": "AVX2", "OPENBLAS_CORETYPE": "Haswell"}


# --------------------------------------------------------------------------------------
# workers
# --------------------------------------------------------------------------------------
def _data(n, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    return rng.random((n, 64, 64, 3), dtype=np.float32), rng.integers(0, N_CLASSES, n)


def _per_call_ms(fn, batches=7, warmup=0.3):
    """ms per call of fn: the median over `batches` batches of calls, after `warmup` s."""
    t0 = time.perf_counter()
    n = 0
    while n < 3 or time.perf_counter() - t0 < warmup:
        fn()
        n += 1
    calls = max(1, int(0.15 / ((time.perf_counter() - t0) / n)))
    per = []
    for _ in range(batches):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        per.append((time.perf_counter() - t) / calls * 1e3)
    return statistics.median(per)


def worker_cconv(args):
    import cconv
    from cconv import _core, optim
    from cconv.models import paper_lfw

    level = _core.simd_level(1 if args.isa == "avx2" else 2)
    cconv.set_num_threads(args.threads)
    model = paper_lfw(N_CLASSES, seed=0)
    model.compile(optim.Adam(lr=1e-3), "categorical_crossentropy")
    x, y = _data(args.images)
    model.train_on_batch(x[:args.batch], y[:args.batch])
    t = time.perf_counter()
    model.fit(x, y, epochs=1, batch_size=args.batch, verbose=0)
    epoch = time.perf_counter() - t
    x1 = x[:1].copy()
    b1 = _per_call_ms(lambda: model.predict(x1))
    return {"epoch": epoch, "b1": b1, "simd_level": level, "cconv": cconv.__file__}


def worker_torch(args, channels_last):
    import torch
    from bench_speed import torch_trainer  # the same network and step in every benchmark

    model, fmt, tensor, step = torch_trainer(args.threads, channels_last)

    x, y = _data(args.images)
    xt, yt = tensor(x), torch.from_numpy(y)
    step(xt[:args.batch].contiguous(memory_format=fmt), yt[:args.batch])
    t = time.perf_counter()
    model.train()
    perm = torch.randperm(len(yt))
    for lo in range(0, len(yt), args.batch):
        idx = perm[lo:lo + args.batch]
        float(step(xt[idx].contiguous(memory_format=fmt), yt[idx]))
    epoch = time.perf_counter() - t
    model.eval()
    x1 = x[:1].copy()

    def predict():
        with torch.inference_mode():
            return torch.softmax(model(tensor(x1)), 1).numpy()

    b1 = _per_call_ms(predict)
    return {"epoch": epoch, "b1": b1, "capability": torch.backends.cpu.get_cpu_capability()}


WORKERS = {"cconv": worker_cconv,
           "torch-nchw": lambda a: worker_torch(a, False),
           "torch-channels-last": lambda a: worker_torch(a, True)}


# --------------------------------------------------------------------------------------
# parent
# --------------------------------------------------------------------------------------
def run(python, worker, args):
    env = dict(os.environ)
    for k in list(env):
        if k.startswith(("OMP_", "GOMP_", "KMP_", "OPENBLAS_", "ATEN_", "ONEDNN_", "DNNL_")):
            del env[k]
    if args.isa == "avx2":
        env.update(AVX2_ENV)
    cmd = [python, os.path.abspath(__file__), "--worker", worker, "--isa", args.isa,
           "--threads", str(args.threads), "--images", str(args.images), "--batch", str(args.batch)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=HERE)
    if p.returncode:
        raise RuntimeError(f"{worker} under {python} failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def summary(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", default=sys.executable, help="interpreter of the cconv under test")
    ap.add_argument("--baseline-python", help="interpreter of the cconv to compare with (before)")
    ap.add_argument("--isa", choices=["avx2", "native"], default="avx2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--images", type=int, default=1777)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return 0
    if args.rounds < 5:
        print("note: fewer than 5 rounds; the targets are judged on at least 5", file=sys.stderr)

    contenders = [("after", args.python, "cconv")]
    if args.baseline_python:
        contenders.append(("before", args.baseline_python, "cconv"))
    contenders += [("torch-nchw", sys.executable, "torch-nchw"),
                   ("torch-channels-last", sys.executable, "torch-channels-last")]
    rounds, loads = [], [os.getloadavg()[0]]
    for r in range(args.rounds):
        k = r % len(contenders)
        res = {}
        for name, python, worker in contenders[k:] + contenders[:k]:
            res[name] = run(python, worker, args)
            print(f"round {r + 1}: {name:<20} epoch {res[name]['epoch']:6.2f} s   "
                  f"batch-1 {res[name]['b1']:6.2f} ms", flush=True)
        rounds.append(res)
        loads.append(os.getloadavg()[0])

    report = {"isa": args.isa, "threads": args.threads, "rounds": rounds,
              "load_1min": loads,       # the machine's load average before/after each round
              "machine": platform.machine(), "python": platform.python_version(),
              "contenders": {n: p for n, p, _ in contenders}, "figures": {}, "ratios": {}}
    for name, _, _ in contenders:
        for fig in ("epoch", "b1"):
            report["figures"][f"{name} {fig}"] = summary([r[name][fig] for r in rounds])
    print(f"\n{args.rounds} rounds, {args.threads} threads, isa {args.isa}, load average "
          f"{min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} CPUs: median [min, max]")
    for name, _, _ in contenders:
        if name.startswith("torch"):
            continue
        for fig in ("epoch", "b1"):
            vals = [r[name][fig] / min(r["torch-nchw"][fig], r["torch-channels-last"][fig])
                    for r in rounds]
            s = report["ratios"][f"{name} {fig}"] = summary(vals)
            print(f"  cconv ({name}) {fig:>5} / PyTorch's faster layout: {s['median']:.2f}x "
                  f"[{s['min']:.2f}, {s['max']:.2f}]")
    for key, s in report["figures"].items():
        print(f"  {key:<28} {s['median']:8.3f} [{s['min']:.3f}, {s['max']:.3f}]")
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    path = os.path.join(HERE, "results", f"isa-{args.isa}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    print(f"log: {os.path.relpath(path, os.path.dirname(HERE))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
