#!/usr/bin/env bash
# The general suites on a build without AVX-512 clones, capped at AVX2 (CI runs this).
#
# cconv's plain C loops (Winograd transforms, fused pools, elementwise kernels) are gcc
# target_clones; the loader picks their clone from the CPU, whatever CCONV_SIMD_LEVEL says.
# On an AVX-512 CPU the suites capped at AVX2 (tests/test_isa_suites.py) therefore still run
# those loops' AVX-512 clones, and their AVX2 clones run in no test. This script builds the
# tree with CFLAGS=-DCCONV_CLONES_MAX_AVX2 (no AVX-512 clone) into a temporary directory,
# puts it first on PYTHONPATH and runs the suites there with CCONV_SIMD_LEVEL=1.
#
#   bash tools/test_avx2_clones.sh     # in an environment with cconv[test] installed, not
#                                      # editable (an editable install would shadow the build)
#
# Skipped (exit 0) where there is nothing to add: a CPU without AVX-512, or a build whose
# loops have no clones (not gcc on x86-64 Linux).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# From a copy of the tracked files: in the tree itself, setuptools would reuse the object
# files of an earlier build (they are newer than their sources) and ignore the flag.
mkdir "$WORK/src"
git ls-files -z | xargs -0 cp --parents -t "$WORK/src"
CFLAGS="${CFLAGS:-} -DCCONV_CLONES_MAX_AVX2" "$PY" -m pip install -q --no-deps --no-compile \
    --target "$WORK/site" "$WORK/src"
export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
mode=$(cd / && "$PY" -c "from cconv import _core; \
print('run' if _core.multiversion_targets() and _core.simd_level(2) == 2 else 'skip')")
if [ "$mode" = skip ]; then
    echo "test_avx2_clones: skipped (no AVX-512 on this CPU, or no clones in this build)"
    exit 0
fi
export CCONV_SIMD_LEVEL=1
cd tests
"$PY" -c "
import os, sys
import cconv
from cconv import _core
where = os.path.realpath(cconv.__file__)
assert where.startswith(os.path.realpath(sys.argv[1])), where
assert _core.multiversion_targets() == 'avx2,default', _core.multiversion_targets()
assert _core.simd_level() == 1, _core.simd_level()
" "$WORK/site"
"$PY" -m pytest -q -x -p no:cacheprovider \
    test_functional.py test_property.py test_winograd.py test_winograd4.py test_pool_simd.py \
    test_pool_paths.py test_conv_direct.py test_speed_paths.py test_functional_torch.py \
    test_layers_torch.py
echo "test_avx2_clones: passed"
