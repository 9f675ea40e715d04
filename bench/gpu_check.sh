#!/usr/bin/env bash
# One GPU session's measurements (issue 18, item 8), as one script with one time limit:
#   1. `echochamber check` on each config given (default paper_150m): pretraining steps, a SIGKILL and resume,
#      3 steps of each of the authors' RL arms at 512 rows x 1024 new tokens, pass@k; tokens/s, MFU, rollout
#      tokens/s and memory peaks against the plan (memory.py), pass/FAIL per part;
#   2. the quickstart on the same device (QUICKSTART=0 skips it), its summary and wall time.
# Everything goes to $OUT (default ./gpu_check): a log per part and the machine's description.
#   bench/gpu_check.sh                       # on a GPU machine: device=cuda, paper_150m
#   DEVICE=cpu bench/gpu_check.sh smoke      # the same script on a CPU with the tiny preset (how it is tested)
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-gpu_check}
EC=${EC:-.venv/bin/echochamber}
configs=("$@")
[ ${#configs[@]} -eq 0 ] && configs=(paper_150m)
mkdir -p "$OUT"
{
  date -u +"%Y-%m-%d %H:%M:%S UTC"
  git rev-parse --short HEAD 2>/dev/null || true
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  .venv/bin/python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpus', torch.cuda.device_count())"
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
status=0
for c in "${configs[@]}"; do
  start=$(date +%s)
  "$EC" check --config "$c" "device=$DEVICE" > "$OUT/check_$c.log" 2>&1
  rc=$?; [ $rc -ne 0 ] && status=1
  echo "check $c: $(( $(date +%s) - start )) s (exit $rc)"
  grep -E "^(  (pass|FAIL)|check:)" "$OUT/check_$c.log" || tail -20 "$OUT/check_$c.log"
done
if [ "${QUICKSTART:-1}" = 1 ]; then
  start=$(date +%s)
  qs_config=${QS_CONFIG:-quickstart}
  "$EC" quickstart --config "$qs_config" --out "$OUT/quickstart" "device=$DEVICE" > "$OUT/quickstart.log" 2>&1
  rc=$?; [ $rc -ne 0 ] && status=1
  echo "quickstart ($qs_config, device=$DEVICE): $(( $(date +%s) - start )) s (exit $rc)"
  tail -8 "$OUT/quickstart.log"
fi
exit $status
