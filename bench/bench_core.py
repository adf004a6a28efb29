#!/usr/bin/env python
"""Benchmark of cconv's compiled core (issue 2): the paper network's conv and pool layers.

At batch 128 and one thread count for everybody, times the three 3x3 stride-1 unpadded conv
layers (64x64x3 -> 32, 31x31x32 -> 64, 14x14x64 -> 128) and their 2x2 max-pools, forward
and forward+backward, for

* cconv (NHWC),
* PyTorch CPU in NCHW and in channels_last (when torch is installed),
* plain NumPy: im2col with ``sliding_window_view`` + ``matmul``,

and the machine's sgemm on each layer's GEMM shape (numpy float32 matmul of
``(N*OH*OW, K) x (K, C_out)``, K = 3*3*C_in). Prints the median time of the repeats after a
warm-up (each timed call follows 0.1 s of calls of the same function: the steady state of
a training loop, see compare()), GFLOP/s, ratios against the faster PyTorch layout, cconv's
2-thread / 1-thread speed-up on the conv layers, ``threadpoolctl.threadpool_info()``, and a
PASS/FAIL table of the four targets of issue 2:

1. conv forward+backward, summed over the three layers: <= 1.0x the faster torch layout;
2. max-pool forward+backward, summed over the three layers: <= 0.4x the faster torch layout;
3. conv forward of layers 2 and 3: >= 60% of the sgemm GFLOP/s of the same GEMM shape;
4. conv layers (forward+backward, summed): 2 threads >= 1.7x faster than 1 thread.

The first layer's backward skips dx (``need_dx=False``; torch: the input needs no grad), as
in training. Usage::

    python bench/bench_core.py              # 2 threads, 7 repeats
    python bench/bench_core.py --quick      # 3 repeats, 1 warm-up
    python bench/bench_core.py --threads 1 --repeats 11

The machine may be shared: run it when it is quiet, and read ratios rather than times.
"""
import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from threadpoolctl import threadpool_info, threadpool_limits

import cconv
from cconv import functional as F

try:
    import torch
    import torch.nn.functional as TF
except ImportError:  # torch is only a reference
    torch = None

LAYERS = [("conv1", (64, 64, 3), 32), ("conv2", (31, 31, 32), 64), ("conv3", (14, 14, 64), 128)]
KERNEL = 3


#: Pause before each contender's turn when several libraries are compared (see compare()).
SETTLE = 0.3
#: Untimed calls, for at least this long, between a turn's first call and its timed call.
BURST = 0.1


def median_time(fn, repeats, warmup):
    return compare({"fn": fn}, repeats, warmup)["fn"]


def compare(fns, repeats, warmup, cold=None, samples=None):
    """Median time of each function; the repeats are interleaved (round-robin) so that the
    load of a shared machine affects every contender alike.

    Before each contender's turn the previous contender's idle threads are given SETTLE
    seconds to stop spinning (OpenBLAS and OpenMP runtimes busy-wait after a call), so that
    no contender is timed while another library's threads still hold the cores. A turn then
    times its first call ("cold": after the idle pause), keeps calling the function untimed
    for BURST seconds, and times one more call ("warm"). The warm call is what is returned:
    the steady state of a training loop, where the layers run back to back. It is not the
    call right after the cold one because a runtime whose threads sleep between calls can
    stay slow for a while after an idle pause. When cconv's OpenMP threads slept at once
    (OMP_WAIT_POLICY=PASSIVE, which cconv set until it switched to a short spin), one pool
    on 2 threads took 6.3-7.3 ms per call 10-40 ms after the pause and 4.0-4.3 ms from 40 ms
    on, on this virtual machine, so a call right after the cold one landed in that window
    for a fast kernel and not for a slow one. With the spin the window is gone (2.9-3.9 ms
    throughout); any library may have one, and the burst treats them all alike. The cold
    medians go to ``cold`` (a dict) when one is given, the warm times of every repeat to
    ``samples``."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    first = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if len(fns) > 1:
                time.sleep(SETTLE)
            t0 = time.perf_counter()
            fn()
            t1 = time.perf_counter()
            while time.perf_counter() - t1 < BURST:
                fn()
            t2 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t2)
            first[name].append(t1 - t0)
    if cold is not None:
        cold.update({name: statistics.median(t) for name, t in first.items()})
    if samples is not None:
        samples.update(times)
    return {name: statistics.median(t) for name, t in times.items()}


# ----------------------------------------------------------------------------- NumPy baseline

def np_im2col(x, k):
    n, h, w, c = x.shape
    win = sliding_window_view(x, (k, k), axis=(1, 2))          # (N, OH, OW, C, k, k)
    oh, ow = h - k + 1, w - k + 1
    return win.transpose(0, 1, 2, 4, 5, 3).reshape(n * oh * ow, k * k * c)


def np_conv_forward(x, w, b):
    n, h, wd, c = x.shape
    k, cout = w.shape[0], w.shape[3]
    cols = np_im2col(x, k)
    y = cols @ w.reshape(-1, cout) + b
    return y.reshape(n, h - k + 1, wd - k + 1, cout), cols


def np_conv_backward(dy, x, w, cols, need_dx):
    n, h, wd, c = x.shape
    k, cout = w.shape[0], w.shape[3]
    oh, ow = h - k + 1, wd - k + 1
    dy2 = dy.reshape(-1, cout)
    dw = (cols.T @ dy2).reshape(w.shape)
    db = dy2.sum(axis=0)
    dx = None
    if need_dx:
        dcols = (dy2 @ w.reshape(-1, cout).T).reshape(n, oh, ow, k, k, c)
        dx = np.zeros_like(x)
        for i in range(k):
            for j in range(k):
                dx[:, i:i + oh, j:j + ow, :] += dcols[:, :, :, i, j, :]
    return dx, dw, db


def np_pool_forward(x):
    n, h, w, c = x.shape
    ph, pw = h // 2, w // 2
    win = x[:, :2 * ph, :2 * pw].reshape(n, ph, 2, pw, 2, c).transpose(0, 1, 3, 5, 2, 4)
    win = win.reshape(n, ph, pw, c, 4)
    arg = win.argmax(axis=-1)
    return np.take_along_axis(win, arg[..., None], -1)[..., 0], arg


def np_pool_backward(dy, arg, shape):
    n, h, w, c = shape
    ph, pw = h // 2, w // 2
    win = np.zeros((n, ph, pw, c, 4), dy.dtype)
    np.put_along_axis(win, arg[..., None], dy[..., None], -1)
    dx = np.zeros(shape, dy.dtype)
    dx[:, :2 * ph, :2 * pw] = (win.reshape(n, ph, pw, c, 2, 2).transpose(0, 1, 4, 2, 5, 3)
                               .reshape(n, 2 * ph, 2 * pw, c))
    return dx


# ----------------------------------------------------------------------------- one layer

def gemm_gflops(m, k, n, threads, repeats, warmup, rng):
    """numpy float32 matmul of (m, k) x (k, n) on ``threads`` BLAS threads: (GFLOP/s, s)."""
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    with threadpool_limits(limits=threads, user_api="blas"):
        t = median_time(lambda: a @ b, repeats, warmup)
    return 2.0 * m * k * n / t / 1e9, t


def bench_layer(idx, shape, cout, batch, threads, repeats, warmup, rng, with_numpy=True):
    h, w, c = shape
    first = idx == 0
    x = rng.standard_normal((batch, h, w, c)).astype(np.float32)
    wt = (rng.standard_normal((KERNEL, KERNEL, c, cout)) * 0.1).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    oh, ow = h - KERNEL + 1, w - KERNEL + 1
    m, k = batch * oh * ow, KERNEL * KERNEL * c
    flops_f = 2.0 * m * k * cout
    flops_fb = flops_f * (2 if first else 3)
    dy = rng.standard_normal((batch, oh, ow, cout)).astype(np.float32)
    a = np.maximum(F.conv2d(x, wt, b), 0)                       # the pool's input
    pdy = rng.standard_normal((batch, oh // 2, ow // 2, cout)).astype(np.float32)
    r = {"name": LAYERS[idx][0], "flops_f": flops_f, "flops_fb": flops_fb, "gemm": (m, k, cout)}

    cconv.set_num_threads(threads)
    fns = {}   # library -> {op: fn}

    def cc_fb():
        F.conv2d(x, wt, b)
        F.conv2d_backward(dy, x, wt, need_dx=not first)

    def cc_pool_fb():
        y, arg = F.max_pool2d(a)
        F.max_pool2d_backward(pdy, arg, a.shape)

    fns["cconv"] = {"conv_f": lambda: F.conv2d(x, wt, b), "conv_fb": cc_fb,
                    "pool_f": lambda: F.max_pool2d(a), "pool_fb": cc_pool_fb}

    if torch is not None:
        torch.set_num_threads(threads)
        for layout, fmt in [("torch_nchw", torch.contiguous_format),
                            ("torch_cl", torch.channels_last)]:
            xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(memory_format=fmt)
            wtt = torch.from_numpy(wt.transpose(3, 2, 0, 1).copy()).to(memory_format=fmt)
            bt = torch.from_numpy(b.copy())
            dyt = torch.from_numpy(dy.transpose(0, 3, 1, 2).copy()).to(memory_format=fmt)
            at = torch.from_numpy(a.transpose(0, 3, 1, 2).copy()).to(memory_format=fmt)
            pdyt = torch.from_numpy(pdy.transpose(0, 3, 1, 2).copy()).to(memory_format=fmt)
            xg = xt.clone().requires_grad_(not first)
            wg = wtt.clone().requires_grad_(True)
            bg = bt.clone().requires_grad_(True)
            ag = at.clone().requires_grad_(True)
            inputs = [wg, bg] if first else [xg, wg, bg]

            def t_f(xt=xt, wtt=wtt, bt=bt):
                with torch.no_grad():
                    TF.conv2d(xt, wtt, bt)

            def t_fb(xg=xg, wg=wg, bg=bg, inputs=inputs, dyt=dyt):
                y = TF.conv2d(xg, wg, bg)
                torch.autograd.grad(y, inputs, dyt)

            def t_pool_f(at=at):
                with torch.no_grad():
                    TF.max_pool2d(at, 2)

            def t_pool_fb(ag=ag, pdyt=pdyt):
                y = TF.max_pool2d(ag, 2)
                torch.autograd.grad(y, [ag], pdyt)

            fns[layout] = {"conv_f": t_f, "conv_fb": t_fb, "pool_f": t_pool_f,
                           "pool_fb": t_pool_fb}
            if layout == "torch_nchw":        # the two libraries compute the same thing
                with torch.no_grad():
                    ref = TF.conv2d(xt, wtt, bt).numpy().transpose(0, 2, 3, 1)
                err = float(np.abs(F.conv2d(x, wt, b) - ref).max() / np.abs(ref).max())
                r["check_rel_err"] = err

    if with_numpy:
        def n_fb():
            y, cols = np_conv_forward(x, wt, b)
            np_conv_backward(dy, x, wt, cols, not first)

        def n_pool_fb():
            y, arg = np_pool_forward(a)
            np_pool_backward(pdy, arg, a.shape)

        fns["numpy"] = {"conv_f": lambda: np_conv_forward(x, wt, b), "conv_fb": n_fb,
                        "pool_f": lambda: np_pool_forward(a), "pool_fb": n_pool_fb}

    for lib in fns:
        r[lib] = {}
    for op in ("conv_f", "conv_fb", "pool_f", "pool_fb"):
        cold = {}
        times = compare({lib: fns[lib][op] for lib in fns}, repeats, warmup, cold)
        for lib, t in times.items():
            r[lib][op] = t
            r[lib][op + "_cold"] = cold[lib]
    r["sgemm_gflops"], r["sgemm_time"] = gemm_gflops(m, k, cout, threads, repeats, warmup, rng)
    return r


def conv_thread_speedup(batch, repeats, warmup, rng):
    """cconv conv forward+backward of the three layers, one call running all three, on 1 and
    on 2 threads (interleaved). Returns the median times (t1, t2) and the median of the
    per-repeat ratios t1 / t2: each ratio compares two calls made within a second of each
    other, so a slow spell of the shared machine that spans both cancels out of it."""
    layers = []
    for idx, (_, (h, w, c), cout) in enumerate(LAYERS):
        x = rng.standard_normal((batch, h, w, c)).astype(np.float32)
        wt = (rng.standard_normal((KERNEL, KERNEL, c, cout)) * 0.1).astype(np.float32)
        dy = rng.standard_normal((batch, h - 2, w - 2, cout)).astype(np.float32)
        layers.append((x, wt, dy, idx != 0))

    def fb(n):
        cconv.set_num_threads(n)
        for x, wt, dy, need_dx in layers:
            F.conv2d(x, wt)
            F.conv2d_backward(dy, x, wt, need_dx=need_dx)
    samples = {}
    times = compare({1: lambda: fb(1), 2: lambda: fb(2)}, repeats, warmup, samples=samples)
    ratio = statistics.median(a / b for a, b in zip(samples[1], samples[2]))
    return times[1], times[2], ratio


# ----------------------------------------------------------------------------- report

def fmt_ms(t):
    return f"{t * 1e3:9.1f}"


def main(argv=None):
    p = argparse.ArgumentParser(description="cconv core benchmark (issue 2)")
    p.add_argument("--threads", type=int, default=2, help="thread count for every library")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (median reported)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--quick", action="store_true", help="3 repeats, 1 warm-up")
    p.add_argument("--no-numpy", action="store_true", help="skip the NumPy baseline")
    a = p.parse_args(argv)
    repeats = a.repeats or (3 if a.quick else 7)
    warmup = 1 if a.quick else 2
    rng = np.random.default_rng(0)

    print(f"cconv {cconv.__version__}, numpy {np.__version__}, "
          f"torch {torch.__version__ if torch else 'not installed'}, "
          f"Python {platform.python_version()}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs")
    print(f"batch {a.batch}, threads {a.threads}, median of {repeats} interleaved repeats "
          f"after {warmup} warm-up, float32; each timed call follows {BURST} s of untimed ones")
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    if load_before:
        print(f"load average before: {load_before[0]:.2f} "
              f"(above {a.threads - 1} means other processes compete for the CPUs)")
    print()
    cconv.show_config()
    print()

    # Every BLAS (numpy's for the baseline and the sgemm figure) gets the same thread count;
    # cconv narrows it further inside its own parallel regions, torch has its own pool.
    with threadpool_limits(limits=a.threads, user_api="blas"):
        results = [bench_layer(i, shape, cout, a.batch, a.threads, repeats, warmup, rng,
                               with_numpy=not a.no_numpy)
                   for i, (_, shape, cout) in enumerate(LAYERS)]
    libs = ["cconv"] + [lib for lib in ("torch_nchw", "torch_cl", "numpy") if lib in results[0]]

    for op, label, flops_key in [("conv_f", "conv forward", "flops_f"),
                                 ("conv_fb", "conv forward+backward", "flops_fb"),
                                 ("pool_f", "max-pool 2x2 forward", None),
                                 ("pool_fb", "max-pool 2x2 forward+backward", None)]:
        print(f"== {label} (ms{', GFLOP/s' if flops_key else ''})")
        print(f"{'layer':8s}" + "".join(f"{lib:>20s}" for lib in libs)
              + ("   cconv / best torch" if torch else ""))
        for r in results:
            cells = []
            for lib in libs:
                t = r[lib][op]
                g = f" ({r[flops_key] / t / 1e9:6.1f})" if flops_key else ""
                cells.append(f"{fmt_ms(t)}{g}".rjust(20))
            line = f"{r['name']:8s}" + "".join(cells)
            if torch:
                best = min(r["torch_nchw"][op], r["torch_cl"][op])
                line += f"   {r['cconv'][op] / best:6.2f}x"
            print(line)
        sums = {lib: sum(r[lib][op] for r in results) for lib in libs}
        line = f"{'sum':8s}" + "".join(f"{fmt_ms(sums[lib])}".rjust(20) for lib in libs)
        if torch:
            line += f"   {sums['cconv'] / min(sums['torch_nchw'], sums['torch_cl']):6.2f}x"
        print(line)
        print()

    print("== GEMM shapes: numpy float32 matmul (N*OH*OW, K) x (K, C_out) vs cconv conv forward")
    for r in results:
        m, k, n = r["gemm"]
        cc = r["flops_f"] / r["cconv"]["conv_f"] / 1e9
        print(f"{r['name']:8s} ({m}, {k}) x ({k}, {n}): sgemm {r['sgemm_gflops']:6.1f} GFLOP/s "
              f"({fmt_ms(r['sgemm_time']).strip()} ms); cconv forward {cc:6.1f} GFLOP/s = "
              f"{100 * cc / r['sgemm_gflops']:5.1f}% of sgemm")
    if torch:
        print("cconv vs torch forward, max relative difference: "
              + ", ".join(f"{r['name']} {r['check_rel_err']:.1e}" for r in results))
    print()

    print("== cconv threads: conv forward+backward summed over the three layers")
    with threadpool_limits(limits=2, user_api="blas"):
        t1, t2, speedup = conv_thread_speedup(a.batch, 2 * repeats + 1, warmup, rng)
    print(f"1 thread {fmt_ms(t1).strip()} ms, 2 threads {fmt_ms(t2).strip()} ms (medians of "
          f"{2 * repeats + 1}): speed-up {speedup:.2f}x (median of the per-repeat ratios)")
    cconv.set_num_threads(a.threads)
    print()

    print("== threadpoolctl.threadpool_info()")
    for info in threadpool_info():
        keys = ("user_api", "internal_api", "num_threads", "version", "filepath")
        print("  " + ", ".join(f"{k}={info.get(k)}" for k in keys))
    print()

    if load_before:
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        print()
    print("== issue 2 targets")
    rows = []
    if torch:
        conv_sum = sum(r["cconv"]["conv_fb"] for r in results)
        conv_best = min(sum(r[t]["conv_fb"] for r in results) for t in ("torch_nchw", "torch_cl"))
        pool_sum = sum(r["cconv"]["pool_fb"] for r in results)
        pool_best = min(sum(r[t]["pool_fb"] for r in results) for t in ("torch_nchw", "torch_cl"))
        rows.append(("conv fwd+bwd, 3 layers, vs faster torch layout", "<= 1.00x",
                     f"{conv_sum / conv_best:.2f}x", conv_sum / conv_best <= 1.0))
        rows.append(("max-pool fwd+bwd, 3 layers, vs faster torch layout", "<= 0.40x",
                     f"{pool_sum / pool_best:.2f}x", pool_sum / pool_best <= 0.4))
        cold = {lib: sum(r[lib]["pool_fb_cold"] for r in results) for lib in libs}
        cold_ratio = cold["cconv"] / min(cold["torch_nchw"], cold["torch_cl"])
        rows.append(("  the same, first call after the idle pause (information)", "",
                     f"{cold_ratio:.2f}x", None))
    else:
        rows.append(("conv fwd+bwd vs torch", "<= 1.00x", "torch not installed", None))
        rows.append(("max-pool fwd+bwd vs torch", "<= 0.40x", "torch not installed", None))
    fracs = [r["flops_f"] / r["cconv"]["conv_f"] / 1e9 / r["sgemm_gflops"] for r in results[1:]]
    rows.append(("conv forward layers 2, 3: share of sgemm GFLOP/s", ">= 60%",
                 " / ".join(f"{100 * f:.0f}%" for f in fracs), min(fracs) >= 0.6))
    rows.append(("conv layers: 2 threads vs 1 thread", ">= 1.70x", f"{speedup:.2f}x",
                 speedup >= 1.7))
    width = max(len(r[0]) for r in rows)
    for name, target, got, ok in rows:
        verdict = ("" if not target else "n/a") if ok is None else ("PASS" if ok else "FAIL")
        print(f"  {name:{width}s}  target {target:9s}  measured {got:12s}  {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
