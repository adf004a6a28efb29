"""Threads and environment: fork safety, thread-count caps, bad environment values, BLAS limits.

Each test reproduces a finding of issue 20 that failed before the fix (see the docstrings).
"""
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import numpy as np
import pytest

import cconv
from cconv import _config
from cconv import functional as F

TIMEOUT = 60


def _conv_inputs():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((16, 40, 40, 16)).astype(np.float32),
            rng.standard_normal((3, 3, 16, 16)).astype(np.float32))


def _child_conv(_):
    x, w = _conv_inputs()
    return F.conv2d(x, w), cconv.get_num_threads()


def _python(code, env=None, timeout=TIMEOUT):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, **(env or {})))


# --------------------------------------------------------------------------- fork
def _wait(pid, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def test_os_fork_child_runs_kernels_after_the_parent_did(restore_threads):
    """Before: the child hung forever in libgomp (3 of 3)."""
    cconv.set_num_threads(2)
    x, w = _conv_inputs()
    expected = F.conv2d(x, w)                     # the parent's OpenMP threads now exist
    pid = os.fork()
    if pid == 0:                                  # child: never return into pytest
        code = 1
        try:
            y = F.conv2d(x, w)
            dx, dw, db = F.conv2d_backward(np.ones_like(y), x, w)
            p, _ = F.max_pool2d(y, 2)
            code = 0 if np.array_equal(y, expected) and cconv.get_num_threads() == 1 else 2
        finally:
            os._exit(code)
    status = _wait(pid, TIMEOUT)
    assert status is not None, "the forked child hung"
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status


def test_multiprocessing_fork_pool_runs_kernels_after_the_parent_did(restore_threads):
    """Before: every worker of a fork-started Pool hung."""
    cconv.set_num_threads(2)
    expected, _ = _child_conv(None)
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2) as pool:
        try:
            results = pool.map_async(_child_conv, range(4)).get(timeout=TIMEOUT)
        except multiprocessing.TimeoutError:
            pool.terminate()
            pytest.fail("the fork-started workers hung")
    for y, threads in results:
        np.testing.assert_array_equal(y, expected)
        assert threads == 1


def test_forked_child_keeps_all_threads_when_the_parent_ran_no_parallel_kernel():
    out = _python("""
        import os, cconv, numpy as np
        from cconv import functional as F
        cconv.set_num_threads(2)           # set, but no kernel has run
        pid = os.fork()
        if pid == 0:
            y = F.conv2d(np.ones((4, 16, 16, 8), np.float32), np.ones((3, 3, 8, 8), np.float32))
            os._exit(0 if cconv.get_num_threads() == 2 else 3)
        print(os.waitpid(pid, 0)[1])
        """)
    assert out.returncode == 0 and out.stdout.strip() == "0", out


def test_forked_child_warns_when_asked_for_more_threads(restore_threads):
    cconv.set_num_threads(2)
    F.conv2d(*_conv_inputs())
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            with pytest.warns(RuntimeWarning, match="forked"):
                cconv.set_num_threads(2)
            code = 0 if cconv.get_num_threads() == 1 else 2
        finally:
            os._exit(code)
    status = _wait(pid, TIMEOUT)
    assert status is not None and os.WEXITSTATUS(status) == 0, status


# --------------------------------------------------------------------------- thread counts
def test_set_num_threads_is_capped_with_a_warning(restore_threads):
    """Before: set_num_threads(10**6) was accepted (1,600-2,000 OS threads were started)."""
    cap = _config.MAX_THREADS_PER_CPU * _config._available_cpus()
    with pytest.warns(RuntimeWarning, match="asks for 1000000 threads"):
        cconv.set_num_threads(10**6)
    assert cconv.get_num_threads() == cap
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cconv.set_num_threads(cap)          # at the cap: no warning, kept
    assert cconv.get_num_threads() == cap


@pytest.mark.parametrize("value, expected", [("100000", "cap"), ("garbage", "default"),
                                             ("0", "default"), ("-3", "default")])
def test_omp_num_threads_from_the_environment(restore_threads, monkeypatch, value, expected):
    """Before: 100000 was used as given; 'garbage' made every kernel raise ValueError
    (libgomp itself only warns and uses its default)."""
    cconv.set_num_threads(None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    default = cconv.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    with pytest.warns(RuntimeWarning, match="OMP_NUM_THREADS"):
        n = cconv.get_num_threads()
    assert n == (_config.MAX_THREADS_PER_CPU * _config._available_cpus() if expected == "cap" else default)
    y = F.conv2d(*_conv_inputs())            # kernels run
    assert y.shape == (16, 38, 38, 16)


@pytest.mark.parametrize("value", ["garbage", "-1", "1.5e9"])
def test_bad_cache_bytes_environment_warns_and_uses_the_default(value):
    """Before: CCONV_CACHE_BYTES=garbage made `import cconv` fail."""
    out = _python("import cconv; print(cconv.get_cache_limit())", env={"CCONV_CACHE_BYTES": value})
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == _config.CACHE_LIMIT_DEFAULT
    assert "CCONV_CACHE_BYTES" in out.stderr and "RuntimeWarning" in out.stderr


def test_huge_cache_bytes_means_no_bound():
    out = _python("import cconv, sys; print(cconv.get_cache_limit() == sys.maxsize)",
                  env={"CCONV_CACHE_BYTES": "9" * 30})
    assert out.returncode == 0 and out.stdout.strip() == "True", out


def test_thread_creation_failure_is_an_exception_not_an_exit():
    """Under an address-space limit too small for 8 thread stacks. Before: the process died
    with 'libgomp: Thread creation failed' (exit status 1), which no except can catch."""
    out = _python("""
        import resource, numpy as np, cconv
        from cconv import functional as F
        x = np.ones((64, 64, 64, 16), np.float32); w = np.ones((3, 3, 16, 16), np.float32)
        cconv.set_num_threads(1)
        F.conv2d(x, w)
        vm = [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize")][0]
        resource.setrlimit(resource.RLIMIT_AS, (vm + (20 << 20),) * 2)
        cconv.set_num_threads(8)
        try:
            F.conv2d(x, w)
            print("ran")
        except RuntimeError as exc:
            print("RuntimeError:", exc)
        cconv.set_num_threads(1)
        F.conv2d(x, w)                       # the process goes on with fewer threads
        print("alive")
        """)
    assert out.returncode == 0, out.stderr
    assert "alive" in out.stdout, out.stdout
    assert "RuntimeError: cconv could not start 8 threads" in out.stdout or "ran" in out.stdout, out.stdout


# --------------------------------------------------------------------------- BLAS limits
def _blas_counts():
    return [lib.get_num_threads() for lib in _config._blas_libs()]


def test_blas_limit_applies_in_a_thread_other_than_the_first(restore_threads):
    """threadpoolctl lets only the first thread that set an OpenBLAS pool change it. Before:
    a kernel in any other Python thread ran with BLAS unlimited, and its restore was lost."""
    before = _blas_counts()
    if not before or max(before) < 2:
        pytest.skip("needs a BLAS running more than one thread")
    with _config.blas_threads(1):             # the main thread sets BLAS first
        assert max(_blas_counts()) == 1
    assert _blas_counts() == before
    seen = []

    def worker():
        with _config.blas_threads(1):
            seen.append(_blas_counts())
        seen.append(_blas_counts())

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == [[1] * len(before), before]


def test_nested_blas_limits_lower_and_the_last_one_out_restores(restore_threads):
    """A block inside another lowers the limit further when its own is smaller and changes
    nothing otherwise (a batch-1 predict limits BLAS once around all its kernels); the
    outermost block puts the setting back, also around a whole predict."""
    if not _config._blas_libs():
        pytest.skip("needs threadpoolctl and a BLAS it controls")
    from threadpoolctl import threadpool_limits
    with threadpool_limits(4, user_api="blas"):
        _nested_blas_limits()


def _nested_blas_limits():
    before = _blas_counts()
    assert before == [4] * len(before)
    with _config.blas_threads(2):
        assert max(_blas_counts()) == 2
        with _config.blas_threads(4):
            assert max(_blas_counts()) == 2
        with _config.blas_threads(1):
            assert _blas_counts() == [1] * len(before)
        assert _blas_counts() == [1] * len(before)
    assert _blas_counts() == before
    import cconv
    from cconv.layers import Dense
    model = cconv.Sequential([Dense(3)], input_shape=(4,), seed=0)
    model.predict(np.ones((1, 4), np.float32))
    assert _blas_counts() == before


def test_two_threads_changing_thread_counts_leave_blas_as_it_was():
    """Before: in 4 of 5 runs BLAS stayed at 1 thread afterwards."""
    out = _python("""
        import threading, numpy as np, cconv
        from cconv import _config, functional as F
        x = np.random.rand(4, 16, 16, 8).astype(np.float32)
        w = np.random.rand(3, 3, 8, 8).astype(np.float32)
        libs = _config._blas_libs()
        before = [lib.get_num_threads() for lib in libs]
        def run():
            for i in range(200):
                cconv.set_num_threads(1 + i % 2)
                F.conv2d(x, w)
        bad = 0
        for _ in range(5):
            ts = [threading.Thread(target=run) for _ in range(2)]
            [t.start() for t in ts]
            [t.join() for t in ts]
            bad += [lib.get_num_threads() for lib in libs] != before
        print(bad, before)
        """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "0", out.stdout


def test_a_training_step_and_a_predict_set_blas_once(restore_threads, monkeypatch):
    """Every change of OpenBLAS's thread count wakes its idle workers, which then spin
    against cconv's threads. A pass sets BLAS to one thread once for all its kernels: before,
    each kernel whose GEMMs BLAS might thread lowered and restored it (a training step of
    the paper network changed the counts 52 times)."""
    if not _config._blas_libs():
        pytest.skip("needs threadpoolctl and a BLAS it controls")
    from threadpoolctl import threadpool_limits
    from cconv.layers import Conv2D, Dense, Flatten, MaxPool2D
    monkeypatch.setattr(F, "_BLAS_SERIAL_MNK", 0)       # every kernel's GEMMs count as large
    cconv.set_num_threads(2)
    model = cconv.Sequential([Conv2D(16, 3, activation="relu"), Conv2D(16, 3, padding="same"),
                              MaxPool2D(2), Flatten(), Dense(5, activation="softmax")],
                             input_shape=(12, 12, 3), seed=0)
    model.compile("adam", "categorical_crossentropy")
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 12, 12, 3)).astype(np.float32), rng.integers(0, 5, 8)
    changes = []
    with threadpool_limits(2, user_api="blas"):
        before = _blas_counts()
        if max(before) < 2:
            pytest.skip("needs a BLAS running more than one thread")
        monkeypatch.setattr(_config, "_blas_calls",
                            [(get, lambda n, put=put: (changes.append(n), put(n))[1])
                             for get, put in _config._blas_calls])
        for run in (lambda: model.train_on_batch(x, y), lambda: model.predict(x),
                    lambda: model.input_gradient(x, y)):
            changes.clear()
            run()
            assert _blas_counts() == before
            # per library: one thread at the start of the pass, back at its end (the input
            # gradient: a forward and a backward pass)
            assert 0 < len(changes) <= 4 * len(before), changes
