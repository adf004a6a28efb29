#!/usr/bin/env python
"""Benchmark: one training epoch of the paper network, cconv vs PyTorch (CPU).

The network of the LFW paper (64x64x3 input; conv 3x3 32 -> ReLU -> maxpool 2; conv 3x3 64
-> ReLU -> maxpool 2; conv 3x3 128 -> ReLU -> maxpool 2; flatten; Dense 128 ReLU; Dense 256
ReLU; Dropout 0.5; Dense 34; softmax cross-entropy; Adam 1e-3; batch 128) trained for one
epoch over 1,777 random images by

* cconv (NHWC),
* PyTorch with NCHW tensors,
* PyTorch with ``channels_last`` tensors,

each in its own process, at the same thread count, in interleaved runs (bench/harness.py:
a rotating order, the median and range over the runs, a JSON log under bench/results/).
Each process builds the model, runs one warm-up batch, then times ``--epochs`` epochs (the
run's figure is their median) and measures memory: the growth during training (peak
resident memory minus the baseline after imports, data and model: what training itself
needs) and the whole process's peak (which includes the cost of importing the library).

    python bench/bench_train.py                  # 5 runs, 2 threads: the README's figures
    python bench/bench_train.py --runs 1 --images 256 --no-log     # a quick check
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Library, Memory, Target  # noqa: E402

N_CLASSES = 34


def _data(n, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    return rng.random((n, 64, 64, 3), dtype=np.float32), rng.integers(0, N_CLASSES, n)


def worker_cconv(settings):
    import statistics

    from threadpoolctl import threadpool_limits

    import cconv
    from cconv import optim
    from bench_speed import cconv_model as paper_model     # the same network in both

    threads = settings["threads"]
    cconv.set_num_threads(threads)
    harness.cap_cconv_isa(settings)
    # numpy's BLAS (the Dense layers' fallback) capped too: every framework on `threads`.
    with threadpool_limits(limits=threads, user_api="blas"):
        x, y = _data(settings["images"])
        model = paper_model()
        model.compile(optim.Adam(lr=1e-3), "categorical_crossentropy")
        times = []
        with Memory() as mem:
            model.train_on_batch(x[:settings["batch"]], y[:settings["batch"]])     # warm-up
            for _ in range(settings["epochs"]):
                t0 = time.perf_counter()
                h = model.fit(x, y, epochs=1, batch_size=settings["batch"], verbose=0)
                times.append(time.perf_counter() - t0)
    return {"epoch_s": statistics.median(times), "growth_mb": mem.growth_mb,
            "peak_mb": mem.peak_mb, "base_mb": mem.base_mb,
            "info": {"epoch_times": times, "loss": h.history["loss"][-1],
                     "threads": cconv.get_num_threads(), "peak_reset": mem.reset}}


def worker_torch(settings, channels_last):
    import statistics

    import numpy as np
    import torch
    from torch import nn

    torch.set_num_threads(settings["threads"])
    torch.manual_seed(0)
    x_np, y_np = _data(settings["images"])
    x = torch.from_numpy(np.ascontiguousarray(x_np.transpose(0, 3, 1, 2)))    # NCHW
    del x_np
    y = torch.from_numpy(y_np)
    from bench_speed import torch_model     # the same network in every benchmark
    model = torch_model()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    n, batch = x.shape[0], settings["batch"]

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
        for lo in range(0, n, batch):
            idx = perm[lo:lo + batch]
            xb = x[idx]
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            total += float(step(xb, y[idx])) * len(idx)
        return total / n

    times = []
    with Memory() as mem:
        step(x[:batch], y[:batch])                                      # warm-up
        for _ in range(settings["epochs"]):
            t0 = time.perf_counter()
            loss = epoch()
            times.append(time.perf_counter() - t0)
    return {"epoch_s": statistics.median(times), "growth_mb": mem.growth_mb,
            "peak_mb": mem.peak_mb, "base_mb": mem.base_mb,
            "info": {"epoch_times": times, "loss": loss, "threads": torch.get_num_threads(),
                     "peak_reset": mem.reset, "parallel_info": torch.__config__.parallel_info()}}


WORKERS = {"cconv": worker_cconv,
           "torch-nchw": lambda s: worker_torch(s, channels_last=False),
           "torch-channels-last": lambda s: worker_torch(s, channels_last=True)}

TARGET = Target(
    name="bench_train",
    description="one training epoch of the paper network on random 64x64x3 images: cconv vs "
                "PyTorch, each in its own process",
    libraries=[Library("cconv"), Library("torch-nchw", "PyTorch NCHW"),
               Library("torch-channels-last", "PyTorch channels_last")],
    rows=[("one training epoch", "epoch_s"),
          ("memory growth during training (peak minus after imports and data)", "growth_mb"),
          ("whole-process peak RSS", "peak_mb")],
    units={"epoch_s": "s", "growth_mb": "MB", "peak_mb": "MB", "base_mb": "MB"},
    checks=[("training epoch vs the fastest other library", "epoch_s", "cconv", 1.0)],
)


def options(p):
    p.add_argument("--images", type=int, default=1777)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--epochs", type=int, default=1,
                   help="epochs timed in each process (their median is the run's)")


if __name__ == "__main__":
    if "--worker" in sys.argv:
        sys.exit(harness.worker_main(WORKERS, sys.argv[1:]))
    harness.main(TARGET, os.path.abspath(__file__), settings_parser=options)
