"""Benchmark: one training epoch of the paper network, cconv vs PyTorch (CPU), in one run.

The network of the LFW paper (64x64x3 input; conv 3x3 32 -> ReLU -> maxpool 2; conv 3x3 64
-> ReLU -> maxpool 2; conv 3x3 128 -> ReLU -> maxpool 2; flatten; Dense 128 ReLU; Dense 256
ReLU; Dropout 0.5; Dense 34; softmax cross-entropy; Adam 1e-3; batch 128) is trained for one
epoch over 1,777 random images by

* cconv (NHWC),
* PyTorch with NCHW tensors,
* PyTorch with ``channels_last`` tensors,

each in its own subprocess (so every framework's peak RSS, ``ru_maxrss``, is its own) and at
the same thread count. Every worker first runs one warm-up batch, then times ``--repeat``
epochs and reports the fastest. The parent prints the times, the ratios to PyTorch's faster
layout and the memory figures.

Usage::

    python bench/bench_train.py                 # all cores
    python bench/bench_train.py --threads 1 --repeat 3
"""
import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

N_CLASSES = 34


def _rss_mb():
    """Current resident set size in MB (Linux /proc; falls back to ru_maxrss)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return _peak_mb()


def _peak_mb():
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024   # bytes on macOS, KB on Linux


def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 64, 64, 3), dtype=np.float32)
    y = rng.integers(0, N_CLASSES, n)
    return x, y


def _blas_info():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [f"{d.get('internal_api')}:{d.get('num_threads')}" for d in threadpool_info()]


# --------------------------------------------------------------------------------------
# workers
# --------------------------------------------------------------------------------------
def worker_cconv(args):
    import cconv
    from cconv import optim
    from bench_speed import cconv_model as paper_model     # the same network in both

    cconv.set_num_threads(args.threads)
    # cconv.set_num_threads budgets the compiled kernels; numpy's BLAS (the Dense layers)
    # is capped here too so that both frameworks use the same number of threads
    # everywhere, as torch.set_num_threads does for PyTorch.
    try:
        from threadpoolctl import threadpool_limits
        limiter = threadpool_limits(limits=args.threads, user_api="blas")
    except ImportError:
        limiter = None
    x, y = _data(args.images)
    model = paper_model()
    model.compile(optim.Adam(lr=1e-3), "categorical_crossentropy")
    base = _rss_mb()
    model.train_on_batch(x[:args.batch], y[:args.batch])            # warm-up
    times, losses = [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        h = model.fit(x, y, epochs=1, batch_size=args.batch, verbose=0)
        times.append(time.perf_counter() - t0)
        losses.append(h.history["loss"][-1])
    pools = _blas_info()
    if limiter is not None:
        limiter.restore_original_limits()
    return {"time": min(times), "times": times, "loss": losses[-1], "base_mb": base,
            "threads": cconv.get_num_threads(), "pools": pools}


def worker_torch(args, channels_last):
    import torch
    from torch import nn

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x_np, y_np = _data(args.images)
    x = torch.from_numpy(np.ascontiguousarray(x_np.transpose(0, 3, 1, 2)))    # NCHW
    del x_np
    y = torch.from_numpy(y_np)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(6 * 6 * 128, 128), nn.ReLU(), nn.Linear(128, 256), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(256, N_CLASSES),
    )
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    n = x.shape[0]

    def step(xb, yb):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
        return loss.detach()

    def epoch():
        model.train()
        perm = torch.randperm(n)
        total = 0.0
        for lo in range(0, n, args.batch):
            idx = perm[lo:lo + args.batch]
            xb = x[idx]
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            total += float(step(xb, y[idx])) * len(idx)
        return total / n

    base = _rss_mb()
    step(x[:args.batch], y[:args.batch])                              # warm-up
    times, losses = [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        losses.append(epoch())
        times.append(time.perf_counter() - t0)
    return {"time": min(times), "times": times, "loss": losses[-1], "base_mb": base,
            "threads": torch.get_num_threads(), "torch": torch.__version__, "pools": _blas_info()}


WORKERS = {
    "cconv": worker_cconv,
    "torch-nchw": lambda a: worker_torch(a, channels_last=False),
    "torch-channels-last": lambda a: worker_torch(a, channels_last=True),
}


# --------------------------------------------------------------------------------------
# parent
# --------------------------------------------------------------------------------------
def run_worker(name, args):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--threads", str(args.threads),
           "--images", str(args.images), "--batch", str(args.batch), "--repeat", str(args.repeat)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None, help="threads for every framework (default: all cores)")
    p.add_argument("--images", type=int, default=1777)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeat", type=int, default=1, help="epochs timed per framework (the fastest counts)")
    p.add_argument("--only", choices=sorted(WORKERS), action="append", help="run only these frameworks")
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads is None:
        try:
            args.threads = len(os.sched_getaffinity(0))
        except AttributeError:
            args.threads = os.cpu_count() or 1

    if args.worker:
        result = WORKERS[args.worker](args)
        result["peak_mb"] = _peak_mb()
        print(json.dumps(result))
        return 0

    names = args.only or list(WORKERS)
    print(f"paper network, one epoch of {args.images} random 64x64x3 images, batch {args.batch}, "
          f"{args.threads} thread(s), best of {args.repeat}; {platform.machine()} {platform.python_version()}")
    results = {}
    for name in names:
        results[name] = r = run_worker(name, args)
        if "error" in r:
            print(f"  {name:<20} failed: {r['error']}")
        else:
            print(f"  {name:<20} {r['time']:7.2f} s  {r['threads']} thr  peak RSS {r['peak_mb']:7.0f} MB "
                  f"(after imports+data {r['base_mb']:6.0f} MB, training adds {r['peak_mb'] - r['base_mb']:6.0f} MB)"
                  f"  loss {r['loss']:.3f}  pools {' '.join(r.get('pools', []))}")
    torch_ok = [n for n in ("torch-nchw", "torch-channels-last") if n in results and "error" not in results[n]]
    if "cconv" in results and "error" not in results["cconv"] and torch_ok:
        best = min(torch_ok, key=lambda n: results[n]["time"])
        c, t = results["cconv"], results[best]
        print(f"time ratio cconv / {best} (PyTorch's faster layout): {c['time'] / t['time']:.2f}x  (target <= 1.0)")
        for n in torch_ok:
            print(f"  cconv / {n}: {c['time'] / results[n]['time']:.2f}x time, "
                  f"{c['peak_mb'] / results[n]['peak_mb']:.2f}x peak RSS, "
                  f"{(c['peak_mb'] - c['base_mb']) / max(results[n]['peak_mb'] - results[n]['base_mb'], 1):.2f}x "
                  "training memory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
