#!/usr/bin/env bash
# The first check of the GPU path on a CUDA machine (docs/RESULTS.md, section "GPUs"); nothing here runs in CI.
# Every method for a few steps on the embedded default model with --device cuda, an evaluation on the GPU, a resume,
# and, with two or more GPUs, two ranks over NCCL (DDP, then FSDP). Each run writes
# runs/gpu_check/<name>/metrics.jsonl, whose reward/*, probe/* and time/* show whether it trains and how fast.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible to torch'; print(torch.cuda.get_device_name(0))"
out=runs/gpu_check
rm -rf "$out"
poise train --max-steps 20 --device cuda --output-dir "$out/poise" --checkpoint.every 10
poise train --max-steps 30 --device cuda --output-dir "$out/poise" --resume      # resumes on the GPU
for m in grpo dapo rloo ppo; do
  poise train --config "$m" --max-steps 5 --device cuda --output-dir "$out/$m"
done
poise eval --model.name "$out/poise/policy" --device cuda --num-problems 100 --k 4 --output "$out/eval.jsonl"
if [ "$(python -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
  accelerate launch --multi_gpu --num_processes 2 -m poise.commands.cli train --max-steps 10 --output-dir "$out/ddp"
  accelerate launch --multi_gpu --num_processes 2 -m poise.commands.cli train --config dapo --max-steps 5 \
    --output-dir "$out/ddp_dapo"
  accelerate launch --config_file examples/accelerate/fsdp.yaml --num_processes 2 -m poise.commands.cli train --max-steps 10 \
    --output-dir "$out/fsdp"                                                       # FSDP2 over NCCL
  accelerate launch --config_file examples/accelerate/fsdp.yaml --num_processes 2 -m poise.commands.cli train --config ppo \
    --max-steps 5 --output-dir "$out/fsdp_ppo"
fi
if python -c "import vllm" 2>/dev/null; then  # the vLLM engine (scripts/install_vllm.sh; on a GPU: vllm==0.32.0)
  # bf16 sampling, fp32 training, sleep mode during the update; rollout/logprob_diff_* and rollout/tis_* show the
  # mismatch and its correction
  poise train --rollout.engine vllm --rollout.engine_dtype bfloat16 --max-steps 10 --device cuda \
    --checkpoint.every 5 --output-dir "$out/vllm"
  poise train --rollout.engine vllm --rollout.engine_dtype bfloat16 --max-steps 12 --device cuda \
    --output-dir "$out/vllm" --resume
  poise train --config dapo --rollout.engine vllm --max-steps 5 --device cuda --output-dir "$out/vllm_dapo"
  if python -c "import trl" 2>/dev/null; then  # POISETrainer with TRL's colocated vLLM against TRL's generate
    python benchmarks/trl_vllm.py --models default --shapes 16x8 --steps 4 --reps 1 --from-step 2 \
      --out "$out/trl_vllm.json"
  fi
  if [ "$(python -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then  # one engine per rank
    accelerate launch --multi_gpu --num_processes 2 -m poise.commands.cli train --rollout.engine vllm \
      --max-steps 5 --output-dir "$out/vllm_ddp"
    accelerate launch --config_file examples/accelerate/fsdp.yaml --num_processes 2 -m poise.commands.cli train \
      --rollout.engine vllm --max-steps 5 --output-dir "$out/vllm_fsdp"              # full weights gathered to push
  fi
else
  echo "gpu_check: vllm is not installed; the vLLM engine was not checked"
fi
echo "gpu_check: every run finished; see $out/*/metrics.jsonl"
