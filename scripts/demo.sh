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
python -m bertscale.data_pipeline --config bertscale/data_pipeline/configs/demo.yaml output_dir="$DEMO_DIR/shards" overwrite=true

step "2/4 pretraining (deepspeed launcher, 2 CPU ranks, ZeRO-1)"
deepspeed --num_accelerators 2 --master_port "${DEMO_MASTER_PORT:-29517}" --module bertscale.pretrain \
  --config bertscale/pretrain/configs/tiny.yaml data.shards="$DEMO_DIR/shards" output_dir="$DEMO_DIR/pretrain" \
  mlflow.tracking_uri="$TRACKING" "$@"

step "3/4 fine-tuning: sentiment (Rotten Tomatoes) from the pretrained checkpoint"
python -m bertscale.finetune --config bertscale/finetune/configs/sentiment.yaml model.checkpoint="$DEMO_DIR/pretrain" \
  output_dir="$DEMO_DIR/finetune/sentiment" overwrite=true mlflow.tracking_uri="$TRACKING"

step "4/4 fine-tuning: named entities (BIO tweets) from the pretrained checkpoint"
python -m bertscale.finetune --config bertscale/finetune/configs/ner.yaml model.checkpoint="$DEMO_DIR/pretrain" \
  output_dir="$DEMO_DIR/finetune/ner" overwrite=true mlflow.tracking_uri="$TRACKING"

step "done"
python -m bertscale.infra.mlflow_summary --tracking-uri "$TRACKING"
cat <<MSG

All runs are in $TRACKING. Open the MLflow UI (binds 127.0.0.1 only):
  .venv/bin/mlflow ui --backend-store-uri $TRACKING --host 127.0.0.1 --port 5000
  then browse http://127.0.0.1:5000
MSG
