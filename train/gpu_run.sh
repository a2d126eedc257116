#!/usr/bin/env bash
# Train a recipe on a lent GPU machine in slices of under 10 minutes; resumable across slices.
#
#   bash train/gpu_run.sh CONFIG RUN_DIR [MINUTES] [-- extra train.py args]
#
# On the device: joins the CIFAR-10 parts carried under gpu_data/parts (made here with
#   python ../shared/tools/cifar10_chunks.py split ../shared/data/cifar10 gpu_data/parts)
# into gpu_data/cifar10 once, trains CONFIG into RUN_DIR for at most MINUTES (default 7.5),
# resuming when RUN_DIR holds a state.pt, and copies the results to $OUT (weights, resume state,
# metrics, curves, summary, log). Bring them back into RUN_DIR and carry RUN_DIR next time.
# See DEVELOPERS.md, "GPU runs".
set -euo pipefail
cfg=${1:?usage: gpu_run.sh CONFIG RUN_DIR [MINUTES] [-- extra args]}
run=${2:?usage: gpu_run.sh CONFIG RUN_DIR [MINUTES] [-- extra args]}
minutes=${3:-7.5}
shift $(( $# < 3 ? $# : 3 ))
[ "${1:-}" = "--" ] && shift
out=${OUT:-$run/out}
py=$(command -v python3 || command -v python)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$out"

if [ ! -f gpu_data/cifar10/test.npz ]; then
  joiner=$(find gpu_data/parts -name cifar10_chunks.py | head -n 1)
  [ -n "$joiner" ] || { echo "no CIFAR-10 parts under gpu_data/parts (carry them first)" >&2; exit 2; }
  "$py" "$joiner" join gpu_data/parts gpu_data/cifar10
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt" || true

resume=()
[ -f "$run/state.pt" ] && resume=(--resume)
set +e
"$py" train/train.py -c "$cfg" --out "$run" "${resume[@]}" --time-limit "$minutes" \
  --set data=gpu_data/cifar10 device=cuda "$@" 2>&1 | tr '\r' '\n' | grep -v '^epoch [0-9]*/' | tee "$out/train.log"
rc=${PIPESTATUS[0]}
set -e
for f in model.safetensors state.pt metrics.jsonl summary.json curves.png config.yaml; do
  [ -f "$run/$f" ] && cp "$run/$f" "$out/"
done
size=$(stat -c %s "$out/state.pt" 2>/dev/null || echo 0)
[ "$size" -gt $((16 * 1024 * 1024)) ] && echo "warning: state.pt is $((size / 1048576)) MiB, over the 16 MiB a file can bring back" >&2
exit "$rc"
