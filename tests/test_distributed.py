"""Data-parallel training over MPI (cconv.distributed).

The MPI tests start their own ``mpiexec`` (the one beside this Python, else on PATH) on
tests/distributed_worker.py, with a timeout that also guards against a hang in a
collective call; they are skipped when mpi4py, an MPI library or mpiexec is missing
(``pip install ".[test]"`` installs them).
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import cconv
from cconv import distributed as D
from cconv import training

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import distributed_worker as W  # noqa: E402

TIMEOUT = 240          # seconds for one mpiexec run on a loaded 2-core machine


# --------------------------------------------------------------------------------------
# without MPI
# --------------------------------------------------------------------------------------
@given(st.integers(0, 300), st.integers(1, 70))
def test_shards_cover_the_batch_once_in_order(m, p):
    parts = [D.shard(m, r, p) for r in range(p)]
    assert parts[0][0] == 0 and parts[-1][1] == m
    for (lo, hi), (lo2, _) in zip(parts, parts[1:]):
        assert lo <= hi == lo2                       # contiguous, disjoint, in rank order
    sizes = [hi - lo for lo, hi in parts]
    assert max(sizes) - min(sizes) <= 1


def test_distributed_argument_is_checked():
    model = W.compiled("sgd64", seed=0)
    x, y = W.data(8)
    with pytest.raises(TypeError, match="distributed must be a bool or a cconv.distributed.DataParallel"):
        model.fit(x, y, distributed="yes")
    with pytest.raises(ValueError, match="bucket_bytes must be a positive int"):
        D.DataParallel(bucket_bytes=0)


def test_missing_mpi4py_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    monkeypatch.setattr(D, "_world", None)
    model = W.compiled("sgd64", seed=0)
    x, y = W.data(8)
    with pytest.raises(ImportError, match=r'pip install "cconv\[mpi\]"'):
        model.fit(x, y, distributed=True, verbose=0)


# --------------------------------------------------------------------------------------
# mpiexec
# --------------------------------------------------------------------------------------
def _find_mpiexec():
    """mpiexec and the environment its children need, or a reason to skip."""
    try:
        import mpi4py
    except ImportError:
        return None, None, "mpi4py is not installed"
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    # mpi4py, the MPI wheel and mpiexec live in one prefix (e.g. a venv's, or the base
    # environment's when this venv only sees its site-packages through a .pth file)
    prefixes = [Path(sys.prefix), Path(mpi4py.__file__).resolve().parents[4]]
    candidates = [p / "bin" / "mpiexec" for p in prefixes] + [Path(shutil.which("mpiexec") or "mpiexec")]
    mpiexec = next((str(c) for c in candidates if c.is_file()), None)
    if mpiexec is None:
        return None, None, "no mpiexec beside this Python or on PATH"
    probe = [sys.executable, "-c", "from mpi4py import MPI; MPI.Get_version()"]
    if subprocess.run(probe, env=env, capture_output=True, timeout=60).returncode != 0:
        libs = [lib for p in prefixes for lib in sorted((p / "lib").glob("libmpi.so*"))]
        for lib in libs:
            trial = dict(env, MPI4PY_LIBMPI=str(lib))
            if subprocess.run(probe, env=trial, capture_output=True, timeout=60).returncode == 0:
                env = trial
                break
        else:
            return None, None, "mpi4py cannot load an MPI library"
    version = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=60).stdout
    if "Open MPI" in version or "OpenRTE" in version:
        # Open MPI refuses root (CI runs as root) and more ranks than cores unless told
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                   OMPI_MCA_rmaps_base_oversubscribe="1", PRTE_MCA_rmaps_default_mapping_policy=":oversubscribe")
    return mpiexec, env, None


_MPIEXEC, _ENV, _SKIP = _find_mpiexec()
needs_mpi = pytest.mark.skipif(_SKIP is not None, reason=f"MPI tests: {_SKIP}")


def mpirun(n, *args, timeout=TIMEOUT, expect_ok=True, env=None):
    """``mpiexec -n n python args...``; kills the whole job and fails on a timeout."""
    cmd = [_MPIEXEC, "-n", str(n), sys.executable, *map(str, args)]
    proc = subprocess.Popen(cmd, env=dict(_ENV, **(env or {})), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, cwd=HERE)
    t0 = time.monotonic()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"mpiexec -n {n} {args} hung for {timeout} s (killed)\nstdout:\n{out[-3000:]}\n"
                    f"stderr:\n{err[-3000:]}")
    result = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    result.elapsed = time.monotonic() - t0
    if expect_ok and proc.returncode != 0:
        pytest.fail(f"mpiexec -n {n} {args} failed ({proc.returncode})\nstdout:\n{out[-3000:]}\n"
                    f"stderr:\n{err[-5000:]}")
    return result


def worker(n, scenario, out, **kw):
    return mpirun(n, HERE / "distributed_worker.py", scenario, out, **kw)


def _weights(out, name, rank):
    with np.load(out / f"{name}_rank{rank}.npz") as f:
        return [f[f"arr_{i}"] for i in range(len(f.files))]


def _assert_ranks_identical(out, name, n):
    w0 = _weights(out, name, 0)
    for r in range(1, n):
        for a, b in zip(w0, _weights(out, name, r)):
            assert np.array_equal(a, b), f"{name}: rank {r}'s weights differ from rank 0's"
    return w0


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_same_weights_as_one_process(tmp_path, ranks):
    """2 ranks, and 3 ranks where the batches (10, 10, 10, 7 and 10, 10, 2 samples) do not
    divide evenly and one part is empty, end with the weights and history of one process
    training on the same global batches; every rank holds the same weights; only rank 0
    prints; each rank runs on its share of the cores."""
    res = worker(ranks, "equivalence", tmp_path)
    for case, (_, _, epochs, dtype, _, _) in W.CASES.items():
        got = _assert_ranks_identical(tmp_path, case, ranks)
        ref_model = W.compiled(case, seed=100)
        ref = W.fit_case(ref_model, case, distributed=False)
        rtol, atol = (1e-10, 1e-12) if dtype == "float64" else (2e-4, 2e-5)
        for i, (a, b) in enumerate(zip(got, ref_model.get_weights())):
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=f"{case}: weight {i}")
        hist = json.loads((tmp_path / f"{case}_history.json").read_text())
        assert set(hist) == set(ref.history)
        for key, values in ref.history.items():
            np.testing.assert_allclose(hist[key], values, rtol=1e-9 if dtype == "float64" else 1e-5,
                                       err_msg=f"{case}: history {key}")
    # rank 0 alone printed: one line per epoch and fit (verbose=2)
    expected = sum(c[2] for c in W.CASES.values())
    assert res.stdout.count("Epoch ") == expected, res.stdout
    cpus = cconv._config.available_cpus()
    for r in range(ranks):
        info = json.loads((tmp_path / f"threads_rank{r}.json").read_text())
        assert info["size"] == ranks
        assert info["threads"] == info["cores"] == max(1, cpus // ranks)


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_dataset_is_sharded_like_one_process_on_the_same_global_batches(tmp_path, ranks):
    """A cconv.data dataset (from arrays, and a folder of PNGs each rank decodes its part
    of), shuffled with a seed, and a list of batches (each rank cuts its part), 3 epochs: 2 and 3 ranks end with the weights and history
    (loss, accuracy, F1, top-k, validation) of one process on the same global batches,
    although the last batch of 1 sample leaves some ranks with nothing; only rank 0 wrote
    TensorBoard and CSV logs."""
    pytest.importorskip("PIL")
    worker(ranks, "dataset", tmp_path)
    for kind in W.DATASET_KINDS:
        got = _assert_ranks_identical(tmp_path, f"dataset_{kind}", ranks)
        ref_model = W.dataset_model(seed=100)
        ref = W.dataset_fit(ref_model, kind, False, tmp_path / "ref")
        for i, (a, b) in enumerate(zip(got, ref_model.get_weights())):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=f"{kind}: weight {i}")
        hist = json.loads((tmp_path / f"dataset_{kind}_history.json").read_text())
        assert set(hist) == set(ref.history) >= {"loss", "accuracy", "f1", "top_k_accuracy",
                                                 "val_loss", "val_accuracy", "val_f1"}
        for key, values in ref.history.items():
            np.testing.assert_allclose(hist[key], values, rtol=1e-9, err_msg=f"{kind}: history {key}")
        logs0 = tmp_path / f"logs_{kind}_rank0"
        assert len((logs0 / "log.csv").read_text().splitlines()) == 4          # header + 3 epochs
        assert list((logs0 / "tb" / "train").iterdir())
        for r in range(1, ranks):
            assert not list((tmp_path / f"logs_{kind}_rank{r}").iterdir()), f"rank {r} wrote logs"
    # each rank loaded its part of every global batch, nothing more (arrays kind)
    sizes = [W.DATASET_BATCH] * (W.DATASET_SAMPLES // W.DATASET_BATCH) + [W.DATASET_SAMPLES % W.DATASET_BATCH]
    for r in range(ranks):
        loaded = json.loads((tmp_path / f"loaded_rank{r}.json").read_text())
        parts = [D.shard(m, r, ranks) for m in sizes]
        assert loaded == [z - a for a, z in parts if z > a] * 3, (r, loaded)


@needs_mpi
def test_a_dataset_shuffled_differently_on_the_ranks_is_refused(tmp_path):
    """shuffle() without a seed draws one per rank: the ranks would train on different global
    batches, so fit stops before training, naming the difference."""
    res = worker(2, "dataset_unseeded", tmp_path, timeout=120, expect_ok=False)
    assert res.returncode != 0
    assert "needs the same model, data and settings on every rank" in res.stderr, res.stderr
    assert "shuffle" in res.stderr


@needs_mpi
def test_a_nonfinite_loss_is_raised_on_every_rank(tmp_path):
    """A NaN sample in one rank's part stops every rank with NonFiniteLossError (which
    the script can catch: no rank waits for another), naming the global batch."""
    res = worker(2, "nonfinite", tmp_path)
    for r in range(2):
        assert f"rank {r} caught: the loss is nan at epoch 1/1, batch 2/4" in res.stdout, res.stdout


@needs_mpi
def test_oversubscribing_threads_are_warned_about(tmp_path):
    cpus = cconv._config.available_cpus()
    res = worker(2, "threads", tmp_path, env={"OMP_NUM_THREADS": str(cpus)})
    assert f"rank 1: {cpus} threads" in res.stdout              # OMP_NUM_THREADS wins
    assert res.stderr.count("oversubscribe") == 1, res.stderr   # once per node
    assert f"2 ranks x {cpus} threads share {cpus} CPUs" in res.stderr


def _emulated_batchnorm_run(ranks):
    """What the batchnorm scenario should compute, with one model per rank in this process:
    per-rank batch statistics, gradients weighted by the parts' sizes, the state arrays
    averaged over the ranks at each epoch's end."""
    models = [W.graph_model(seed=3, dtype="float64", batchnorm=True) for _ in range(ranks)]
    for m in models:
        m.compile(cconv.optim.SGD(0.05), "categorical_crossentropy")
    x, y = W.data(40)
    plan = training.LossPlan(models[0])
    ys_all = training.target_arrays(models[0], y, len(y), plan_losses=plan.losses)
    for _ in range(2):
        orders = [m.shuffle_rng.permutation(len(x)) for m in models]
        order = orders[0]
        for lo in range(0, len(x), 20):
            idx = order[lo:lo + 20]
            total = [np.zeros_like(g) for _, _, g in models[0].parameters()]
            for r, m in enumerate(models):
                a, z = D.shard(len(idx), r, ranks)
                part = idx[a:z]
                training.loss_and_gradients(m, [x[part]], [ys_all[0][part]], plan, training=True)
                for t, (_, _, g) in zip(total, m.parameters()):
                    t += g * ((z - a) / len(idx))
            for m in models:
                for t, (_, _, g) in zip(total, m.parameters()):
                    g[...] = t
                m.optimizer.step()
        states = [[a for layer in m.layers for role, _, a in layer.weights() if role == "state"] for m in models]
        for arrays in zip(*states):
            mean = sum(arrays) / ranks
            for a in arrays:
                a[...] = mean
    return models[0].get_weights()


@needs_mpi
def test_batchnorm_statistics_per_rank_averaged_each_epoch(tmp_path):
    worker(2, "batchnorm", tmp_path)
    got = _assert_ranks_identical(tmp_path, "batchnorm", 2)
    for i, (a, b) in enumerate(zip(got, _emulated_batchnorm_run(2))):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12, err_msg=f"weight {i}")
    # and not what one process training on the whole batches computes
    ref = W.graph_model(seed=3, dtype="float64", batchnorm=True)
    ref.compile(cconv.optim.SGD(0.05), "categorical_crossentropy")
    ref.fit(*W.data(40), epochs=2, batch_size=20, verbose=0)
    assert not all(np.allclose(a, b) for a, b in zip(got, ref.get_weights()))


@needs_mpi
@pytest.mark.parametrize("scenario, message", [
    ("raise_in_fit", "ValueError: boom from rank 1"),
    ("raise_outside_fit", "KeyError: 'boom outside fit on rank 1'"),
])
def test_a_failing_rank_ends_the_job_with_its_message(tmp_path, scenario, message):
    res = worker(2, scenario, tmp_path, timeout=120, expect_ok=False)
    assert res.returncode != 0
    assert message in res.stderr, res.stderr
    assert f"[rank 1/2] {message}" in res.stderr        # the failing rank's traceback, prefixed
    assert "rank 1 failed; ending all 2 ranks" in res.stderr


@needs_mpi
@pytest.mark.parametrize("suffix", ["", "_ds"], ids=["arrays", "dataset"])
def test_distributed_checkpoint_resumes_to_the_same_weights(tmp_path, suffix):
    """A model with dropout (every rank its own masks, kept in the checkpoint) and Adam:
    1 epoch, then a new job resuming to 3, ends bit for bit where 3 epochs in one go end;
    with arrays, and with a shuffled dataset (whose epoch order is a function of its seed
    and the epoch, so the resumed job draws the same global batches)."""
    worker(2, "resume_full" + suffix, tmp_path)
    worker(2, "resume_part" + suffix, tmp_path)
    worker(2, "resume_rest" + suffix, tmp_path)
    full = _assert_ranks_identical(tmp_path, "resume_full" + suffix, 2)
    rest = _assert_ranks_identical(tmp_path, "resume_rest" + suffix, 2)
    for a, b in zip(full, rest):
        assert np.array_equal(a, b)
    h_full = json.loads((tmp_path / f"resume_full{suffix}_history.json").read_text())
    h_rest = json.loads((tmp_path / f"resume_rest{suffix}_history.json").read_text())
    assert h_full == h_rest and len(h_full["loss"]) == 3
    # only rank 0 wrote the CSV log: a header and one row per epoch, continued on resume
    assert len((tmp_path / f"full{suffix}.csv").read_text().splitlines()) == 4
    assert len((tmp_path / f"part{suffix}.csv").read_text().splitlines()) == 4
    # the checkpoint holds both ranks' dropout generators, and they differ
    _, _, state = cconv.checkpoint.load_training_state(tmp_path / f"full{suffix}.npz")
    ranks = [cb["state"] for cb in state["callbacks"] if cb["class_name"] == "_RankState"][0]
    assert ranks["ranks"] == 2 and ranks["layer_rngs"][0] != ranks["layer_rngs"][1]


@needs_mpi
def test_paper_command_distributed(tmp_path):
    """``mpirun -n 2 cconv paper --distributed`` trains; rank 0 alone prints and writes. On
    one rank it computes exactly what the command computes without MPI (on several, the
    dropout masks differ: every rank draws its own)."""
    pytest.importorskip("PIL.Image")
    from test_paper import _synthetic_lfw

    from cconv import cli
    data = _synthetic_lfw(tmp_path / "lfw")
    common = ["--data-dir", data, "--epochs", "3", "--batch-size", "8", "--seeds", "0",
              "--min-faces-per-person", "5", "--am-steps", "0", "--quiet", "--threads", "1"]
    res = mpirun(2, "-m", "cconv", "paper", *common, "--distributed", "--out", tmp_path / "two")
    assert res.stdout.count("Total params") == 1 and res.stdout.count("seed 0: test accuracy") == 1, res.stdout
    assert "in each of 2 processes" in res.stdout
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["processes"] == 2 and len(two["runs"]) == 1
    loss = two["runs"][0]["history"]["loss"]
    assert len(loss) == 3 and loss[-1] < loss[0]
    assert (tmp_path / "two" / "model_seed0.npz").exists()

    mpirun(1, "-m", "cconv", "paper", *common, "--distributed", "--out", tmp_path / "one")
    assert cli.main(["paper", *map(str, common), "--out", str(tmp_path / "plain")]) == 0
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    plain = json.loads((tmp_path / "plain" / "results.json").read_text())
    assert one["runs"][0]["history"] == plain["runs"][0]["history"]
