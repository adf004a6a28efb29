"""bench/harness.py and bench/make_tables.py on a fake benchmark of two fake libraries: each
library in its own process, the rotating run order printed, medians, ranges and per-run
ratios, the JSON log's contents, and the tables made from it."""
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

    tables = subprocess.run([sys.executable, str(BENCH / "make_tables.py"), "--results",
                             str(tmp_path), "--min-runs", "3"], capture_output=True, text=True,
                            check=True).stdout
    assert "| time | **0.30x** [0.30-0.30] of Slow | - | - |" in tables    # ratios, not times
    assert "| alone | **3.00x** [3.00x-3.00x] | 3.00x | - |" in tables
    assert "shared and noisy: its load average before the workers was" in tables
    assert "| time vs the other | <= 0.5 | 0.30 | PASS |" in tables
    assert "3 runs, each library in its own process" in tables
    none = subprocess.run([sys.executable, str(BENCH / "make_tables.py"), "--results",
                           str(tmp_path)], capture_output=True, text=True, check=True).stdout
    assert "No benchmark logs with enough runs" in none          # 3 runs < the default 5


@pytest.mark.skipif(not (BENCH.parent / "README.md").exists(), reason="no README.md")
def test_readme_benchmark_tables_come_from_the_logs():
    proc = subprocess.run([sys.executable, str(BENCH / "make_tables.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
