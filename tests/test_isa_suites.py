"""The general suites once more on a simulated CPU without AVX-512.

On an AVX-512 CPU cconv never picks its AVX2 kernels (direct convolution, max pool) by
itself, so the suites that check every route against the references would not see them.
Here they run again in a child process whose instruction-set level is capped at AVX2 + FMA
(``CCONV_SIMD_LEVEL=1``, read when cconv is imported): the functional suite against the
definitions, the property tests, the PyTorch parity suite and the kernels' own files.
"""
import os
import shutil
import subprocess
import sys

import pytest

from cconv import _core

HERE = os.path.dirname(os.path.abspath(__file__))
SUITES = ["test_functional.py", "test_property.py", "test_functional_torch.py",
          "test_layers_torch.py", "test_pool_simd.py", "test_conv_direct.py"]


@pytest.mark.skipif(_core.simd_level(2) < 2 or "CCONV_SIMD_LEVEL" in os.environ,
                    reason="the suites already run at this CPU's (or the environment's) level")
def test_general_suites_pass_with_the_level_capped_at_avx2():
    env = dict(os.environ, CCONV_SIMD_LEVEL="1")
    code = "from cconv import _core; print(_core.simd_level(2))"
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, check=True).stdout.strip() == "1"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                           *SUITES], cwd=HERE, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]


CHECKS = {name: os.path.join(HERE, "c", name + ".c") for name in ("direct_check", "pool_check")}
INCLUDE = os.path.join(os.path.dirname(HERE), "src", "cconv")
QEMU = ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]
needs_cc = pytest.mark.skipif(not os.path.exists(INCLUDE) or shutil.which("cc") is None,
                              reason="needs the source tree and a C compiler")
needs_qemu = pytest.mark.skipif(
    not os.path.exists(INCLUDE) or shutil.which("aarch64-linux-gnu-gcc") is None
    or shutil.which("qemu-aarch64") is None or not os.path.isdir("/usr/aarch64-linux-gnu"),
    reason="needs the source tree, aarch64-linux-gnu-gcc and qemu-aarch64 (user mode)")


def _build_and_run(cc, run_prefix, tmp_path, check="direct_check"):
    exe = str(tmp_path / check)
    subprocess.run([cc, "-O2", "-Wall", "-Werror", "-I", INCLUDE, CHECKS[check], "-o", exe,
                    "-lm"], check=True, capture_output=True, text=True)
    proc = subprocess.run([*run_prefix, exe], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@needs_cc
def test_direct_kernels_of_every_level_in_plain_c(tmp_path):
    """The kernels straight from the header on this CPU (every level it has), also those
    cconv.functional would not pick for the shapes drawn here."""
    assert _build_and_run("cc", [], tmp_path).startswith("0 of ")


@needs_cc
def test_max_pool_kernels_of_every_level_in_plain_c(tmp_path):
    """The vector max-pool kernels straight from the header, every level this CPU has,
    against a row-major scan (ties, NaNs, -0), forward and backward, bit for bit."""
    assert _build_and_run("cc", [], tmp_path, "pool_check").startswith("0 of ")


@needs_qemu
def test_neon_direct_kernels_under_qemu(tmp_path):
    """The NEON kernels, cross-compiled for aarch64 and run under qemu's user-mode
    emulation (an emulator, not an ARM CPU: correctness only, no speed)."""
    out = _build_and_run("aarch64-linux-gnu-gcc", QEMU, tmp_path)
    assert "0 of 33 cases wrong (levels 1..1)" in out


@needs_qemu
def test_neon_max_pool_kernels_under_qemu(tmp_path):
    """The NEON max-pool kernels (channels a multiple of 4) under qemu: every channel count
    of pool_check.c is served, so all 32 cases run, and a 33rd checks the helpers of the
    direct kernel's pool in the registers (NaN, -0)."""
    out = _build_and_run("aarch64-linux-gnu-gcc", QEMU, tmp_path, "pool_check")
    assert "0 of 33 cases wrong (levels 1..1)" in out


CLONES_SRC = r'''
#include <stdio.h>
#include "_simd.h"
CCONV_MULTIVERSION float cconv_clone_probe(const float *x, int n) {
    float s = 0;
    for (int i = 0; i < n; i++) s += x[i] * x[i];
    return s;
}
int main(void) {
    float x[64];
    for (int i = 0; i < 64; i++) x[i] = (float)i;
    printf("%s %g\n", CCONV_MULTIVERSION_TARGETS, cconv_clone_probe(x, 64));
    return 0;
}
'''


@pytest.mark.skipif(not os.path.exists(INCLUDE) or shutil.which("gcc") is None
                    or shutil.which("nm") is None or _core.multiversion_targets() == "",
                    reason="needs the source tree, gcc, nm and a build with clones")
@pytest.mark.parametrize("flags, targets", [([], "avx512f,avx2,default"),
                                            (["-DCCONV_CLONES_MAX_AVX2"], "avx2,default")])
def test_multiversion_clones_of_a_build(tmp_path, flags, targets):
    """The clones of a CCONV_MULTIVERSION loop are the ones its targets string names: a
    build made with -DCCONV_CLONES_MAX_AVX2 (bench_isa's no-AVX-512 simulation) has no
    AVX-512 clone, so the loader cannot pick one."""
    src = tmp_path / "clones.c"
    src.write_text(CLONES_SRC)
    exe = str(tmp_path / "clones")
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", *flags, "-I", INCLUDE, str(src), "-o", exe],
                   check=True, capture_output=True, text=True)
    out = subprocess.run([exe], capture_output=True, text=True, check=True).stdout.split()
    assert out == [targets, str(sum(i * i for i in range(64)))]
    symbols = subprocess.run(["nm", exe], capture_output=True, text=True, check=True).stdout
    clones = {line.split()[-1].split(".", 1)[1] for line in symbols.splitlines()
              if line.split()[-1].startswith("cconv_clone_probe.")}
    assert {t for t in targets.split(",") if t != "default"} <= clones
    assert ("avx512f" in clones) == ("avx512f" in targets)
    assert _core.multiversion_targets() in ("avx512f,avx2,default", "avx2,default")
