#!/usr/bin/env python
"""Benchmark: one training epoch of the paper network, cconv vs PyTorch (CPU).

The network of the LFW paper (bench/paper_net.py: 64x64x3 input, three conv 3x3 + ReLU +
maxpool 2 blocks of 32, 64 and 128 filters, Dense 128, Dense 256, Dropout 0.5, Dense 34;
softmax cross-entropy; Adam 1e-3; batch 128) trained for one epoch over 1,777 random images
by

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
import paper_net  # noqa: E402
from harness import Library, Memory, Target  # noqa: E402


def worker_cconv(settings):
    import statistics

    from threadpoolctl import threadpool_limits

    import cconv

    threads = settings["threads"]
    cconv.set_num_threads(threads)
    harness.cap_cconv_isa(settings)
    # numpy's BLAS (the Dense layers' fallback) capped too: every framework on `threads`.
    with threadpool_limits(limits=threads, user_api="blas"):
        x, y = paper_net.data(settings["images"])
        model = paper_net.cconv_model()
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

    import torch

    tr = paper_net.torch_trainer(settings["threads"], channels_last)
    x_np, y_np = paper_net.data(settings["images"])
    x, y = tr.tensor(x_np), torch.from_numpy(y_np)
    del x_np
    batch = settings["batch"]
    times = []
    with Memory() as mem:
        tr.step(x[:batch], y[:batch])                                   # warm-up
        for _ in range(settings["epochs"]):
            t0 = time.perf_counter()
            loss = tr.epoch(x, y, batch)
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
    paper_net.options(p)
    p.add_argument("--epochs", type=int, default=1,
                   help="epochs timed in each process (their median is the run's)")


if __name__ == "__main__":
    sys.exit(harness.run(TARGET, WORKERS, __file__, options))
