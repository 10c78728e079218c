#!/usr/bin/env bash
# Every benchmark once at a tiny size: that it still runs end to end, not how fast (minutes, 2 cores).
# usage: bash benchmarks/smoke.sh [OUT]      (default: a fresh temporary folder, removed afterwards)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}  # this checkout's venv when there is one
out=${1:-$(mktemp -d)}
keep=${1:+yes}
mkdir -p "$out"
run() { local name=$1; shift; local t0=$SECONDS
        if "$py" "benchmarks/$name.py" "$@" > "$out/$name.log" 2>&1; then echo "ok     $name ($((SECONDS - t0)) s)"
        else echo "FAILED $name ($((SECONDS - t0)) s): see $out/$name.log"; tail -5 "$out/$name.log" || true; status=1; fi; }
status=0
run bench_fetch --only wdr-pipe --n 200 --out "$out/fetch"
run bench_features --n 200 --shard-size 100 --workers 1 --repeats 1 --out "$out/features"
run bench_stats --n 20000 --repeat 1
run bench_loader --images 200 --rounds 1 --out "$out/loader" --loaders "ours (uint8 only),ImageFolder"
run bench_thresholds --n 2000 --labels 20 --repeat 1 --subset 2
run bench_train --out "$out/train" --train 64 --size 64 --batch 16 --rounds 1
run bench_embed --out "$out/embed" --part both --train 64 --val 32 --size 64 --epochs 2 --seeds 1 --search-sizes 1000
run bench_predict --out "$out/predict" --test 32 --batch 16 --rounds 1
run bench_saliency --images 2 --labels 2 --repeats 1
run bench_browse --out "$out/browse" --images 2000 --rounds 2
run ablation --out "$out/ablation" --train 64 --val 32 --stored 96 --size 64 --epochs 1 --batch 16
run bench_recipe --out "$out/recipe" --sets demo,photos --demo 48,24 --photos 48,24 \
    --rows default,single,oracle,oracle-wide,fastai --train-flags "--epochs 1 --image-size 64 --batch-size 16 --workers 0" \
    --fastai-epochs 2 --fastai-batch 16 --oracle-c 1
for exp in grid steps lastbatch lrfind thresholds; do   # on the photo store bench_recipe built (64 px embeddings)
  run recipe_lab "$exp" --store "$out/recipe/photos/store" --size 64 --seeds 1 --epochs 2 --batch 16 --batches 16 --opts adamw \
      --lrs 1e-2 --budgets 10,20 --fold-seeds 2
done
run finetune_lab --store "$out/recipe/photos/store" --size 64 --batch 16 --variants "one:lr=1e-3;epochs=1"
[ -n "$keep" ] || rm -rf "$out"
exit $status
