"""Benchmark: forward + backward of the issue-13 layers, cconv vs PyTorch (CPU).

Layers (batch 32, float32), each as a decoder or a mobile network would use it:

* ``tconv_s2``: Conv2DTranspose 3x3, stride 2, "same", 64 -> 32 channels, 16x16 -> 32x32
  (cconv's x W^T + col2im route; PyTorch: padding 1, output_padding 1);
* ``tconv_s1``: Conv2DTranspose 3x3, stride 1, padding 1, 32 -> 32 channels at 32x32
  (cconv: a convolution with the rotated kernel, the Winograd route);
* ``upsample_bilinear``: UpSampling2D(2, "bilinear"), 32 channels, 32x32 -> 64x64;
* ``depthwise``: DepthwiseConv2D 3x3, "same", 64 channels at 32x32 (cconv: groups = 64).

Each library runs in its own subprocess at the same thread count; a run times every layer
(the median of ``--calls`` forward+backward calls after warm-up calls) in both libraries, and
``--runs`` runs alternate the two libraries. The parent reports per layer the median and the
range over the runs of the ratio cconv / PyTorch, and writes everything to
``bench/results/bench_layers-<time>.json``.

Usage::

    python bench/bench_layers.py --runs 5 --threads 2
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

LAYERS = ["tconv_s2", "tconv_s1", "upsample_bilinear", "depthwise"]
BATCH = 32


def _median_time(fn, calls, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def worker_cconv(args):
    import cconv
    from cconv import layers as L
    cconv.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    specs = {
        "tconv_s2": (L.Conv2DTranspose(32, 3, stride=2, padding="same"), (16, 16, 64)),
        "tconv_s1": (L.Conv2DTranspose(32, 3, padding=1), (32, 32, 32)),
        "upsample_bilinear": (L.UpSampling2D(2, interpolation="bilinear"), (32, 32, 32)),
        "depthwise": (L.DepthwiseConv2D(3, padding="same"), (32, 32, 64)),
    }
    out = {}
    for name in LAYERS:
        layer, shape = specs[name]
        layer.build(shape, rng, np.float32)
        x = rng.standard_normal((BATCH,) + shape, dtype=np.float32)
        dy = rng.standard_normal((BATCH,) + layer.output_shape(shape), dtype=np.float32)

        def step(layer=layer, x=x, dy=dy):
            layer.forward(x, training=True)
            layer.backward(dy)

        out[name] = _median_time(step, args.calls)
    return {"times": out, "threads": cconv.get_num_threads()}


def worker_torch(args):
    import torch
    torch.set_num_threads(args.threads)
    nn = torch.nn
    specs = {
        "tconv_s2": (nn.ConvTranspose2d(64, 32, 3, stride=2, padding=1, output_padding=1),
                     (64, 16, 16)),
        "tconv_s1": (nn.ConvTranspose2d(32, 32, 3, padding=1), (32, 32, 32)),
        "upsample_bilinear": (nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                              (32, 32, 32)),
        "depthwise": (nn.Conv2d(64, 64, 3, padding=1, groups=64), (64, 32, 32)),
    }
    out = {}
    for name in LAYERS:
        layer, shape = specs[name]
        x = torch.randn((BATCH,) + shape, requires_grad=True)
        dy = torch.randn(layer(x).shape)

        def step(layer=layer, x=x, dy=dy):
            x.grad = None
            layer.zero_grad(set_to_none=True)
            layer(x).backward(dy)

        out[name] = _median_time(step, args.calls)
    return {"times": out, "threads": torch.get_num_threads(), "torch": torch.__version__}


WORKERS = {"cconv": worker_cconv, "torch": worker_torch}


def run_worker(name, args):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--threads",
           str(args.threads), "--calls", str(args.calls)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} worker failed: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--calls", type=int, default=20, help="timed calls per layer and run")
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return 0
    runs = []
    for i in range(args.runs):
        order = ["cconv", "torch"] if i % 2 == 0 else ["torch", "cconv"]
        runs.append({name: run_worker(name, args) for name in order})
    print(f"forward+backward, batch {BATCH}, float32, {args.threads} thread(s), {args.runs} runs "
          f"of the median of {args.calls} calls; {platform.machine()} {platform.python_version()}")
    summary = {}
    for name in LAYERS:
        ratios = [r["cconv"]["times"][name] / r["torch"]["times"][name] for r in runs]
        c = np.median([r["cconv"]["times"][name] for r in runs]) * 1e3
        t = np.median([r["torch"]["times"][name] for r in runs]) * 1e3
        summary[name] = {"ratio_median": float(np.median(ratios)), "ratio_min": min(ratios),
                         "ratio_max": max(ratios), "cconv_ms": c, "torch_ms": t}
        print(f"  {name:<18} cconv {c:7.2f} ms  torch {t:7.2f} ms  cconv/torch "
              f"{np.median(ratios):.2f}x (range {min(ratios):.2f}-{max(ratios):.2f})")
    os.makedirs(os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"), exist_ok=True)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                        f"bench_layers-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(path, "w") as f:
        json.dump({"args": vars(args), "summary": summary, "runs": runs,
                   "machine": platform.machine(), "python": platform.python_version()}, f,
                  indent=1)
    print(f"log: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
