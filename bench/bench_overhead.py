#!/usr/bin/env python
"""Per-call overhead of a tiny convolution and max pool: cconv against torch.nn.functional.

Issue 15 asks that calling cconv from Python cost at most what calling PyTorch costs. On a
batch of one 8x8 image with 4 channels the kernels take well under a microsecond, so the
time of a call is its overhead: argument checks, dispatch, allocation, entering the
kernel. Measured:

* ``conv``: a 3x3 convolution with bias, padding 1, 4 -> 8 channels (cconv NHWC/HWIO,
  PyTorch NCHW/OIHW, ``torch.no_grad()``);
* ``conv_out``: cconv's call with ``out=`` and ``workspace=``, as a loop that allocates
  nothing would make it, against PyTorch's plain call (the same figure as ``conv``);
* ``pool``: 2x2 max pooling; cconv always returns the winners' indices as well, so the
  PyTorch figure is ``return_indices=True``;
* ``pool_out``: cconv's call with ``out=``, against PyTorch's ``pool``.

Each library runs in its own process (bench/harness.py: runs in a rotating order, the
median and range over the runs, per-run ratios, a JSON log under bench/results/ that
bench/make_tables.py turns into the README's table). In a process: 0.2 s of warm-up calls,
then ``--repeats`` batches of ``--calls`` calls, and the time per call of the fastest batch
(the one the rest of the shared machine disturbed least: a call's own cost).

Usage::

    python bench/bench_overhead.py --runs 7 --threads 1
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Library, Target  # noqa: E402

SHAPE = (1, 8, 8, 4)            # N, H, W, C
COUT = 8


def _per_call(fn, args):
    """Seconds per call: the fastest of --repeats batches of --calls calls, after a warm-up."""
    return harness.per_call(fn, args["repeats"], calls=args["calls"])


def worker_cconv(args):
    import numpy as np

    import cconv
    from cconv import functional as F

    cconv.set_num_threads(args["threads"])
    harness.cap_cconv_isa(args)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(SHAPE, dtype=np.float32)
    w = rng.standard_normal((3, 3, SHAPE[3], COUT), dtype=np.float32)
    b = rng.standard_normal(COUT, dtype=np.float32)
    y = np.empty(SHAPE[:3] + (COUT,), np.float32)
    ws = cconv.Workspace()
    p, a = F.max_pool2d(x, 2)
    calls = {
        "conv": lambda: F.conv2d(x, w, b, padding=1),
        "conv_out": lambda: F.conv2d(x, w, b, padding=1, out=y, workspace=ws),
        "pool": lambda: F.max_pool2d(x, 2),
        "pool_out": lambda: F.max_pool2d(x, 2, out=(p, a)),
    }
    out = {k: _per_call(f, args) for k, f in calls.items()}
    out["info"] = {"threads": cconv.get_num_threads()}
    return out


def worker_torch(args):
    import torch
    import torch.nn.functional as TF

    torch.set_num_threads(args["threads"])
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPE[0], SHAPE[3], SHAPE[1], SHAPE[2], generator=gen)
    w = torch.randn(COUT, SHAPE[3], 3, 3, generator=gen)
    b = torch.randn(COUT, generator=gen)
    with torch.no_grad():
        conv = _per_call(lambda: TF.conv2d(x, w, b, padding=1), args)
        pool = _per_call(lambda: TF.max_pool2d(x, 2, return_indices=True), args)
    # PyTorch has no out= for these calls: cconv's out= figures are compared with its plain ones.
    return {"conv": conv, "conv_out": conv, "pool": pool, "pool_out": pool,
            "info": {"threads": torch.get_num_threads()}}


WORKERS = {"cconv": worker_cconv, "torch": worker_torch}

TARGET = Target(
    name="bench_overhead",
    description="per-call overhead: one 8x8 image with 4 channels, 3x3 convolution to 8 "
                "channels with bias and padding 1, 2x2 max pool with indices; cconv vs "
                "torch.nn.functional (no_grad, NCHW), each in its own process",
    libraries=[Library("cconv"), Library("torch", "PyTorch")],
    rows=[("`conv2d`", "conv"),
          ("`conv2d(..., out=, workspace=)` (PyTorch: plain call)", "conv_out"),
          ("`max_pool2d`", "pool"),
          ("`max_pool2d(..., out=)` (PyTorch: plain call)", "pool_out")],
    units={"conv": "s", "conv_out": "s", "pool": "s", "pool_out": "s"},
)


def options(p):
    p.add_argument("--calls", type=int, default=500, help="calls per timed batch")
    p.add_argument("--repeats", type=int, default=11, help="timed batches per process")


if __name__ == "__main__":
    sys.exit(harness.run(TARGET, WORKERS, __file__, options))
