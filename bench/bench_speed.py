#!/usr/bin/env python
"""Issue 19's targets on the paper network: cconv against PyTorch (NCHW and channels_last)
and Keras 3 on TensorFlow CPU.

The network of the LFW paper (bench/paper_net.py: 1,777 random 64x64x3 images, batch 128,
Adam 1e-3). Measured, per library, in three processes per run (bench/harness.py jobs):

* ``infer``: ``batch1``, inference on one image, and ``batch256``, inference on a batch of
  256 images: seconds per call, the fastest of ``--repeats`` batches of calls after a
  warm-up (the batch the shared machine disturbed least), ``--seconds`` of timed calls for
  batch 1 and 4x that for batch 256;
* ``train``: ``epoch``, one training epoch after one warm-up step, at ``--threads``
  threads, and ``memory``, what training adds: the peak resident memory of the warm-up step
  and the epoch minus the resident memory after imports, data and model (MB);
* ``train_1t``: the same at one thread (``epoch_1t``, ``memory_1t``); ``scaling`` is
  epoch_1t / epoch.

Beside the libraries, not a contender, "GEMM only (the host's ceiling)" times a fixed
amount of float32 GEMM work (numpy's BLAS) in its ``train`` and ``train_1t`` jobs: its
``scaling`` is what the shared host gave a second thread on perfectly parallel,
compute-bound work in the same runs, the yardstick for every library's. The harness also logs
the hypervisor's steal share around every process.

Every library runs in its own processes at the same thread count (cconv's and its BLAS's
threads, PyTorch's intra-op pool, TensorFlow's intra-op pool; one inter-op thread), in a
rotating order, over ``--runs`` runs (at least 5 for the README); the harness prints the
median and the range of every figure and of each library's ratio to the fastest other
library within each run, checks the targets and writes a JSON log under bench/results/ from
which bench/make_tables.py makes the README's table. Keras runs under TensorFlow's
interpreter (/work/venv-tf/bin/python; another with ``--python keras=PATH``), cconv and
PyTorch under this one. ``--baseline PYTHON`` adds cconv run by another interpreter (e.g.
the environment of the code before a change), reported beside cconv but never "the fastest
other library".

Targets (issue 19): batch 1 and batch 256 at most 0.5x the fastest other library, the epoch
at most 0.4x, the memory training adds at most PyTorch's (the smaller of its two layouts),
2 threads at least 1.8x faster than 1 on the whole epoch. ``bench_isa.py`` measures the same
with every library capped at AVX2.

Usage::

    python bench/bench_speed.py                  # 5 runs, 2 threads, every library
    python bench/bench_speed.py --baseline /work/venvs/baseline/bin/python
    python bench/bench_speed.py --only cconv --only torch-channels-last --job infer
    python bench/bench_speed.py --runs 1 --images 256 --seconds 0.2 --repeats 2 --no-log
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import paper_net  # noqa: E402
from harness import Check, Job, Library, Memory, Target  # noqa: E402

TF_PYTHON = "/work/venv-tf/bin/python"


def measure(settings, predict, step, epoch, prepare=lambda x, y: (x, y)):
    """The figures of one worker process (settings["task"]): "infer" times ``predict(xb)``
    at the batch sizes of settings["batches"]; "train" runs ``step(xb, yb)`` (a warm-up)
    and ``epoch(x, y)`` on the data as ``prepare(x, y)`` makes it for the library."""
    x, y = paper_net.data(settings["images"])
    if settings["task"] == "infer":
        out = {}
        for n in settings.get("batches", (1, 256)):
            xb = x[:n].copy()
            out[f"batch{n}"] = harness.per_call(lambda: predict(xb), settings["repeats"],
                                                seconds=settings["seconds"] * (1 if n == 1 else 4))
        return out
    x, y = prepare(x, y)
    batch = settings["batch"]
    with Memory() as mem:
        step(x[:batch], y[:batch])
        t = time.perf_counter()
        loss = epoch(x, y)
        seconds = time.perf_counter() - t
    return {"epoch": seconds, "memory": mem.growth_mb,
            "info": {"loss": float(loss), "base_mb": mem.base_mb, "peak_reset": mem.reset}}


def worker_cconv(settings):
    from threadpoolctl import threadpool_limits

    import cconv
    from cconv import _core

    threads = settings["threads"]
    cconv.set_num_threads(threads)
    harness.cap_cconv_isa(settings)
    with threadpool_limits(limits=threads, user_api="blas"):   # numpy's BLAS on `threads` too
        model = paper_net.cconv_model()

        def epoch(x, y):
            return model.fit(x, y, epochs=1, batch_size=settings["batch"],
                             verbose=0).history["loss"][-1]

        out = measure(settings, lambda xb: model.predict(xb, batch_size=256),
                      model.train_on_batch, epoch)
    out.setdefault("info", {}).update(threads=cconv.get_num_threads(), file=cconv.__file__,
                                      simd_level=_core.simd_level(),
                                      clones=getattr(_core, "multiversion_targets",   # older builds
                                                     lambda: None)())
    return out


def worker_torch(settings, channels_last):
    import torch

    tr = paper_net.torch_trainer(settings["threads"], channels_last)

    def predict(xb):
        with torch.inference_mode():
            return torch.softmax(tr.model(tr.tensor(xb)), 1).numpy()

    if settings["task"] == "infer":
        tr.model.eval()
    out = measure(settings, predict, tr.step, lambda x, y: tr.epoch(x, y, settings["batch"]),
                  prepare=lambda x, y: (tr.tensor(x), torch.from_numpy(y)))
    out.setdefault("info", {}).update(threads=torch.get_num_threads(),
                                      capability=torch.backends.cpu.get_cpu_capability())
    return out


def worker_keras(settings):
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(settings["threads"])
    tf.config.threading.set_inter_op_parallelism_threads(1)

    model = paper_net.keras_model()

    def fit(x, y):
        return model.fit(x, y, epochs=1, batch_size=settings["batch"],
                         verbose=0).history["loss"][-1]

    # predict_on_batch: the compiled graph without predict()'s per-call data adapter (the
    # fastest of Keras's inference calls at batch 1); the warm-up step compiles fit's function
    out = measure(settings, model.predict_on_batch, fit, fit)
    out.setdefault("info", {}).update(
        threads=tf.config.threading.get_intra_op_parallelism_threads())
    return out


#: The host's own ceiling: float32 GEMMs of this side, this many of them (about 250 GFLOP,
#: some 1.4 s on two of this machine's cores, as long as a cconv epoch).
HOST_SIDE, HOST_GEMMS = 1024, 116


def worker_host(settings):
    """Not a library: the same amount of float32 GEMM work (numpy's BLAS) at the job's
    thread count, reported as its "epoch". A GEMM this size is compute-bound and splits
    evenly, so its epoch_1t / epoch is what the machine itself gives a second thread while
    the libraries' runs are measured: on a shared host, often well under 2. It is measured
    in its own processes, so a library's figure of the same run may still exceed it when the
    host's load changed in between."""
    if settings["task"] != "train":
        return {}
    import numpy as np
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).random((HOST_SIDE, HOST_SIDE), dtype=np.float32)
    out = np.empty_like(a)
    with threadpool_limits(limits=settings["threads"], user_api="blas"):
        np.matmul(a, a, out=out)
        t = time.perf_counter()
        for _ in range(HOST_GEMMS):
            np.matmul(a, a, out=out)
        seconds = time.perf_counter() - t
    return {"epoch": seconds, "info": {"gflop": 2 * HOST_SIDE ** 3 * HOST_GEMMS / 1e9,
                                       "threads": settings["threads"]}}


WORKERS = {"cconv": worker_cconv,
           "host": worker_host,
           "torch-nchw": lambda s: worker_torch(s, channels_last=False),
           "torch-channels-last": lambda s: worker_torch(s, channels_last=True),
           "keras": worker_keras}

TORCH = ("torch-nchw", "torch-channels-last")
LIBRARIES = [Library("cconv"), Library("torch-nchw", "PyTorch NCHW"),
             Library("torch-channels-last", "PyTorch channels_last")]
UNITS = {"batch1": "s", "batch256": "s", "epoch": "s", "epoch_1t": "s", "memory": "MB",
         "memory_1t": "MB", "scaling": "x"}
ROWS = {"batch1": "inference on one image (batch 1)",
        "batch256": "inference on a batch of 256 images",
        "epoch": "one training epoch",
        "memory": "memory training adds (peak minus after imports, data and model)",
        "epoch_1t": "one training epoch at 1 thread",
        "scaling": "whole epoch: 1-thread time / multi-thread time"}

TARGET = Target(
    name="bench_speed",
    description="issue 19's targets on the paper network (random 64x64x3 images): cconv vs "
                "PyTorch (NCHW, channels_last) and Keras 3 on TensorFlow, each in its own "
                "processes",
    libraries=LIBRARIES + [Library("keras", "Keras (TensorFlow)", python=TF_PYTHON),
                           Library("host", "GEMM only (the host's ceiling)", contender=False,
                                   reference=True)],
    rows=[(label, metric) for metric, label in ROWS.items()],
    units=UNITS,
    higher_is_better=("scaling",),
    jobs=[Job("infer", {"task": "infer"}), Job("train", {"task": "train"}),
          Job("train_1t", {"task": "train", "threads": 1}, suffix="_1t")],
    derived={"scaling": lambda m: m["epoch_1t"] / m["epoch"]},
    checks=[Check("batch-1 inference vs the fastest other library", "batch1", "cconv", 0.5),
            Check("batch-256 inference vs the fastest other library", "batch256", "cconv", 0.5),
            Check("training epoch vs the fastest other library", "epoch", "cconv", 0.4),
            Check("memory training adds vs PyTorch's (its smaller layout)", "memory", "cconv",
                  1.0, against=TORCH),
            Check("whole epoch: 2 threads vs 1 (epoch_1t / epoch)", "scaling", "cconv", 1.8,
                  against="value")],
)


def options(p):
    paper_net.options(p)
    p.add_argument("--seconds", type=float, default=1.5,
                   help="timed seconds of the batch-1 figure (batch 256: 4x)")
    p.add_argument("--repeats", type=int, default=7,
                   help="timed batches of calls per inference figure (the fastest counts)")


if __name__ == "__main__":
    sys.exit(harness.run(TARGET, WORKERS, __file__, options))
