#!/usr/bin/env bash
# A deeper model to experiment on (issue 17: LESS and KVSharer evaluations, docs/experiments.md "A deeper model"):
# 12 layers x hidden 256 (docs/experiments/deeper-config.json), trained from scratch on 512-token windows, with the
# last 10% of each source held out, so that grimm's last 10% is never trained on.
# Usage, from the repository root:  docs/experiments/deeper.sh [OUT]    (OUT defaults to /tmp/lckv-deeper)
# Outputs: OUT/data (train.bin/val.bin/meta.json), OUT/grimm-train.ids (grimm's first 90%: the tokens trained on),
# OUT/grimm-tail.ids (grimm's held-out last 10%), OUT/runs/$NAME/checkpoint, its train.out/log.jsonl/ppl-*.json.
# A run whose folder holds train.done is not trained again (only evaluated).
set -euo pipefail
OUT=${1:-/tmp/lckv-deeper}
SHARED=${LCKV_SHARED:-../shared}
NAME=${NAME:-llama-12x256}
STEPS=${STEPS:-260}        # updates
BATCH=${BATCH:-8}          # rows per update
SEQ=${SEQ:-512}            # tokens per row; 260 x 8 x 512 = 1,064,960 tokens, ~1.3 epochs of the 813,672-token split
LR=${LR:-1e-3}             # peak; cosine decay to LR/10
WARMUP=${WARMUP:-26}
SAVE_EVERY=${SAVE_EVERY:-0}    # intermediate checkpoints (0 = only at the end)
SEED=${SEED:-1}
VAL_FRACTION=${VAL_FRACTION:-0.1}
WT_TOKENS=${WT_TOKENS:-65536}  # score the first N tokens of wikitext-2/test.txt, or all of it (WT_TOKENS=all)
CONFIG=docs/experiments/deeper-config.json
LCKV=${LCKV:-"dotnet src/Lckv.Cli/bin/Release/net10.0/Lckv.Cli.dll"}

[ -f Lckv.sln ] || { echo "run from the repository root" >&2; exit 2; }
start=$(date +%s)
if [ -z "${SKIP_BUILD:-}" ]; then dotnet build -c Release src/Lckv.Cli -v q -nologo >/dev/null; fi
mkdir -p "$OUT/runs"

# 1. data: train split = the first 90% of each file's tokens, validation = the last 10% (tail-of-each-file).
# Sources are laid out in order in train.bin and val.bin (tinyshakespeare, grimm, wikitext-2 valid), so grimm's
# tokens start after tinyshakespeare's in both files; the offsets come from meta.json. Written as token ids so no
# re-tokenization boundary can differ. Each source's train part starts with BOS; its validation part has none.
$LCKV data prepare --tokenizer "$SHARED/tokenizers/en4k.model" --out "$OUT/data" --force --json \
  --val-fraction "$VAL_FRACTION" \
  "$SHARED/data/tinyshakespeare.txt" "$SHARED/data/grimm.txt" "$SHARED/data/wikitext-2/valid.txt" > "$OUT/data.json"
python3 - "$OUT" <<'EOF'
import array, json, os, sys
out = sys.argv[1]
meta = json.load(open(os.path.join(out, "data", "meta.json")))
assert meta["dtype"] == "uint16"
def load(name):
    a = array.array("H"); a.frombytes(open(os.path.join(out, "data", name), "rb").read()); return a
train, val = load("train.bin"), load("val.bin")
assert len(train) == meta["train_tokens"] and len(val) == meta["val_tokens"]
t0 = v0 = 0
for s in meta["sources"]:
    if os.path.basename(s["path"]) == "grimm.txt":
        head, tail = train[t0:t0 + s["train_tokens"]], val[v0:v0 + s["val_tokens"]]
        break
    t0 += s["train_tokens"]; v0 += s["val_tokens"]
else:
    sys.exit("grimm.txt is not a source of the dataset")
for name, ids in (("grimm-train.ids", head), ("grimm-tail.ids", tail)):
    with open(os.path.join(out, name), "w") as f:
        f.write(" ".join(map(str, ids)) + "\n")
print(f"grimm: train tokens {len(head)} (train.bin offset {t0}), held-out tail {len(tail)} (val.bin offset {v0})")
EOF
echo "data: $(cat "$OUT/data.json")"

# 2. training
run="$OUT/runs/$NAME"
if [ -f "$run/train.done" ]; then
  echo "$NAME: already trained"
else
  rm -rf "$run"; mkdir -p "$run"
  t0=$(date +%s)
  $LCKV train --config $CONFIG --layout llama --data "$OUT/data" --out "$run" --batch "$BATCH" --seq-len "$SEQ" \
    --steps "$STEPS" --lr "$LR" --warmup "$WARMUP" --seed "$SEED" --eval-every 0 --eval-batches 0 --save-every "$SAVE_EVERY" \
    --print-every 10 > "$run/train.out" 2>&1 || { cat "$run/train.out" >&2; exit 1; }
  echo $(( $(date +%s) - t0 )) > "$run/train.seconds"
  touch "$run/train.done"
  echo "$NAME: $(tail -1 "$run/train.out") ($(cat "$run/train.seconds")s)"
fi

# 3. evaluation: perplexity with 512-token windows (the training length), stride 512
limit=(); [ "$WT_TOKENS" = all ] || limit=(--limit-tokens "$WT_TOKENS")
$LCKV perplexity --model "$run/checkpoint" --ids-file "$OUT/grimm-tail.ids" --context "$SEQ" --stride "$SEQ" \
  --json 2>/dev/null > "$run/ppl-grimm-tail.json"
echo "$NAME: grimm tail $(cat "$run/ppl-grimm-tail.json")"
$LCKV perplexity --model "$run/checkpoint" --file "$SHARED/data/wikitext-2/test.txt" --context "$SEQ" --stride "$SEQ" \
  "${limit[@]}" --json 2>/dev/null > "$run/ppl-wikitext2-test.json"
echo "$NAME: wikitext-2 test $(cat "$run/ppl-wikitext2-test.json")"
echo "total wall time: $(( $(date +%s) - start ))s; checkpoint $run/checkpoint"
