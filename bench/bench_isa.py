#!/usr/bin/env python
"""Benchmark: cconv against PyTorch on a machine without AVX-512 (simulated), interleaved.

bench_speed.py's batch-1 inference and training epoch of the paper network, cconv against
PyTorch NCHW and channels_last, with every library capped at AVX2 (``--isa avx2``, the
default here; bench/harness.py's ``isa_env``):

* cconv: its vectorised kernels at simd_level 1 (AVX2 + FMA), and the OpenBLAS of
  numpy/scipy at its Haswell kernels (``OPENBLAS_CORETYPE=Haswell``);
* PyTorch: ``ATEN_CPU_CAPABILITY=avx2``, ``ONEDNN_MAX_CPU_ISA=AVX2`` (``DNNL_MAX_CPU_ISA``).

cconv's plain C loops (the Winograd transforms, the fused pools, the elementwise kernels)
are compiled with ``target_clones``; the loader picks their clone from the CPU's features,
not from the cap, so an ordinary build keeps running their AVX-512 clones here. For a
simulation with no AVX-512 anywhere in cconv, run its worker from a build without that
clone (``CFLAGS=-DCCONV_CLONES_MAX_AVX2 pip install .``; each worker logs
``_core.multiversion_targets()`` as ``clones``)::

    python bench/bench_isa.py --python cconv=/path/to/avx2-build/bin/python \
        --baseline /path/to/ordinary-build/bin/python

Each library runs two processes per run (``infer``: batch 1; ``train``: one epoch after a
warm-up step), in a rotating order over ``--runs`` runs (at least 5 for the README); ratios
are taken within a run against the faster PyTorch layout. ``--baseline PYTHON`` adds cconv
under another interpreter (e.g. the code before a change). The log goes to
bench/results/bench_isa-avx2_*.json; bench/make_tables.py gives it its own table.

Targets (issue 19, no AVX-512): the epoch at most 0.6x PyTorch's, batch 1 at most 0.7x.

Usage::

    python bench/bench_isa.py --baseline /work/venvs/baseline/bin/python
    python bench/bench_isa.py --isa native          # the same, nothing capped
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_speed  # noqa: E402
import harness  # noqa: E402
from harness import Check, Job, Target  # noqa: E402

TARGET = Target(
    name="bench_isa",
    description="batch-1 inference and a training epoch of the paper network: cconv vs "
                "PyTorch (NCHW, channels_last), each in its own processes",
    libraries=bench_speed.LIBRARIES,
    rows=[(bench_speed.ROWS[m], m) for m in ("batch1", "epoch", "memory")],
    units=bench_speed.UNITS,
    jobs=[Job("infer", {"task": "infer", "batches": [1]}), Job("train", {"task": "train"})],
    checks=[Check("training epoch vs the faster PyTorch layout", "epoch", "cconv", 0.6),
            Check("batch-1 inference vs the faster PyTorch layout", "batch1", "cconv", 0.7)],
)


def options(p):
    bench_speed.options(p)
    p.set_defaults(isa="avx2")


if __name__ == "__main__":
    sys.exit(harness.run(TARGET, bench_speed.WORKERS, __file__, options))
