"""bench/harness.py and bench/make_tables.py on a fake benchmark of two fake libraries: each
library in its own process, the rotating run order printed, medians, ranges and per-run
ratios, the JSON log's contents, and the tables made from it."""
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
pytestmark = pytest.mark.skipif(not (BENCH / "harness.py").exists(),
                                reason="bench/ is not beside the tests")

FAKE = textwrap.dedent('''
    import os, sys
    sys.path.insert(0, {bench!r})
    import harness
    from harness import Library, Memory, Target

    def fast(settings):
        with Memory() as mem:
            junk = bytearray(30 << 20)           # 30 MB during "training"
            junk[::4096] = b"x" * len(junk[::4096])
        return {{"time": 1.0 + 0.1 * settings["scale"], "growth_mb": mem.growth_mb,
                "only_fast": 3.0, "info": {{"checksum": {{"y": 10.0}}, "pid": os.getpid()}}}}

    def slow(settings):
        return {{"time": 4.0, "growth_mb": 1.0, "info": {{"checksum": {{"y": 10.0 + 1e-6}},
                                                          "pid": os.getpid()}}}}

    TARGET = Target("fake", "a fake benchmark", [Library("fast", "Fast"), Library("slow", "Slow")],
                    rows=[("time", "time"), ("memory", "growth_mb"), ("alone", "only_fast")],
                    units={{"time": "s", "growth_mb": "MB", "only_fast": "x"}},
                    higher_is_better=("only_fast",),
                    checks=[("time vs the other", "time", "fast", 0.5),
                            ("alone", "only_fast", "fast", 5.0)], main="fast")

    if __name__ == "__main__":
        if "--worker" in sys.argv:
            sys.exit(harness.worker_main({{"fast": fast, "slow": slow}}, sys.argv[1:]))
        harness.main(TARGET, os.path.abspath(__file__),
                     settings_parser=lambda p: p.add_argument("--scale", type=float, default=1.0))
''')


def test_harness_runs_each_library_in_its_own_process_and_logs_everything(tmp_path):
    script = tmp_path / "fake_bench.py"
    script.write_text(FAKE.format(bench=str(BENCH)))
    out = subprocess.run([sys.executable, str(script), "--runs", "3", "--out", str(tmp_path),
                          "--scale", "2"], capture_output=True, text=True, check=True).stdout
    assert "run 1: Fast, Slow" in out and "run 2: Slow, Fast" in out and "run 3: Fast, Slow" in out
    logs = list(tmp_path.glob("fake_*.json"))
    assert len(logs) == 1
    log = json.loads(logs[0].read_text())
    assert log["order"] == [["Fast", "Slow"], ["Slow", "Fast"], ["Fast", "Slow"]]
    assert log["settings"]["scale"] == 2 and log["settings"]["threads"] == 2
    assert {"cpu_count", "platform", "python"} <= set(log["machine"])
    assert "commit" in log and "dirty" in log
    pids = {run[lib]["info"]["pid"] for run in log["runs"] for lib in run}
    assert len(pids) == 6 and os.getpid() not in pids      # a fresh process for each
    fast = log["stats"]["time"]["Fast"]
    assert fast["n"] == 3 and fast["values"] == pytest.approx([1.2] * 3)
    assert (fast["median"], fast["min"], fast["max"]) == pytest.approx((1.2, 1.2, 1.2))
    ratio = log["ratios"]["time"]["Fast"]
    assert ratio["other"] == "Slow" and ratio["median"] == pytest.approx(0.3)
    assert log["stats"]["growth_mb"]["Fast"]["median"] > 25        # the 30 MB, not the imports
    assert log["checks"][0]["pass"] is True and log["checks"][1]["pass"] is False
    assert log["checksum_agreement"] == pytest.approx(1e-7, rel=0.01)
    assert "threadpools" in log["runs"][0]["Fast"]["info"]
    if os.path.exists("/proc/stat"):          # Linux: every worker's steal share is logged
        steals = [run[lib]["steal"] for run in log["runs"] for lib in run]
        assert any(v is not None for v in steals), steals     # None: no tick went by
        assert all(v is None or 0.0 <= v <= 1.0 for v in steals), steals

    tables = subprocess.run([sys.executable, str(BENCH / "make_tables.py"), "--results",
                             str(tmp_path), "--min-runs", "3"], capture_output=True, text=True,
                            check=True).stdout
    assert "| time | **0.30x** [0.30-0.30] of Slow | - | - |" in tables    # ratios, not times
    assert "| alone | **3.00x** [3.00x-3.00x] | 3.00x | - |" in tables
    assert "shared and noisy: its load average before the workers was" in tables
    if any(run[lib]["steal"] is not None for run in log["runs"] for lib in run):
        assert "of the CPU time while a worker ran (steal, from /proc/stat)" in tables
    assert "| time vs the other | <= 0.5 | 0.30 | PASS |" in tables
    assert "3 runs, each library in its own process" in tables
    none = subprocess.run([sys.executable, str(BENCH / "make_tables.py"), "--results",
                           str(tmp_path)], capture_output=True, text=True, check=True).stdout
    assert "No benchmark logs with enough runs" in none          # 3 runs < the default 5


def test_steal_share_comes_from_proc_stat(tmp_path):
    """The hypervisor's share of the CPU time around a worker (the 8th number of /proc/stat's
    "cpu" line over the sum of the first 8), which the logs keep beside the load."""
    sys.path.insert(0, str(BENCH))
    try:
        import harness
    finally:
        sys.path.remove(str(BENCH))
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 800 0 0 0 50 0 0\ncpu0 50 0 25 400 0 0 0 25 0 0\n")
    before = harness.cpu_ticks(str(stat))
    assert before == (50, 1000)
    stat.write_text("cpu  400 0 50 1200 0 0 0 350 0 0\n")    # 1000 more ticks, 300 stolen
    assert harness.steal_share(before, harness.cpu_ticks(str(stat))) == pytest.approx(0.3)
    assert harness.steal_share(before, before) is None
    assert harness.steal_share(None, before) is None
    assert harness.cpu_ticks(str(tmp_path / "missing")) is None
    stat.write_text("intr 1 2 3\n")
    assert harness.cpu_ticks(str(stat)) is None


@pytest.mark.skipif(not (BENCH.parent / "README.md").exists(), reason="no README.md")
def test_readme_benchmark_tables_come_from_the_logs():
    proc = subprocess.run([sys.executable, str(BENCH / "make_tables.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _speed_log(bench_speed, harness, isa="native", error_in=None):
    """A bench_speed-format log of 5 fake runs (no benchmark runs): the harness merges each
    library's three jobs and derives the scaling, then logs, ratios and checks them."""
    import dataclasses
    libs = harness.libraries(bench_speed.TARGET, [f"keras={sys.executable}"],
                             baseline=sys.executable, variants=["CCONV_X=1"])
    target = dataclasses.replace(bench_speed.TARGET, libraries=libs)
    #            batch1  batch256 epoch memory epoch_1t
    fake = {"cconv": (1.0e-3, 0.03, 1.0, 300.0, 1.9),
            "cconv (baseline)": (0.5e-3, 0.06, 1.5, 310.0, 2.4),
            "cconv (CCONV_X=1)": (1.0e-3, 0.03, 0.5, 300.0, 1.0),
            "PyTorch NCHW": (4.0e-3, 0.09, 4.0, 280.0, 6.0),
            "PyTorch channels_last": (1.5e-3, 0.2, 3.0, 320.0, 4.5),
            "Keras (TensorFlow)": (1.0e-2, 0.08, 5.0, 100.0, 7.0),
            "GEMM only (the host's ceiling)": (None, None, 1.0, None, 1.95)}
    runs = []
    for i, scale in enumerate([1.0, 1.1, 0.9, 1.2, 0.8]):      # the machine's load drifts
        run = {}
        for label, (b1, b256, epoch, memory, epoch_1t) in fake.items():
            def rec(**metrics):
                return {"metrics": {k: v for k, v in metrics.items() if v is not None},
                        "info": {"threads": 2}, "load_before": 1.0 + i, "wall_s": 1.0}
            records = {"infer": rec(batch1=b1 and b1 * scale, batch256=b256 and b256 * scale),
                       "train": rec(epoch=epoch * scale, memory=memory),
                       "train_1t": rec(epoch=epoch_1t * scale, memory=memory)}
            if error_in == (i, label):
                records["train_1t"] = {"error": "exit 1", "stderr_tail": ["boom"],
                                       "load_before": 1.0}
            run[label] = harness.merge_jobs(target, target.jobs, records)
        runs.append(run)
    settings = {"threads": 2, "isa": isa, "images": 1777, "batch": 128, "env": {}}
    return harness.make_log(target, runs, settings, str(BENCH / "bench_speed.py"))


def test_bench_speed_log_renders_a_table_with_its_targets(tmp_path):
    sys.path.insert(0, str(BENCH))
    try:
        import bench_isa
        import bench_speed
        import harness
    finally:
        sys.path.remove(str(BENCH))
    log = _speed_log(bench_speed, harness, error_in=(4, "Keras (TensorFlow)"))
    run0 = log["runs"][0]["cconv"]
    assert set(run0["jobs"]) == {"infer", "train", "train_1t"}
    assert run0["metrics"]["scaling"] == pytest.approx(1.9)            # epoch_1t / epoch
    assert run0["metrics"]["memory_1t"] == 300.0
    assert "scaling" not in log["runs"][4]["Keras (TensorFlow)"]["metrics"]   # its job failed
    assert "train_1t: exit 1" in log["runs"][4]["Keras (TensorFlow)"]["error"]
    # the baseline is compared with the others, but nobody is compared with it
    assert log["ratios"]["epoch"]["cconv"]["other"] == "PyTorch channels_last"
    assert log["ratios"]["epoch"]["cconv (baseline)"]["median"] == pytest.approx(0.5)
    assert log["ratios"]["batch1"]["PyTorch channels_last"]["other"] == "cconv"   # not the baseline
    # a --variant: cconv with an environment variable, a non-contender like the baseline
    variant = next(lib for lib in log["libraries"] if lib["label"] == "cconv (CCONV_X=1)")
    assert variant["env"] == {"CCONV_X": "1"} and not variant["contender"]
    assert log["ratios"]["epoch"]["cconv (CCONV_X=1)"]["median"] == pytest.approx(0.5 / 3.0)
    assert log["ratios"]["epoch"]["PyTorch channels_last"]["other"] == "cconv"
    with pytest.raises(ValueError, match="VAR=VALUE"):
        harness.libraries(bench_speed.TARGET, variants=["CCONV_X"])
    # the host's GEMM-only yardstick: its own figures, no ratios, never "the fastest other"
    host = "GEMM only (the host's ceiling)"
    assert log["stats"]["scaling"][host]["median"] == pytest.approx(1.95)
    assert all(host not in r and all(x["other"] != host for x in r.values())
               for r in log["ratios"].values())
    assert "batch1" not in log["runs"][0][host]["metrics"]
    checks = {c["metric"]: c for c in log["checks"]}
    assert checks["memory"]["against"] == "PyTorch NCHW"       # not Keras's smaller figure
    assert checks["memory"]["median"] == pytest.approx(300 / 280)
    assert checks["scaling"]["against"] is None and checks["scaling"]["median"] == pytest.approx(1.9)
    (tmp_path / "bench_speed_fake.json").write_text(json.dumps(log))

    isa = _speed_log(bench_speed, harness, isa="avx2")
    isa.update(target=bench_isa.TARGET.name, argv=["bench/bench_isa.py"], rows=bench_isa.TARGET.rows,
               checks=harness.check_targets(bench_isa.TARGET, isa["stats"], isa["ratios"],
                                            isa["runs"]))
    (tmp_path / "bench_isa_fake.json").write_text(json.dumps(isa))

    tables = subprocess.run([sys.executable, str(BENCH / "make_tables.py"), "--results",
                             str(tmp_path)], capture_output=True, text=True, check=True).stdout
    assert "**`bench/bench_speed.py`**" in tables
    assert ("| cconv / fastest other: median [range] | cconv (CCONV_X=1) / fastest other "
            "| cconv (baseline) / fastest other |") in tables
    assert ("| inference on one image (batch 1) | **0.67x** [0.67-0.67] of PyTorch channels_last "
            "| 0.67x [0.67-0.67] | 0.33x [0.33-0.33] |") in tables
    assert "| whole epoch: 1-thread time / multi-thread time | **" in tables
    for row in ("| batch-1 inference vs the fastest other library | <= 0.5 | 0.67 | FAIL |",
                "| batch-256 inference vs the fastest other library | <= 0.5 | 0.38 | PASS |",
                "| training epoch vs the fastest other library | <= 0.4 | 0.33 | PASS |",
                "| memory training adds vs PyTorch's (its smaller layout) | <= 1.0 | 1.07 | FAIL |",
                "| whole epoch: 2 threads vs 1 (epoch_1t / epoch) | >= 1.8 | 1.90 | PASS |"):
        assert row in tables
    assert "cconv (baseline): cconv under" in tables
    assert f"{host} / fastest other" not in tables and f"| {host} (median) |" in tables
    assert "| 1.95x |" in tables                           # its scaling, in its own column
    assert f"{host}: a measure of the machine itself, not a library" in tables
    assert "cconv (CCONV_X=1): cconv under" in tables and "with CCONV_X=1, not a contender" in tables
    assert "load average before the workers was 1.0-5.0" in tables
    # the AVX2-capped run: a table of its own, with its own targets
    assert "**`bench/bench_isa.py` with every library capped at AVX2**" in tables
    assert "| training epoch vs the faster PyTorch layout | <= 0.6 | 0.33 | PASS |" in tables
    assert "| batch-1 inference vs the faster PyTorch layout | <= 0.7 | 0.67 | PASS |" in tables


def test_run_orders_rotate_and_vary_the_neighbours():
    """Every library goes first equally often, and none always runs right after the same
    other one (a plain rotation keeps every neighbour; bench_speed's cconv ran right after
    Keras in four of five runs). Two libraries simply alternate."""
    sys.path.insert(0, str(BENCH))
    import harness
    names = ["cconv", "baseline", "torch-nchw", "torch-cl", "keras"]
    orders = harness.run_orders(names, 10)
    assert all(sorted(o) == sorted(names) for o in orders)
    assert [o[0] for o in orders] == names * 2
    for lib in names:
        before = {o[o.index(lib) - 1] for o in orders if o.index(lib) > 0}
        assert len(before) >= 2, (lib, before)
    assert harness.run_orders(["Fast", "Slow"], 3) == [["Fast", "Slow"], ["Slow", "Fast"],
                                                       ["Fast", "Slow"]]
    import make_tables          # the tables say which order a log's runs took
    assert "reversed" in make_tables.order_text({"order": harness.run_orders(names, 5)})
    rotation = [names[i:] + names[:i] for i in range(5)]
    assert make_tables.order_text({"order": rotation}) == "a rotating order"
    run = {"cconv": {"jobs": {"infer": {"info": {"clones": "avx2,default"}}}}}
    log = {"libraries": [{"name": "cconv", "label": "cconv", "python": "/b/python"}],
           "runs": [run, run], "argv": ["bench_isa.py", "--python", "cconv=/b/python"]}
    assert make_tables.main_python(log, "cconv") == (
        " cconv: under `/b/python` (clones of its plain C loops: avx2,default).")
    assert make_tables.main_python(dict(log, argv=["bench_isa.py"]), "cconv") == ""


MUTANTS_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "tools", "mutants.py")


@pytest.mark.skipif(not os.path.exists(MUTANTS_PY), reason="needs the source tree's tools/")
def test_every_mutant_still_applies_to_the_source():
    """tools/mutants.py edits the source by exact text: a mutant whose text the code no
    longer has would apply nowhere and report nothing, so each must match exactly once."""
    spec = importlib.util.spec_from_file_location("cconv_mutants", MUTANTS_PY)
    mutants = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mutants)
    root = os.path.dirname(os.path.dirname(MUTANTS_PY))
    stale = {}
    for mid, path, _desc, _tests, old, new in mutants.MUTANTS:
        with open(os.path.join(root, path)) as f:
            n = f.read().count(old)
        if n != 1 or old == new:
            stale[mid] = n
    assert not stale, stale
    assert len({m[0] for m in mutants.MUTANTS}) == len(mutants.MUTANTS)


def _host_log(stamp, runs):
    """A bench_speed log of (cconv, other, GEMM) batch-1 times per run: the parts that
    bench/host_effect.py reads."""
    libs = [("cconv", "cconv"), ("torch-channels-last", "PyTorch channels_last"),
            ("host", "GEMM only (the host's ceiling)")]
    return {"target": "bench_speed", "time": stamp, "commit": "f" * 40, "main": "cconv",
            "settings": {"isa": "native"},
            "libraries": [{"name": n, "label": lab} for n, lab in libs],
            "ratios": {"batch1": {"cconv": {"other": "PyTorch channels_last"}}},
            "runs": [{"cconv": {"metrics": {"batch1": c}},
                      "PyTorch channels_last": {"metrics": {"batch1": o}},
                      "GEMM only (the host's ceiling)": {"metrics": {"epoch": g}}}
                     for c, o, g in runs]}


def test_host_effect_correlates_each_run_with_the_gemm_time(tmp_path):
    """bench/host_effect.py: cconv's time rising with the GEMM's and the other's not gives
    rho +1 and about 0; the ratio of the busier half is the higher; within logs, each value
    is taken relative to its log's median; --since leaves older logs out; --log writes it."""
    runs = [(1.0 + 0.1 * i, 2.0 + (0.05 if i % 2 else -0.05), 1.0 + 0.2 * i) for i in range(6)]
    (tmp_path / "bench_speed_20260101T000000Z_ffffffff.json").write_text(
        json.dumps(_host_log("2026-01-01", runs)))
    (tmp_path / "bench_speed_20250101T000000Z_ffffffff.json").write_text(
        json.dumps(_host_log("2025-01-01", [(9.0, 1.0, 1.0)] * 3)))
    spec = importlib.util.spec_from_file_location("host_effect", BENCH / "host_effect.py")
    he = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(he)
    assert he.main(["--results", str(tmp_path), "--since", "20260101", "--log"]) == 0
    out = json.loads(next(tmp_path.glob("host_effect_*.json")).read_text())
    assert out["logs"] == ["bench_speed_20260101T000000Z_ffffffff.json"]
    b1 = out["pooled"]["batch1"]
    assert b1["runs"] == 6 and b1["cconv"]["rho"] == pytest.approx(1.0)
    assert abs(b1["other"]["rho"]) < 0.3 and b1["ratio"]["rho"] > 0.9
    assert b1["ratio_busier"] > b1["ratio_quieter"]
    assert b1["quieter_runs"] == b1["busier_runs"] == 3
    within = out["within_logs"]["batch1"]
    assert within["cconv"]["rho"] == pytest.approx(1.0) and "ratio_quieter" not in within


def _checked_log(target, runs, scaling_bound=1.8):
    """A log with two checks: cconv's batch 1 against PyTorch's (a ratio) and cconv's
    scaling (a value); runs: [(cconv batch 1, PyTorch batch 1, cconv scaling)]."""
    def med(vals):
        return sorted(vals)[len(vals) // 2]
    ratio = med([c / o for c, o, _ in runs])
    scal = med([s for _, _, s in runs])
    return {"target": target,
            "checks": [{"label": "batch 1", "metric": "batch1", "library": "cconv",
                        "against": "PyTorch", "bound": 0.5, "direction": "<=",
                        "median": ratio, "pass": ratio <= 0.5},
                       {"label": "scaling", "metric": "scaling", "library": "cconv",
                        "against": None, "bound": scaling_bound, "direction": ">=",
                        "median": scal, "pass": scal >= scaling_bound}],
            "runs": [{"cconv": {"metrics": {"batch1": c, "scaling": s}},
                      "PyTorch": {"metrics": {"batch1": o}}} for c, o, s in runs]}


def test_targets_over_logs_pools_the_runs_the_checks_were_taken_on(tmp_path, capsys):
    """bench/targets_over_logs.py: a run's value is the check's (a ratio to the library the
    log compared with, or the figure itself); the pooled median is over every run of every
    log, and a log that failed on its own is counted as such."""
    a = _checked_log("bench_speed", [(0.4, 1.0, 1.9), (0.45, 1.0, 1.7), (0.3, 1.0, 1.95)])
    b = _checked_log("bench_speed", [(0.6, 1.0, 1.75), (0.55, 1.0, 1.7), (0.9, 2.0, 1.85)])
    paths = []
    for name, log in (("a.json", a), ("b.json", b)):
        (tmp_path / name).write_text(json.dumps(log))
        paths.append(str(tmp_path / name))
    spec = importlib.util.spec_from_file_location("tol", BENCH / "targets_over_logs.py")
    tol = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tol)
    assert tol.run_values(b, b["checks"][0]) == [0.6, 0.55, 0.45]
    assert tol.run_values(b, b["checks"][1]) == [1.75, 1.7, 1.85]
    assert tol.main(["--results", str(tmp_path), "--log", *paths]) == 0
    out = json.loads(next(tmp_path.glob("targets_over_logs_*.json")).read_text())
    b1, sc = out["targets"]
    assert b1["runs"] == 6 and b1["median"] == pytest.approx(0.45)
    assert (b1["min"], b1["max"]) == (0.3, 0.6) and b1["pass"]
    assert b1["logs_passing"] == 1 and [x["median"] for x in b1["logs"]] == [0.4, 0.55]
    assert sc["median"] == pytest.approx(1.8) and sc["pass"] and sc["logs_passing"] == 1
    assert capsys.readouterr().out.count("passed in 1 of 2 logs") == 2
    (tmp_path / "c.json").write_text(json.dumps(_checked_log("bench_isa", [(0.4, 1.0, 2.0)])))
    with pytest.raises(SystemExit):
        tol.main([*paths, str(tmp_path / "c.json")])
