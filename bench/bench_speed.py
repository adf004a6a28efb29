#!/usr/bin/env python
"""Issue 19's targets on the paper network: cconv against PyTorch (NCHW and channels_last)
and Keras 3 on TensorFlow CPU.

The network of the LFW paper (64x64x3 input; conv 3x3 32 -> ReLU -> maxpool 2; conv 3x3 64
-> ReLU -> maxpool 2; conv 3x3 128 -> ReLU -> maxpool 2; flatten; Dense 128 ReLU; Dense 256
ReLU; Dropout 0.5; Dense 34 softmax; cross-entropy; Adam 1e-3; batch 128; 1,777 random
images). Measured, per library:

* ``latency``: inference on one image (batch 1), ms per call: the fastest of ``--repeats``
  batches of calls after a warm-up (the batch the shared machine disturbed least);
* ``throughput``: inference on a batch of 256 images, ms per batch, measured the same way;
* ``epoch``: one training epoch (after one warm-up step), seconds, at ``--threads`` threads;
* ``memory``: what training adds, MB: the process's peak RSS minus its RSS after imports,
  data and the model (same process as ``epoch``);
* ``epoch_1t`` and ``scaling``: the epoch at one thread, and epoch_1t / epoch.

Each library runs in its own process (one for inference, one per training thread count),
started afresh for every run, with every thread pool (OpenMP, BLAS, TensorFlow's intra-op
pool) set to the thread count; the order of the libraries rotates from run to run. Keras
runs in another interpreter (``--tf-python``, default /work/venv-tf/bin/python), cconv and
PyTorch in this one. ``--baseline PYTHON`` adds ``cconv-baseline``: the same cconv workers
run by another interpreter (e.g. the venv of the session's starting code) for before/after
figures taken under the same load.

Over the ``--runs`` runs (at least 5) it prints the median and the range of every figure
and of cconv's ratio to the fastest other library, computed within each run (a slow spell
of the shared machine that spans a run's processes mostly cancels out), and writes it all to
``bench/results/speed-<date>.json``.

(A simple harness of its own: the shared one of bench/harness.py had not landed when this
was written.)

Usage::

    python bench/bench_speed.py                          # 5 runs, 2 threads, every library
    python bench/bench_speed.py --only cconv --only torch-channels-last --what latency
"""
import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MARK = "@@speed "
N_CLASSES = 34
TORCH = ("torch-nchw", "torch-channels-last")
LIBS = ("cconv",) + TORCH + ("keras",)
#: what each worker measures (a training worker runs at one thread count)
FIGURES = {"infer": ("latency", "throughput"), "train": ("epoch", "memory")}
LOWER_IS_BETTER = ("latency", "throughput", "epoch", "epoch_1t", "memory")


# --------------------------------------------------------------------------------------
# in the worker
# --------------------------------------------------------------------------------------
def _rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024      # KB on Linux


def _data(n, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    return rng.random((n, 64, 64, 3), dtype=np.float32), rng.integers(0, N_CLASSES, n)


def _per_call(fn, seconds, repeats):
    """Seconds per call of ``fn``: warm-up, then the fastest of ``repeats`` batches of calls,
    each batch about ``seconds / repeats`` long."""
    t0 = time.perf_counter()
    n = 0
    while n < 3 or time.perf_counter() - t0 < 0.2:
        fn()
        n += 1
    calls = max(1, int(seconds / repeats / ((time.perf_counter() - t0) / n)))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t) / calls)
    return best


def _measure(task, args, predict, step, epoch):
    """The figures of one worker process. ``predict(x)`` is the inference call, ``step(xb,
    yb)`` one training step (warm-up), ``epoch(x, y)`` one training epoch."""
    x, y = _data(args.images)
    if task == "infer":
        x1, x256 = x[:1].copy(), x[:256].copy()
        return {"latency": 1e3 * _per_call(lambda: predict(x1), args.seconds, args.repeats),
                "throughput": 1e3 * _per_call(lambda: predict(x256), 4 * args.seconds, args.repeats)}
    base = _rss_mb()
    step(x[:args.batch], y[:args.batch])
    t = time.perf_counter()
    loss = epoch(x, y)
    return {"epoch": time.perf_counter() - t, "memory": _peak_mb() - base, "loss": float(loss),
            "base_mb": base}


def cconv_model():
    """The paper network in cconv (bench_train.py builds it here too)."""
    import cconv
    from cconv.layers import Conv2D, Dense, Dropout, Flatten, MaxPool2D
    return cconv.Sequential([
        Conv2D(32, 3, activation="relu"), MaxPool2D(2),
        Conv2D(64, 3, activation="relu"), MaxPool2D(2),
        Conv2D(128, 3, activation="relu"), MaxPool2D(2),
        Flatten(),
        Dense(128, activation="relu"), Dense(256, activation="relu"), Dropout(0.5),
        Dense(N_CLASSES, activation="softmax"),
    ], input_shape=(64, 64, 3), seed=0)


def torch_model():
    """The paper network in PyTorch, NCHW (bench_train.py and bench_isa.py build it here too)."""
    from torch import nn
    return nn.Sequential(
        nn.Conv2d(3, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(6 * 6 * 128, 128), nn.ReLU(), nn.Linear(128, 256), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(256, N_CLASSES),
    )


def worker_cconv(task, args):
    import cconv
    from cconv import optim

    cconv.set_num_threads(args.threads)
    model = cconv_model()
    model.compile(optim.Adam(lr=1e-3), "categorical_crossentropy")   # integer labels accepted

    def epoch(x, y):
        return model.fit(x, y, epochs=1, batch_size=args.batch, verbose=0).history["loss"][-1]

    figs = _measure(task, args, lambda xb: model.predict(xb, batch_size=256),
                    model.train_on_batch, epoch)
    return figs, {"cconv": cconv.__version__, "file": cconv.__file__, "threads": cconv.get_num_threads()}


def torch_trainer(threads, channels_last):
    """The PyTorch paper network on ``threads`` threads in the chosen memory format, Adam 1e-3:
    ``(model, fmt, tensor, step)``; ``tensor`` turns an NHWC array into an NCHW tensor in that
    format, ``step(xb, yb)`` trains one batch and returns its loss."""
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = torch_model().to(memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()

    def tensor(xb):           # NHWC numpy -> NCHW tensor in the chosen memory format
        return torch.from_numpy(xb).permute(0, 3, 1, 2).contiguous(memory_format=fmt)

    def step(xb, yb):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
        return loss.detach()

    return model, fmt, tensor, step


def worker_torch(task, args, channels_last):
    import torch

    model, fmt, tensor, step = torch_trainer(args.threads, channels_last)

    def predict(xb):
        with torch.inference_mode():
            return torch.softmax(model(tensor(xb)), 1).numpy()

    def epoch(x, y):
        model.train()
        xt, yt = tensor(x), torch.from_numpy(y)
        perm = torch.randperm(len(yt))
        total = 0.0
        for lo in range(0, len(yt), args.batch):
            idx = perm[lo:lo + args.batch]
            total += float(step(xt[idx].contiguous(memory_format=fmt), yt[idx])) * len(idx)
        return total / len(yt)

    if task == "infer":
        model.eval()
    figs = _measure(task, args, predict, lambda xb, yb: step(tensor(xb), torch.from_numpy(yb)), epoch)
    return figs, {"torch": torch.__version__, "threads": torch.get_num_threads()}


def worker_keras(task, args):
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((64, 64, 3)),
        layers.Conv2D(32, 3, activation="relu"), layers.MaxPooling2D(2),
        layers.Conv2D(64, 3, activation="relu"), layers.MaxPooling2D(2),
        layers.Conv2D(128, 3, activation="relu"), layers.MaxPooling2D(2),
        layers.Flatten(),
        layers.Dense(128, activation="relu"), layers.Dense(256, activation="relu"), layers.Dropout(0.5),
        layers.Dense(N_CLASSES, activation="softmax"),
    ])
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")

    def epoch(x, y):
        return model.fit(x, y, epochs=1, batch_size=args.batch, verbose=0).history["loss"][-1]

    def step(xb, yb):        # compiles fit's train function
        model.fit(xb, yb, epochs=1, batch_size=args.batch, verbose=0)

    # predict_on_batch: the compiled graph without predict()'s per-call data adapter (the
    # fastest of Keras's inference calls at batch 1)
    figs = _measure(task, args, model.predict_on_batch, step, epoch)
    return figs, {"keras": keras.__version__, "tensorflow": tf.__version__,
                  "threads": tf.config.threading.get_intra_op_parallelism_threads()}


WORKERS = {
    "cconv": worker_cconv,
    "cconv-baseline": worker_cconv,
    "torch-nchw": lambda task, a: worker_torch(task, a, channels_last=False),
    "torch-channels-last": lambda task, a: worker_torch(task, a, channels_last=True),
    "keras": worker_keras,
}


# --------------------------------------------------------------------------------------
# in the parent
# --------------------------------------------------------------------------------------
def run_worker(lib, task, threads, args):
    python = {"keras": args.tf_python, "cconv-baseline": args.baseline}.get(lib, sys.executable)
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
        env[k] = str(threads)
    env["TF_NUM_INTEROP_THREADS"] = "1"
    if python != sys.executable:        # another interpreter: its own packages only
        env.pop("PYTHONPATH", None)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    cmd = [python, os.path.abspath(__file__), "--worker", lib, "--task", task, "--threads", str(threads),
           "--images", str(args.images), "--batch", str(args.batch), "--seconds", str(args.seconds),
           "--repeats", str(args.repeats)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{lib} {task} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(MARK):])


def summary(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def one_run(r, libs, whats, args):
    order = libs[r % len(libs):] + libs[:r % len(libs)]
    load_before = os.getloadavg()[0]          # the shared machine's 1-minute load average
    figs = {lib: {} for lib in libs}
    info = {}
    for lib in order:
        jobs = []
        if "latency" in whats or "throughput" in whats:
            jobs.append(("infer", args.threads, None))
        if "epoch" in whats or "memory" in whats:
            jobs.append(("train", args.threads, None))
        if "scaling" in whats:
            jobs.append(("train", 1, "_1t"))
        for task, threads, suffix in jobs:
            time.sleep(0.3)                 # the previous process's threads are gone
            out = run_worker(lib, task, threads, args)
            info[lib] = out["info"]
            for k, v in out["figures"].items():
                figs[lib][k + (suffix or "")] = v
        if "epoch" in figs[lib] and "epoch_1t" in figs[lib]:
            figs[lib]["scaling"] = figs[lib]["epoch_1t"] / figs[lib]["epoch"]
    ratios = {}
    for lib in [n for n in libs if n.startswith("cconv")]:
        others = [n for n in libs if not n.startswith("cconv")]
        for k in figs[lib]:
            if k in LOWER_IS_BETTER and others and all(k in figs[o] for o in others):
                ratios.setdefault(lib, {})[k] = figs[lib][k] / min(figs[o][k] for o in others)
    return {"order": order, "figures": figs, "ratios": ratios, "info": info,
            "load_before": load_before, "load_after": os.getloadavg()[0]}


UNITS = {"latency": "ms", "throughput": "ms/batch", "epoch": "s", "epoch_1t": "s", "memory": "MB",
         "scaling": "x", "loss": "", "loss_1t": "", "base_mb": "MB", "base_mb_1t": "MB", "memory_1t": "MB"}
SHOWN = ("latency", "throughput", "epoch", "memory", "epoch_1t", "scaling")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--images", type=int, default=1777)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seconds", type=float, default=1.5, help="timed seconds per inference figure")
    ap.add_argument("--repeats", type=int, default=7, help="timed batches per inference figure")
    ap.add_argument("--only", choices=LIBS, action="append", help="run only these libraries")
    ap.add_argument("--what", choices=("latency", "throughput", "epoch", "memory", "scaling"),
                    action="append", help="measure only these (default: all)")
    ap.add_argument("--tf-python", default="/work/venv-tf/bin/python")
    ap.add_argument("--baseline", metavar="PYTHON", help="also run cconv-baseline with this interpreter")
    ap.add_argument("--tag", default="", help="added to the log's file name")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--task", choices=sorted(FIGURES), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        figures, info = WORKERS[args.worker](args.task, args)
        print(MARK + json.dumps({"figures": figures, "info": info}))
        return
    if args.runs < 5:
        ap.error("--runs must be at least 5 (the figures are the median and range over runs)")
    libs = list(args.only or LIBS)
    if args.baseline:
        libs.insert(1, "cconv-baseline")
    whats = args.what or ["latency", "throughput", "epoch", "memory", "scaling"]
    print(f"paper network, {args.images} random 64x64x3 images, batch {args.batch}, {args.threads} threads, "
          f"{args.runs} runs; {platform.machine()} {platform.python_version()}", flush=True)
    runs = []
    for r in range(args.runs):
        run = one_run(r, libs, whats, args)
        runs.append(run)
        line = "; ".join(f"{lib} " + " ".join(f"{k} {v:.2f}x" for k, v in rs.items())
                         for lib, rs in run["ratios"].items())
        print(f"run {r + 1}/{args.runs} ({', '.join(run['order'])}): {line}", flush=True)
    report = {"figures": {}, "ratios": {}}
    for lib in libs:
        keys = runs[0]["figures"][lib]
        report["figures"][lib] = {k: summary([run["figures"][lib][k] for run in runs]) for k in keys}
    for lib in runs[0]["ratios"]:
        report["ratios"][lib] = {k: summary([run["ratios"][lib][k] for run in runs])
                                 for k in runs[0]["ratios"][lib]}
    print(f"\nmedian [min, max] over {args.runs} runs, {args.threads} threads (scaling: epoch at 1 thread / "
          f"epoch at {args.threads}):")
    for k in SHOWN:
        if k not in report["figures"][libs[0]]:
            continue
        cells = [f"{lib} {report['figures'][lib][k]['median']:.3g} [{report['figures'][lib][k]['min']:.3g}, "
                 f"{report['figures'][lib][k]['max']:.3g}]" for lib in libs]
        print(f"  {k} ({UNITS[k]}): " + "  ".join(cells))
    print("cconv / the fastest other library (per run):")
    for lib, rs in report["ratios"].items():
        print(f"  {lib}: " + "  ".join(f"{k} {s['median']:.2f}x [{s['min']:.2f}, {s['max']:.2f}]"
                                       for k, s in rs.items()))
    commit = subprocess.run(["git", "-C", HERE, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    log = {"benchmark": "speed", "date": datetime.datetime.now().isoformat(timespec="seconds"),
           "commit": commit, "machine": platform.platform(), "cpus": os.cpu_count(),
           "python": platform.python_version(), "settings": vars(args), "summary": report, "runs": runs}
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    name = f"speed{'-' + args.tag if args.tag else ''}-{log['date'].replace(':', '')}.json"
    path = os.path.join(HERE, "results", name)
    with open(path, "w") as f:
        json.dump(log, f, indent=1)
    print(f"log: {os.path.relpath(path)}")


if __name__ == "__main__":
    main()
