#!/usr/bin/env python
"""Benchmark of cconv's compiled core (issue 2): the paper network's conv and pool layers.

At batch 128 and one thread count for everybody, times the three 3x3 stride-1 unpadded conv
layers (64x64x3 -> 32, 31x31x32 -> 64, 14x14x64 -> 128) and their 2x2 max-pools, forward
and forward+backward, for

* cconv (NHWC),
* PyTorch CPU in NCHW and in channels_last,
* plain NumPy: im2col with ``sliding_window_view`` + ``matmul``,

each library in its own process (bench/harness.py: interleaved runs in a rotating order, a
JSON log under bench/results/). Within a process each operation is timed ``--repeats``
times, each time right after 0.1 s of untimed calls (the steady state of a training loop);
the run's figure is the median of those. The first layer's backward skips dx
(``need_dx=False``; torch: the input needs no grad), as in training.

The cconv process also measures

* the share of the machine's sgemm speed that the conv forward of each layer reaches:
  the multiplications cconv actually does (Winograd does 16 per 2x2 output tile and
  input-output channel pair, 2.25x fewer than the 36 of im2col + GEMM or the direct
  convolution; the route taken is read from cconv's kernel record) over the forward's
  time, against numpy's float32 matmul of the layer's im2col GEMM shape (N*OH*OW, K) x
  (K, C_out) on the same threads;
* the 2-thread / 1-thread speed-up of the three conv layers' forward+backward: the median
  of the per-repeat ratios (1 and 2 threads alternate, so each ratio compares two calls a
  fraction of a second apart).

Targets (issue 2): conv fwd+bwd summed over the three layers <= 1.0x the fastest other
library; max-pool fwd+bwd <= 0.4x; conv forward of layers 2 and 3 >= 60% of sgemm;
2 threads >= 1.7x faster than 1.

    python bench/bench_core.py                    # 5 runs, 2 threads: the README's figures
    python bench/bench_core.py --runs 7 --isa avx2
    python bench/bench_core.py --runs 1 --batch 16 --repeats 2 --no-log   # a quick check
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Library, Target, time_call  # noqa: E402

LAYERS = [("conv1", (64, 64, 3), 32), ("conv2", (31, 31, 32), 64), ("conv3", (14, 14, 64), 128)]
KERNEL = 3
OPS = ("conv_f", "conv_fb", "pool_f", "pool_fb")


def layer_data(idx, batch):
    """The same float32 inputs in every process: x, w, b, dy, the pool's input and its dy."""
    import numpy as np
    rng = np.random.default_rng(idx)
    (h, w, c), cout = LAYERS[idx][1], LAYERS[idx][2]
    oh, ow = h - KERNEL + 1, w - KERNEL + 1
    x = rng.standard_normal((batch, h, w, c)).astype(np.float32)
    wt = (rng.standard_normal((KERNEL, KERNEL, c, cout)) * 0.1).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    dy = rng.standard_normal((batch, oh, ow, cout)).astype(np.float32)
    a = np.maximum(rng.standard_normal((batch, oh, ow, cout)), 0).astype(np.float32)
    pdy = rng.standard_normal((batch, oh // 2, ow // 2, cout)).astype(np.float32)
    return x, wt, b, dy, a, pdy


def measure(fns, settings, out):
    """Time every op of every layer (fns: layer -> {op: fn}); sums over the layers too."""
    for name, ops in fns.items():
        for op, fn in ops.items():
            fn()                                     # first call: warm-up
            out[f"{name}.{op}"], _ = time_call(fn, settings["repeats"])
    for op in OPS:
        out[op] = sum(out[f"{name}.{op}"] for name in fns)
    return out


# ----------------------------------------------------------------------------- workers

def worker_cconv(settings):
    import numpy as np
    from threadpoolctl import threadpool_limits

    import cconv
    from cconv import _testing
    from cconv import functional as F

    threads, batch = settings["threads"], settings["batch"]
    cconv.set_num_threads(threads)
    harness.cap_cconv_isa(settings)
    out, info, fns = {}, {"routes": {}, "checksum": {}}, {}
    with threadpool_limits(limits=threads, user_api="blas"):
        for idx, (name, _, _) in enumerate(LAYERS):
            x, wt, b, dy, a, pdy = layer_data(idx, batch)
            first = idx == 0

            def conv_fb(x=x, wt=wt, b=b, dy=dy, first=first):
                F.conv2d(x, wt, b)
                F.conv2d_backward(dy, x, wt, need_dx=not first)

            def pool_fb(a=a, pdy=pdy):
                _, arg = F.max_pool2d(a)
                F.max_pool2d_backward(pdy, arg, a.shape)

            fns[name] = {"conv_f": lambda x=x, wt=wt, b=b: F.conv2d(x, wt, b),
                         "conv_fb": conv_fb, "pool_f": lambda a=a: F.max_pool2d(a),
                         "pool_fb": pool_fb}
            _testing.reset()
            y = F.conv2d(x, wt, b)
            info["checksum"][name] = float(np.sum(y, dtype=np.float64))
            route = next((r for r in ("winograd", "direct", "im2col")
                          if _testing.ROUTE_KERNELS[r][0] in _testing.kernels_run()), "?")
            info["routes"][name] = route
        measure(fns, settings, out)
        for idx, (name, (h, w, c), cout) in enumerate(LAYERS):
            oh, ow = h - KERNEL + 1, w - KERNEL + 1
            m, k = batch * oh * ow, KERNEL * KERNEL * c
            if info["routes"][name] == "winograd":      # 16 per 2x2 tile and channel pair
                mults = batch * (-(-oh // 2)) * (-(-ow // 2)) * 16 * c * cout
            else:
                mults = m * k * cout
            rng = np.random.default_rng(100 + idx)
            ga = rng.standard_normal((m, k)).astype(np.float32)
            gb = rng.standard_normal((k, cout)).astype(np.float32)
            t, _ = time_call(lambda: ga @ gb, settings["repeats"])
            sgemm = 2.0 * m * k * cout / t
            out[f"{name}.sgemm_gflops"] = sgemm / 1e9
            out[f"{name}.sgemm_share"] = 2.0 * mults / out[f"{name}.conv_f"] / sgemm
            info.setdefault("multiplications", {})[name] = mults
        out["thread_speedup"] = thread_speedup(fns, settings)
    cconv.set_num_threads(threads)
    info["show_config"] = cconv.show_config(file=False)
    out["info"] = info
    return out


def thread_speedup(fns, settings):
    """Median of the per-repeat ratios (1 thread / 2 threads) of the three conv layers'
    forward+backward, one call running all three."""
    import statistics

    import cconv

    def all_layers(n):
        cconv.set_num_threads(n)
        for ops in fns.values():
            ops["conv_fb"]()

    ratios = []
    for _ in range(2 * settings["repeats"] + 1):
        t1, _ = time_call(lambda: all_layers(1), 1)
        t2, _ = time_call(lambda: all_layers(2), 1)
        ratios.append(t1 / t2)
    return statistics.median(ratios)


def worker_torch(settings, channels_last):
    import numpy as np
    import torch
    import torch.nn.functional as TF

    torch.set_num_threads(settings["threads"])
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    fns, info = {}, {"checksum": {}, "parallel_info": torch.__config__.parallel_info()}

    def tensor(a, grad=False):      # NHWC numpy -> NCHW tensor in the chosen memory format
        t = torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2))).to(memory_format=fmt)
        return t.requires_grad_(grad)

    for idx, (name, _, _) in enumerate(LAYERS):
        x, wt, b, dy, a, pdy = layer_data(idx, settings["batch"])
        first = idx == 0
        xt, xg = tensor(x), tensor(x, grad=not first)
        wg = torch.from_numpy(np.ascontiguousarray(wt.transpose(3, 2, 0, 1))).to(
            memory_format=fmt).requires_grad_(True)
        bg = torch.from_numpy(b).requires_grad_(True)
        dyt, at, ag, pdyt = tensor(dy), tensor(a), tensor(a, grad=True), tensor(pdy)
        inputs = [wg, bg] if first else [xg, wg, bg]

        def conv_f(xt=xt, wg=wg, bg=bg):
            with torch.no_grad():
                return TF.conv2d(xt, wg, bg)

        def conv_fb(xg=xg, wg=wg, bg=bg, inputs=inputs, dyt=dyt):
            torch.autograd.grad(TF.conv2d(xg, wg, bg), inputs, dyt)

        def pool_f(at=at):
            with torch.no_grad():
                TF.max_pool2d(at, 2)

        def pool_fb(ag=ag, pdyt=pdyt):
            torch.autograd.grad(TF.max_pool2d(ag, 2), [ag], pdyt)

        fns[name] = {"conv_f": conv_f, "conv_fb": conv_fb, "pool_f": pool_f, "pool_fb": pool_fb}
        info["checksum"][name] = float(conv_f().double().sum())
    out = measure(fns, settings, {})
    out["info"] = info
    return out


def worker_numpy(settings):
    import numpy as np
    from numpy.lib.stride_tricks import sliding_window_view
    from threadpoolctl import threadpool_limits

    def im2col(x, k):
        n, h, w, c = x.shape
        win = sliding_window_view(x, (k, k), axis=(1, 2))          # (N, OH, OW, C, k, k)
        return win.transpose(0, 1, 2, 4, 5, 3).reshape(n * (h - k + 1) * (w - k + 1), k * k * c)

    def conv_f(x, w, b):
        n, h, wd, _ = x.shape
        cols = im2col(x, KERNEL)
        y = cols @ w.reshape(-1, w.shape[3]) + b
        return y.reshape(n, h - KERNEL + 1, wd - KERNEL + 1, w.shape[3]), cols

    def conv_fb(x, w, b, dy, need_dx):
        _, cols = conv_f(x, w, b)
        n, h, wd, c = x.shape
        oh, ow, cout = h - KERNEL + 1, wd - KERNEL + 1, w.shape[3]
        dy2 = dy.reshape(-1, cout)
        cols.T @ dy2, dy2.sum(axis=0)                                # dW, db
        if need_dx:
            dcols = (dy2 @ w.reshape(-1, cout).T).reshape(n, oh, ow, KERNEL, KERNEL, c)
            dx = np.zeros_like(x)
            for i in range(KERNEL):
                for j in range(KERNEL):
                    dx[:, i:i + oh, j:j + ow, :] += dcols[:, :, :, i, j, :]

    def pool_f(x):
        n, h, w, c = x.shape
        ph, pw = h // 2, w // 2
        win = x[:, :2 * ph, :2 * pw].reshape(n, ph, 2, pw, 2, c).transpose(0, 1, 3, 5, 2, 4)
        win = win.reshape(n, ph, pw, c, 4)
        arg = win.argmax(axis=-1)
        return np.take_along_axis(win, arg[..., None], -1)[..., 0], arg

    def pool_fb(x, dy):
        _, arg = pool_f(x)
        n, h, w, c = x.shape
        ph, pw = h // 2, w // 2
        win = np.zeros((n, ph, pw, c, 4), dy.dtype)
        np.put_along_axis(win, arg[..., None], dy[..., None], -1)
        dx = np.zeros(x.shape, dy.dtype)
        dx[:, :2 * ph, :2 * pw] = (win.reshape(n, ph, pw, c, 2, 2).transpose(0, 1, 4, 2, 5, 3)
                                   .reshape(n, 2 * ph, 2 * pw, c))

    fns, info = {}, {"checksum": {}}
    for idx, (name, _, _) in enumerate(LAYERS):
        x, wt, b, dy, a, pdy = layer_data(idx, settings["batch"])
        fns[name] = {"conv_f": lambda x=x, wt=wt, b=b: conv_f(x, wt, b),
                     "conv_fb": lambda x=x, wt=wt, b=b, dy=dy, i=idx: conv_fb(x, wt, b, dy, i > 0),
                     "pool_f": lambda a=a: pool_f(a), "pool_fb": lambda a=a, pdy=pdy: pool_fb(a, pdy)}
        info["checksum"][name] = float(np.sum(conv_f(x, wt, b)[0], dtype=np.float64))
    with threadpool_limits(limits=settings["threads"], user_api="blas"):
        out = measure(fns, settings, {})
    out["info"] = info
    return out


WORKERS = {"cconv": worker_cconv,
           "torch-nchw": lambda s: worker_torch(s, channels_last=False),
           "torch-channels-last": lambda s: worker_torch(s, channels_last=True),
           "numpy": worker_numpy}

UNITS = {f"{name}.{op}": "s" for name, _, _ in LAYERS for op in OPS}
UNITS.update({op: "s" for op in OPS})
UNITS.update({f"{name}.sgemm_share": "%" for name, _, _ in LAYERS})
UNITS.update({f"{name}.sgemm_gflops": "GFLOP/s" for name, _, _ in LAYERS})
UNITS["thread_speedup"] = "x"

TARGET = Target(
    name="bench_core",
    description="the paper network's conv and pool layers: cconv vs PyTorch "
                "(NCHW, channels_last) and NumPy, each in its own process",
    libraries=[Library("cconv"), Library("torch-nchw", "PyTorch NCHW"),
               Library("torch-channels-last", "PyTorch channels_last"), Library("numpy", "NumPy")],
    rows=[("conv fwd+bwd, 3 paper layers", "conv_fb"),
          ("conv forward, 3 paper layers", "conv_f"),
          ("max-pool 2x2 fwd+bwd, 3 layers", "pool_fb"),
          ("max-pool 2x2 forward, 3 layers", "pool_f"),
          ("conv forward of layer 2: share of sgemm (multiplications done)", "conv2.sgemm_share"),
          ("conv forward of layer 3: share of sgemm (multiplications done)", "conv3.sgemm_share"),
          ("conv layers fwd+bwd: 2 threads vs 1", "thread_speedup")],
    units=UNITS,
    higher_is_better=tuple(m for m in UNITS if m.endswith(("sgemm_share", "sgemm_gflops")))
    + ("thread_speedup",),
    checks=[("conv fwd+bwd, 3 layers, vs the fastest other library", "conv_fb", "cconv", 1.0),
            ("max-pool fwd+bwd, 3 layers, vs the fastest other library", "pool_fb", "cconv", 0.4),
            ("conv forward of layer 2: share of sgemm", "conv2.sgemm_share", "cconv", 0.6),
            ("conv forward of layer 3: share of sgemm", "conv3.sgemm_share", "cconv", 0.6),
            ("conv layers: 2 threads vs 1 thread", "thread_speedup", "cconv", 1.7)],
)


def options(p):
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5,
                   help="timed calls per operation in each process (their median is the run's)")


if __name__ == "__main__":
    sys.exit(harness.run(TARGET, WORKERS, __file__, options))
