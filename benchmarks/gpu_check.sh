#!/usr/bin/env bash
# The GPU check: one GPU, under 5 minutes, no network.
#
#   bash benchmarks/gpu_check.sh                                  # on a CUDA machine
#   QTBENCH_GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh     # check the script itself on CPU
#
# 1. builds a small synthetic world (qtbench world) and pretrains the tiny
#    Llama-style model on it for a few steps (qtbench pretrain, CPU);
# 2. trains EVERY registered method (full, q_tuning, each sample pruner, each
#    token pruner, one pair; static scores and a reference model where a method
#    needs them) for a few optimizer steps, bf16 on CUDA (dtype auto), with the
#    run configs qtbench.config builds for the Snakefile;
# 3. evaluates one checkpoint with lm-eval, batch_size=auto (8 on CPU);
# 4. checks that GPU pinning works (python -m qtbench.launch launch);
# 5. with 2+ GPUs: trains Q-Tuning on two (data-parallel, then FSDP) through the
#    train rule's launcher and compares its decisions with one GPU's (on CPU:
#    two torchrun processes);
# 6. prints a table (and writes $OUT/summary.json); exits non-zero on any failure.
#
# Environment: QTBENCH_GPU_CHECK_DEVICE (cuda | cpu, default cuda),
# QTBENCH_GPU_CHECK_STEPS (optimizer steps per method, default 3),
# QTBENCH_GPU_CHECK_OUT (work folder, default a fresh temporary one; kept).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEVICE="${QTBENCH_GPU_CHECK_DEVICE:-cuda}"
STEPS="${QTBENCH_GPU_CHECK_STEPS:-3}"
OUT="${QTBENCH_GPU_CHECK_OUT:-$(mktemp -d -t qtbench-gpu-check.XXXXXX)}"
PY="${PYTHON:-python}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled QTBENCH_NO_PROGRESS=1 TOKENIZERS_PARALLELISM=false
if [ "$DEVICE" = "cpu" ]; then
  export CUDA_VISIBLE_DEVICES=""
elif [ "$DEVICE" != "cuda" ]; then
  echo "QTBENCH_GPU_CHECK_DEVICE must be cuda or cpu, got '$DEVICE'" >&2
  exit 2
fi
THREADS="$(nproc 2>/dev/null || echo 2)"
mkdir -p "$OUT"
started=$(date +%s)
stage() { echo; echo "== $1 ($(( $(date +%s) - started )) s)"; }

stage "environment"
"$PY" - <<EOF
import torch, transformers, lm_eval, qtbench
print("qtbench", qtbench.__version__, "| torch", torch.__version__, "| transformers", transformers.__version__,
      "| lm_eval", getattr(lm_eval, "__version__", "?"))
if torch.cuda.is_available():
    print("CUDA", torch.version.cuda, "|", torch.cuda.get_device_name(0), "| bf16:", torch.cuda.is_bf16_supported())
elif "$DEVICE" == "cuda":
    raise SystemExit("CUDA is not available; QTBENCH_GPU_CHECK_DEVICE=cpu checks the script on CPU")
else:
    print("CPU only (QTBENCH_GPU_CHECK_DEVICE=cpu)")
EOF

stage "world"
"$PY" -m qtbench.cli world --out "$OUT/world" --options \
  '{"seed": 0, "n_countries": 40, "n_people": 10, "n_sft": 128, "n_reference": 16, "n_eval_per_task": 16}' \
  > "$OUT/world.log" 2>&1 || { tail -30 "$OUT/world.log"; echo "gpu_check: FAILED: world"; exit 1; }

stage "pretrain the tiny model"
"$PY" -m qtbench.cli pretrain --world "$OUT/world" --seed 0 --threads "$THREADS" --out "$OUT/base" \
  --options '{"steps": 20, "max_minutes": 0.5}' > "$OUT/pretrain.log" 2>&1 \
  || { tail -30 "$OUT/pretrain.log"; echo "gpu_check: FAILED: pretrain"; exit 1; }

stage "GPU pinning"
pin_ok=1
if [ "$DEVICE" = "cuda" ]; then
  seen=$(QTBENCH_GPU_LOCK_DIR="$OUT/gpu-locks" "$PY" -m qtbench.launch launch --gpus 1 -- \
         "$PY" -c 'import os, torch; print(os.environ["CUDA_VISIBLE_DEVICES"], torch.cuda.device_count())' 2>/dev/null) || pin_ok=0
  echo "launch --gpus 1 -> CUDA_VISIBLE_DEVICES, device count: $seen"
  [ "$(echo "$seen" | awk '{print $2}')" = "1" ] || pin_ok=0
fi
seen=$("$PY" -m qtbench.launch launch --gpus 0 -- "$PY" -c 'import torch; print(torch.cuda.device_count())') || pin_ok=0
echo "launch --gpus 0 -> device count: $seen"
[ "$seen" = "0" ] || pin_ok=0

stage "train every method ($STEPS steps each) and evaluate one checkpoint"
# With 2+ GPUs (or on CPU: 2 processes) Q-Tuning also trains on two, data-parallel and FSDP.
if [ "$DEVICE" = "cuda" ]; then
  PROCESSES=$("$PY" -c 'import torch; print(min(2, torch.cuda.device_count()))')
else
  PROCESSES=2
fi
status=0
QTBENCH_GPU_LOCK_DIR="$OUT/gpu-locks" "$PY" "$REPO/benchmarks/gpu_check.py" --world "$OUT/world" --base "$OUT/base" \
  --out "$OUT/check" --steps "$STEPS" --device "$DEVICE" --threads "$THREADS" --processes "$PROCESSES" \
  2> "$OUT/check.log" || status=$?

stage "done"
if [ "$pin_ok" != 1 ]; then
  echo "gpu_check: FAILED: GPU pinning (python -m qtbench.launch launch)"
  status=1
fi
if [ "$status" != 0 ]; then
  echo "stderr of the check (last lines):"
  tail -40 "$OUT/check.log"
fi
echo "total $(( $(date +%s) - started )) s; work folder $OUT"
exit "$status"
