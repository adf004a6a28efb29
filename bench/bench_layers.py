"""Benchmark: forward + backward of the issue-13 layers, cconv vs PyTorch (CPU).

Layers (batch 32, float32), each as a decoder or a mobile network would use it:

* ``tconv_s2``: Conv2DTranspose 3x3, stride 2, "same", 64 -> 32 channels, 16x16 -> 32x32
  (cconv's x W^T + col2im route; PyTorch: padding 1, output_padding 1);
* ``tconv_s1``: Conv2DTranspose 3x3, stride 1, padding 1, 32 -> 32 channels at 32x32
  (cconv: a convolution with the rotated kernel, the Winograd route);
* ``upsample_bilinear``: UpSampling2D(2, "bilinear"), 32 channels, 32x32 -> 64x64;
* ``depthwise``: DepthwiseConv2D 3x3, "same", 64 channels at 32x32 (cconv: groups = 64).

Each library runs in its own process at the same thread count (bench/harness.py: runs in a
rotating order, the median and range over the runs, per-run ratios, a JSON log under
bench/results/ that bench/make_tables.py turns into the README's table); a run times every
layer as the median of ``--calls`` forward+backward calls after warm-up calls.

Usage::

    python bench/bench_layers.py --runs 5 --threads 2
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Library, Target  # noqa: E402

LAYERS = ["tconv_s2", "tconv_s1", "upsample_bilinear", "depthwise"]
BATCH = 32


def _median_time(fn, calls):
    """The median of `calls` back-to-back timed calls, after 3 untimed ones."""
    return harness.time_call(fn, calls, burst=0, warmup=3)[0]


def worker_cconv(args):
    import numpy as np

    import cconv
    from cconv import layers as L
    cconv.set_num_threads(args["threads"])
    harness.cap_cconv_isa(args)
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

        out[name] = _median_time(step, args["calls"])
    out["info"] = {"threads": cconv.get_num_threads()}
    return out


def worker_torch(args):
    import torch
    torch.set_num_threads(args["threads"])
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

        out[name] = _median_time(step, args["calls"])
    out["info"] = {"threads": torch.get_num_threads()}
    return out


WORKERS = {"cconv": worker_cconv, "torch": worker_torch}

TARGET = Target(
    name="bench_layers",
    description="forward+backward of the newer layers, batch 32, float32: cconv vs PyTorch, "
                "each in its own process",
    libraries=[Library("cconv"), Library("torch", "PyTorch")],
    rows=[("Conv2DTranspose 3x3, stride 2, 64 -> 32 channels, 16x16 -> 32x32", "tconv_s2"),
          ("Conv2DTranspose 3x3, stride 1, 32 -> 32 channels, 32x32", "tconv_s1"),
          ("UpSampling2D(2, bilinear), 32 channels, 32x32 -> 64x64", "upsample_bilinear"),
          ("DepthwiseConv2D 3x3, same, 64 channels, 32x32", "depthwise")],
    units=dict.fromkeys(LAYERS, "s"),
)


def options(p):
    p.add_argument("--calls", type=int, default=20, help="timed calls per layer and run")


if __name__ == "__main__":
    sys.exit(harness.run(TARGET, WORKERS, __file__, options))
