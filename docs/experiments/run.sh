#!/usr/bin/env bash
# Small-scale LCKV quality table (docs/experiments.md): data prepare, five trainings of the same shape and token
# budget (llama, lckv-w2, lckv-w4, cla2, yoco), perplexity evaluations, loss-curve PNG and a markdown table.
# Usage, from the repository root:  docs/experiments/run.sh [OUT]    (OUT defaults to /tmp/lckv-experiment)
# A run whose folder holds train.done is not trained again, so an interrupted experiment can be re-run.
set -euo pipefail
OUT=${1:-/tmp/lckv-experiment}
SHARED=${LCKV_SHARED:-../shared}
STEPS=${STEPS:-384}        # updates
BATCH=${BATCH:-16}         # rows per update
SEQ=${SEQ:-128}            # tokens per row; 384 x 16 x 128 = 786,432 tokens, ~0.92 epoch of the training split
LR=${LR:-1e-3}             # peak; cosine decay to LR/10
WARMUP=${WARMUP:-40}
SEED=${SEED:-1}
WT_TOKENS=${WT_TOKENS:-all}    # score all of wikitext-2/test.txt, or only its first N tokens
LAYOUTS=${LAYOUTS:-"llama lckv-w2 lckv-w4 cla2 yoco"}
CONFIG=docs/experiments/config.json
LCKV=${LCKV:-"dotnet src/Lckv.Cli/bin/Release/net10.0/Lckv.Cli.dll"}

[ -f Lckv.sln ] || { echo "run from the repository root" >&2; exit 2; }
start=$(date +%s)
if [ -z "${SKIP_BUILD:-}" ]; then dotnet build -c Release Lckv.sln -v q -nologo >/dev/null; fi
mkdir -p "$OUT/runs"

# 1. data: train split = the first 95% of each file's tokens, validation = the last 5% (tail-of-each-file)
$LCKV data prepare --tokenizer "$SHARED/tokenizers/en4k.model" --out "$OUT/data" --force --json \
  "$SHARED/data/tinyshakespeare.txt" "$SHARED/data/grimm.txt" "$SHARED/data/wikitext-2/valid.txt" > "$OUT/data.json"
# the tinyshakespeare held-out tail = exactly the first val_tokens of val.bin (sources are laid out in order and
# tinyshakespeare is the first source); written as token ids so no re-tokenization boundary can differ
ts_val=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['sources'][0]['val_tokens'])" "$OUT/data/meta.json")
od -An -v -tu2 -N $((ts_val * 2)) "$OUT/data/val.bin" | tr -s ' ' '\n' | grep -v '^$' > "$OUT/tinyshakespeare-tail.ids"
echo "data: $(cat "$OUT/data.json"); tinyshakespeare tail: $ts_val tokens"

# 2. training (same shape, budget, schedule and seed; LCKV layouts use the config defaults m=7 b=2)
for l in $LAYOUTS; do
  run="$OUT/runs/$l"
  if [ -f "$run/train.done" ]; then echo "$l: already trained"; continue; fi
  rm -rf "$run"; mkdir -p "$run"
  t0=$(date +%s)
  $LCKV train --config $CONFIG --layout "$l" --data "$OUT/data" --out "$run" --batch "$BATCH" --seq-len "$SEQ" \
    --steps "$STEPS" --lr "$LR" --warmup "$WARMUP" --seed "$SEED" --eval-every 0 --eval-batches 0 --save-every 0 \
    --print-every 50 > "$run/train.out" 2>&1 || { cat "$run/train.out" >&2; exit 1; }
  echo $(( $(date +%s) - t0 )) > "$run/train.seconds"
  touch "$run/train.done"
  echo "$l: $(tail -1 "$run/train.out") ($(cat "$run/train.seconds")s)"
done

# 3. evaluation: perplexity with 128-token windows (the training length), stride 128
for l in $LAYOUTS; do
  run="$OUT/runs/$l"
  limit=(); [ "$WT_TOKENS" = all ] || limit=(--limit-tokens "$WT_TOKENS")
  $LCKV perplexity --model "$run/checkpoint" --file "$SHARED/data/wikitext-2/test.txt" --context "$SEQ" --stride "$SEQ" \
    "${limit[@]}" --json 2>/dev/null > "$run/ppl-wikitext2-test.json"
  $LCKV perplexity --model "$run/checkpoint" --ids-file "$OUT/tinyshakespeare-tail.ids" --context "$SEQ" --stride "$SEQ" \
    --json 2>/dev/null > "$run/ppl-tinyshakespeare-tail.json"
  echo "$l: wikitext-2 $(cat "$run/ppl-wikitext2-test.json")"
done

# 4. loss curves and the table
logs=()
for l in $LAYOUTS; do logs+=(--log "$OUT/runs/$l/log.jsonl:$l"); done
$LCKV plot loss "${logs[@]}" --out "$OUT/loss.png" --smooth 20 --y-max 6 \
  --title "Training loss, 8 layers x 256, $STEPS x $BATCH x $SEQ tokens" --subtitle "moving average over 20 steps, lr $LR, warmup $WARMUP, cosine"
python3 docs/experiments/table.py "$OUT" $LAYOUTS | tee "$OUT/table.md"
echo "total wall time: $(( $(date +%s) - start ))s; outputs in $OUT"
