"""The compiled core under threads and repetition: no leak, thread-safe, GIL released."""
import sys
import threading
import time

import numpy as np
import pytest

import cconv
from cconv import functional as F


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def _step(x, w, b):
    y = F.conv2d(x, w, b, padding=1)
    dx, dw, db = F.conv2d_backward(y, x, w, padding=1)
    p, a = F.max_pool2d(y)
    F.max_pool2d_backward(p, a, y.shape)
    q = F.avg_pool2d(y)
    F.avg_pool2d_backward(q, y.shape)
    return dx


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_repeated_forward_backward_keeps_rss_flat():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 8, 3)).astype(np.float32)
    w = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)
    b = np.zeros(4, np.float32)
    for _ in range(500):  # warm up allocator pools and lazy initialisation
        _step(x, w, b)
    before = _rss_bytes()
    for _ in range(10_000):
        _step(x, w, b)
    grown = _rss_bytes() - before
    # A leak of even one small buffer per call would add tens of MB over 10,000 calls.
    assert grown < 4 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB over 10,000 iterations"


def test_concurrent_calls_match_serial_results():
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((3, 12, 12, 4)) for _ in range(6)]
    w = rng.standard_normal((3, 3, 4, 5))
    serial = [_step(x, w, None) for x in xs]
    results = [None] * len(xs)
    errors = []

    def work(i):
        try:
            for _ in range(20):
                results[i] = _step(xs[i], w, None)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for got, want in zip(results, serial):
        np.testing.assert_array_equal(got, want)


def test_gil_is_released_during_a_convolution(restore_threads):
    # While a long convolution runs in another thread, this thread keeps executing Python
    # code in the middle of the call: impossible if the extension held the GIL.
    rng = np.random.default_rng(2)
    w = rng.standard_normal((3, 3, 16, 32)).astype(np.float32)
    cconv.set_num_threads(1)
    # A batch large enough for a one-thread call of about 80 ms, whatever the machine's speed.
    x = rng.standard_normal((8, 48, 48, 16)).astype(np.float32)
    F.conv2d(x, w)
    t0 = time.perf_counter()
    F.conv2d(x, w)
    per_image = (time.perf_counter() - t0) / len(x)
    x = np.concatenate([x] * int(np.clip(0.08 / per_image / len(x), 1, 200)))
    span = []
    stamps = []
    done = threading.Event()

    def run():
        t0 = time.perf_counter()
        F.conv2d(x, w)
        span.extend([t0, time.perf_counter()])
        done.set()

    t = threading.Thread(target=run)
    t.start()
    while not done.is_set():
        stamps.append(time.perf_counter())
        time.sleep(0)  # give the other thread every chance to take the GIL
    t.join()
    t0, t1 = span
    quarter = (t1 - t0) / 4
    middle = [s for s in stamps if t0 + quarter < s < t1 - quarter]
    assert t1 - t0 > 0.01
    assert len(middle) > 10, (
        f"this thread ran {len(middle)} times in the middle half of a {(t1 - t0) * 1e3:.0f} ms call")


def test_blas_dimension_overflow_is_rejected_before_any_copy():
    # KH*KW*C_in = 2**31 would wrap a 32-bit BLAS dimension; broadcast views make the
    # arrays without memory, and the check must come before any contiguous copy.
    x = np.broadcast_to(np.float32(1), (1, 65536, 2, 16384))
    w = np.broadcast_to(np.float32(1), (65536, 2, 16384, 1))
    with pytest.raises(ValueError, match="32-bit BLAS"):
        F.conv2d(x, w)
    with pytest.raises(ValueError, match="32-bit BLAS"):
        F.conv2d_backward(np.zeros((1, 1, 1, 1), np.float32), x, w)


_SPY = """
import importlib, json, os
real, seen = importlib.import_module, {}
KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
def spy(name, *args):
    if name == "cconv._core":
        seen.update({k: os.environ.get(k) for k in KEYS})
    return real(name, *args)
importlib.import_module = spy
import cconv
print(json.dumps([seen, {k: os.environ.get(k) for k in KEYS}]))
"""


@pytest.mark.parametrize("user, during, after", [
    # Nothing set: a short spin while cconv's OpenMP runtime loads, gone from the environment after.
    ({}, {"GOMP_SPINCOUNT": "10000", "KMP_BLOCKTIME": "1"}, {}),
    # The user's wait policy wins (GOMP_SPINCOUNT would override it), and stays.
    ({"OMP_WAIT_POLICY": "PASSIVE"}, {"OMP_WAIT_POLICY": "PASSIVE"}, {"OMP_WAIT_POLICY": "PASSIVE"}),
    # A variable the user set is neither replaced nor removed.
    ({"GOMP_SPINCOUNT": "5"}, {"GOMP_SPINCOUNT": "5", "KMP_BLOCKTIME": "1"}, {"GOMP_SPINCOUNT": "5"}),
])
def test_openmp_spin_setting_is_in_the_environment_only_while_cconv_loads(user, during, after):
    """The mechanism: what the environment holds while cconv._core loads and after. (Which
    runtime the setting then reaches is what the process maps decide: see the next test.)"""
    import json
    import os
    import subprocess
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")}
    env.update(user)
    out = subprocess.run([sys.executable, "-c", _SPY], env=env, capture_output=True, text=True,
                         check=True).stdout
    seen, left = json.loads(out)
    assert {k: v for k, v in seen.items() if v is not None} == during
    assert {k: v for k, v in left.items() if v is not None} == after


_OMP_PROBE = r"""
import json, os, sys, threading, time

def runtimes():
    # OpenMP runtime files mapped into this process (GNU, LLVM, Intel)
    found = set()
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1]
            if os.path.basename(path).startswith(("libgomp", "libomp", "libiomp")):
                found.add(os.path.realpath(path))
    return found

def others_cpu_ms():
    # CPU time of every thread but this one (schedstat: nanoseconds on a CPU)
    total, me = 0, threading.get_native_id()
    for tid in os.listdir("/proc/self/task"):
        if int(tid) != me:
            try:
                with open(f"/proc/self/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except OSError:
                pass
    return total / 1e6

def idle_spin_ms(op):
    # CPU that the idle worker threads burn in the 60 ms after a parallel call (median of 3)
    spins = []
    for _ in range(3):
        op()
        t = others_cpu_ms()
        time.sleep(0.06)
        spins.append(others_cpu_ms() - t)
    return sorted(spins)[1]

def load(name):
    if name == "torch":
        import torch
        torch.set_num_threads(2)
        t = torch.ones(4_000_000)
        return lambda: (t * 2.0).sum()
    import numpy as np
    import cconv
    from cconv import functional as F
    cconv.set_num_threads(2)
    x, w = np.ones((8, 32, 32, 16), np.float32), np.ones((3, 3, 16, 16), np.float32)
    return lambda: F.conv2d(x, w)

out, ops = {}, {}
for name in sys.argv[1:]:
    before = runtimes()
    ops[name] = load(name)
    out[name + "_loaded"] = sorted(runtimes() - before)
for name in sys.argv[1:]:
    out[name + "_spin_ms"] = idle_spin_ms(ops[name])
print(json.dumps(out))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_openmp_settings_follow_the_runtime_the_process_maps():
    """Whose threads cconv's spin setting reaches, judged by what the process maps and by
    what the threads do (CPU time burnt while idle), not by the environment.

    libgomp reads GOMP_SPINCOUNT once, when it initialises: whichever library loads a runtime
    first decides its settings, and a library whose runtime has the same soname (PyTorch's
    CPU wheel ships a libgomp.so.1, as the system's is) uses that same runtime. A source
    install of cconv links the system's libgomp.so.1, so: cconv imported first -> one
    runtime, PyTorch's threads spin as briefly as cconv's; PyTorch first -> cconv's setting
    never reaches the runtime. cconv's wheel vendors a renamed libgomp: two runtimes, each
    with its own settings. The README says so; this test checks whichever case it runs in.
    """
    pytest.importorskip("torch")
    import json
    import os
    import subprocess
    from cconv import _core
    if not _core.openmp_enabled():
        pytest.skip("built without OpenMP")
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OMP_NUM_THREADS")}

    def run(*order):
        out = subprocess.run([sys.executable, "-c", _OMP_PROBE, *order], env=env, check=True,
                             capture_output=True, text=True, timeout=300).stdout
        return json.loads(out.strip().splitlines()[-1])

    first, second = run("cconv", "torch"), run("torch", "cconv")
    default = second["torch_spin_ms"]       # PyTorch alone loaded the runtime: its defaults
    if default < 1.0:
        pytest.skip(f"the default spin ({default:.2f} ms) is too short to tell apart")
    short = default / 4                    # cconv's setting spins about 0.2 ms, the default ms

    assert first["cconv_loaded"], "importing cconv mapped no OpenMP runtime"
    assert first["cconv_spin_ms"] < short, first          # cconv first: its setting applies
    shared = not first["torch_loaded"]     # PyTorch, imported second, mapped no runtime of its own
    if shared:
        assert not second["cconv_loaded"], second         # the other order: one runtime too
        assert first["torch_spin_ms"] < short, first      # PyTorch inherits cconv's setting
        assert second["cconv_spin_ms"] > short, second    # cconv's never reached the runtime
    else:
        assert first["torch_spin_ms"] > short, first      # PyTorch keeps its defaults
        assert second["cconv_spin_ms"] < short, second    # and cconv its setting
