"""Benchmark: data-parallel training over MPI on one machine (cconv.distributed).

Trains the paper network (models.paper_lfw: 64x64x3 input, 34 classes, 724,962
parameters; Adam, batch 128 as the global batch) on ``--images`` random images and
measures the samples per second of whole epochs under these configurations, each a fresh
job per run:

* ``1x2``: one process, 2 threads, ``fit`` without MPI (the reference);
* ``2x1-blocking``: ``mpiexec -n 2``, 1 thread per rank, ``fit(distributed=...)`` with
  one bucket summed by a blocking ``Allreduce`` after the backward pass (what
  ``distributed=True`` does for this network);
* ``2x1-overlap``: the same with 1 MiB buckets, each ``Iallreduce`` started from the
  backward pass as soon as its layers are done (``DataParallel(overlap=True)``);
* ``1x1``: one process, 1 thread: the compute time per sample of one core, which the
  README's scaling table uses.

Each run warms up for one epoch (it includes the broadcast), then times ``--epochs``
epochs (wall time between ``on_epoch_begin`` and ``on_epoch_end`` on rank 0, validation
excluded: there is none). The MPI runs also report per step (``DataParallel.stats``) the
communication the backward pass did not hide (packing the buckets, the sums left after the
backward pass, unpacking: ``pack_s + reduce_s``) and, apart from it, the time spent
waiting for the other rank to finish its step (``sync_s``: on a shared machine the
ranks are slowed unequally), and,
after training, the transport alone (``_probe``): a bare ``Allreduce`` of the gradients'
size, and what is left of an ``Iallreduce`` of that size after 25 ms of work on both ranks
with the backward pass's ``Testall`` calls in between, and how much sooner that work plus
the sum ends than the same work followed by a blocking ``Allreduce`` (medians of 15).

Runs are interleaved: ``--rounds`` rounds, the order of the configurations rotating from
round to round. The report gives for each configuration the median and the range of its
runs, and the per-round ratios of samples per second to ``1x2`` (median and range); the
raw numbers, the load average before and after each run and the thread pools go to
``bench/results/distributed-<time>.json``.

The machine is shared with other jobs: absolute figures drift with its load; the ratios
of runs made seconds apart drift less, and an MPI job (two processes that wait for each
other at every step) suffers more from a busy machine than one process does. For a quiet
re-run, stop other work and run::

    python bench/bench_distributed.py --rounds 7

Usage::

    python bench/bench_distributed.py [--rounds 5] [--epochs 2] [--images 1777]
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

CONFIGS = {
    "1x2": dict(ranks=1, threads=2, distributed=False),
    "2x1-blocking": dict(ranks=2, threads=1, distributed=True, overlap=False, bucket_bytes=1 << 30),
    "2x1-overlap": dict(ranks=2, threads=1, distributed=True, overlap=True, bucket_bytes=1 << 20),
    "1x1": dict(ranks=1, threads=1, distributed=False),
}


# --------------------------------------------------------------------------------------
# worker (every rank runs it)
# --------------------------------------------------------------------------------------
def worker(args):
    import numpy as np

    import cconv
    from cconv import callbacks, models, optim

    cconv.set_num_threads(args.threads)
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
        threadpool_limits(args.threads, user_api="blas")
    except ImportError:
        threadpool_info = list
    rng = np.random.default_rng(0)
    x = rng.random((args.images, 64, 64, 3), dtype=np.float32)
    y = rng.integers(0, 34, args.images)
    model = models.paper_lfw(num_classes=34, seed=0)
    model.compile(optim.Adam(lr=1e-3), "categorical_crossentropy")

    distributed = False
    world = None
    if args.distributed:
        from cconv import distributed as D
        world = D.init()
        distributed = D.DataParallel(bucket_bytes=args.bucket_bytes, overlap=bool(args.overlap))

    times = []

    class Clock(callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.t)

    steps = -(-args.images // args.batch)
    model.fit(x, y, epochs=1, batch_size=args.batch, verbose=0, distributed=distributed)      # warm-up
    history = model.fit(x, y, epochs=args.epochs, batch_size=args.batch, verbose=0, distributed=distributed,
                        callbacks=[Clock()])
    result = {"epoch_s": times, "samples_per_s": [args.images / t for t in times],
              "step_s": statistics.median(times) / steps, "loss": history.history["loss"][-1],
              "threads": cconv.get_num_threads(), "blas": [
                  f"{d.get('internal_api')}:{d.get('num_threads')}" for d in threadpool_info()
                  if d.get("user_api") == "blas"]}
    if distributed:
        st = distributed.stats                  # of the last fit: the timed epochs
        result.update(comm_step_s=(st["pack_s"] + st["reduce_s"]) / st["steps"],
                      reduce_step_s=st["reduce_s"] / st["steps"], sync_step_s=st["sync_s"] / st["steps"],
                      buckets=st["buckets"], grad_bytes=st["bytes"], ranks=world.size)
        result.update(_probe(world, st["bytes"] // 4))
        if world.rank != 0:
            return
    print("@@result " + json.dumps(result), flush=True)


def _probe(world, n, reps=15, chunks=6):
    """The transport alone, without a training step's imbalance between the ranks: a bare
    ``Allreduce`` of ``n`` float32 (after a barrier), and the same sum as an ``Iallreduce``
    started before ``chunks - 1`` chunks of identical work on both ranks (BLAS matrix
    products of about 5 ms each), with ``Testall`` after each chunk as the backward
    pass's layers do, then ``Wait``: the time left in ``Wait`` is what overlapping did not
    hide."""
    import numpy as np
    from mpi4py import MPI
    comm = world.comm
    buf = np.ones(n, dtype=np.float32)
    a = np.random.default_rng(0).random((256, 256))

    def chunk():
        t = time.perf_counter()
        while time.perf_counter() - t < 0.005:
            a.dot(a)

    bare, left, blocking, overlapped = [], [], [], []
    for _ in range(reps):
        comm.Barrier()
        t0 = time.perf_counter()
        for _ in range(chunks - 1):
            chunk()
        t = time.perf_counter()
        comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        bare.append(time.perf_counter() - t)
        blocking.append(time.perf_counter() - t0)
        comm.Barrier()
        t0 = time.perf_counter()
        req = comm.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        for _ in range(chunks - 1):
            chunk()
            MPI.Request.Testall([req])
        t = time.perf_counter()
        req.Wait()
        left.append(time.perf_counter() - t)
        overlapped.append(time.perf_counter() - t0)
    return {"allreduce_s": statistics.median(bare), "iallreduce_wait_s": statistics.median(left),
            "overlap_saves_s": statistics.median([b - o for b, o in zip(blocking, overlapped)])}


# --------------------------------------------------------------------------------------
# parent
# --------------------------------------------------------------------------------------
def _mpiexec():
    for cand in (os.path.join(os.path.dirname(sys.executable), "mpiexec"), shutil.which("mpiexec")):
        if cand and os.path.isfile(cand):
            return cand
    try:
        import mpi4py
        cand = os.path.join(os.path.dirname(mpi4py.__file__), *[".."] * 4, "bin", "mpiexec")
        if os.path.isfile(cand):
            return os.path.normpath(cand)
    except ImportError:
        pass
    raise SystemExit("mpiexec not found (pip install \"cconv[mpi]\")")


def run(name, args):
    cfg = CONFIGS[name]
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--threads", str(cfg["threads"]),
           "--images", str(args.images), "--batch", str(args.batch), "--epochs", str(args.epochs)]
    if cfg["distributed"]:
        cmd += ["--distributed", "--overlap", str(int(cfg["overlap"])), "--bucket-bytes", str(cfg["bucket_bytes"])]
        cmd = [_mpiexec(), "-n", str(cfg["ranks"])] + cmd
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    load_before = os.getloadavg()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: {proc.stderr[-3000:]}")
    line = [l for l in proc.stdout.splitlines() if l.startswith("@@result ")][-1]
    result = json.loads(line[len("@@result "):])
    result.update(config=name, load_before=load_before, load_after=os.getloadavg(),
                  samples_per_s_median=statistics.median(result["samples_per_s"]))
    return result


#: The on-paper scaling table (README): links as (name, bytes per second, latency per
#: message in seconds): TCP over 10 Gbit/s Ethernet, RDMA (InfiniBand/RoCE) at 100 Gbit/s.
LINKS = [("10 Gbit/s", 10e9 / 8, 25e-6), ("100 Gbit/s", 100e9 / 8, 2e-6)]
RANKS = (8, 64, 512)
PAPER_PARAMS = 724_962
BIG_PARAMS = 25_000_000


def ring_allreduce_s(params, p, bandwidth, latency, itemsize=4):
    """Ring allreduce of ``params`` float32 gradients over ``p`` ranks: every rank sends and
    receives 2 (p - 1) / p times the gradient bytes, in 2 (p - 1) messages."""
    return 2 * (p - 1) / p * params * itemsize / bandwidth + 2 * (p - 1) * latency


def table(log_path):
    """The README's table from a log: the allreduce per step against the measured compute."""
    with open(log_path) as f:
        log = json.load(f)
    t_paper = log["summary"]["1x1"]["compute_s_per_sample_per_rank"]["median"]
    t_big = t_paper * BIG_PARAMS / PAPER_PARAMS
    rows = ["| network | link | allreduce per step: 8 / 64 / 512 ranks | samples per rank per step "
            "for the allreduce to cost <= 10% of the compute: 8 / 64 / 512 ranks |", "|---|---|---|---|"]
    for label, params, t in (("paper, 725k parameters (2.9 MB)", PAPER_PARAMS, t_paper),
                             ("25M parameters (100 MB)", BIG_PARAMS, t_big)):
        for link, bw, lat in LINKS:
            cost = [ring_allreduce_s(params, p, bw, lat) for p in RANKS]
            need = [10 * c / t for c in cost]
            rows.append(f"| {label} | {link} | " + " / ".join(f"{1e3 * c:.3g} ms" for c in cost)
                        + " | " + " / ".join(f"{n:.2g}" for n in need) + " |")
    print(f"compute per sample, one core (1x1, median of {len(log['runs']['1x1'])} runs): "
          f"paper network {1e3 * t_paper:.2f} ms; 25M network (scaled by parameters) {1e3 * t_big:.0f} ms")
    print("\n".join(rows))


def _spread(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--distributed", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--overlap", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--bucket-bytes", type=int, default=1 << 20, help=argparse.SUPPRESS)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per run (after one warm-up epoch)")
    p.add_argument("--images", type=int, default=1777)
    p.add_argument("--batch", type=int, default=128, help="global batch")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {list(CONFIGS)}")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--table", metavar="LOG", help="print the README's scaling table from a log and exit")
    args = p.parse_args(argv)
    if args.table:
        table(args.table)
        return 0
    if args.worker:
        worker(args)
        return 0
    names = args.configs.split(",")
    runs = {name: [] for name in names}
    orders = []
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        orders.append(order)
        for name in order:
            runs[name].append(run(name, args))
            time.sleep(0.5)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{n} {runs[n][-1]['samples_per_s_median']:.1f}/s" for n in names), flush=True)
    summary = {}
    for name in names:
        sps = [x["samples_per_s_median"] for x in runs[name]]
        s = {"samples_per_s": _spread(sps), "step_s": _spread([x["step_s"] for x in runs[name]]),
             "compute_s_per_sample_per_rank": _spread(
                 [CONFIGS[name]["ranks"] / x["samples_per_s_median"] for x in runs[name]])}
        if "1x2" in runs and name != "1x2":
            s["ratio_to_1x2"] = _spread([x["samples_per_s_median"] / a["samples_per_s_median"]
                                         for x, a in zip(runs[name], runs["1x2"])])
        if CONFIGS[name]["distributed"]:
            s["comm_step_s"] = _spread([x["comm_step_s"] for x in runs[name]])
            s["reduce_step_s"] = _spread([x["reduce_step_s"] for x in runs[name]])
            s["sync_step_s"] = _spread([x["sync_step_s"] for x in runs[name]])
            s["comm_share_of_step"] = _spread([x["comm_step_s"] / x["step_s"] for x in runs[name]])
            s["allreduce_s"] = _spread([x["allreduce_s"] for x in runs[name]])
            s["iallreduce_wait_s"] = _spread([x["iallreduce_wait_s"] for x in runs[name]])
            s["overlap_saves_s"] = _spread([x["overlap_saves_s"] for x in runs[name]])
            s["grad_bytes"] = runs[name][0]["grad_bytes"]
            s["buckets"] = runs[name][0]["buckets"]
        summary[name] = s
    for name in names:
        s = summary[name]
        line = (f"{name:>13}: {s['samples_per_s']['median']:7.1f} samples/s "
                f"({s['samples_per_s']['min']:.1f}-{s['samples_per_s']['max']:.1f})")
        if "ratio_to_1x2" in s:
            q = s["ratio_to_1x2"]
            line += f"  x{q['median']:.3f} of 1x2 ({q['min']:.3f}-{q['max']:.3f})"
        if "comm_step_s" in s:
            c, a, w = s["comm_step_s"], s["allreduce_s"], s["iallreduce_wait_s"]
            y = s["sync_step_s"]
            line += (f"\n{'':15}comm {1e3 * c['median']:.1f} ms/step ({1e3 * c['min']:.1f}-{1e3 * c['max']:.1f}), "
                     f"{100 * s['comm_share_of_step']['median']:.1f}% of a step (sums left after backward "
                     f"{1e3 * s['reduce_step_s']['median']:.1f} ms); waiting for the other rank "
                     f"{1e3 * y['median']:.1f} ms/step ({1e3 * y['min']:.1f}-{1e3 * y['max']:.1f})"
                     f"\n{'':15}bare Allreduce of "
                     f"{s['grad_bytes'] / 1e6:.2f} MB {1e3 * a['median']:.2f} ms, Iallreduce left after "
                     f"overlapped work {1e3 * w['median']:.2f} ms (saves {1e3 * s['overlap_saves_s']['median']:.2f} "
                     f"ms of work + Allreduce)")
        print(line)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"distributed-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(path, "w") as f:
        json.dump({"args": vars(args), "configs": {n: CONFIGS[n] for n in names}, "orders": orders,
                   "runs": runs, "summary": summary, "machine": {
                       "platform": platform.platform(), "cpus": os.cpu_count(),
                       "note": "shared 2-core machine: other engineers' jobs ran during the benchmark"}},
                  f, indent=1)
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
