#!/usr/bin/env bash
# One composed row (docs/compression.md, LESS): a model with KVSharer's map, H2O, LESS maps trained for that model and
# budget, and int8 KV, against the original model's full cache: perplexity in CONTEXT-token windows on EVAL, and the KV
# bytes per token and per sequence of CONTEXT tokens (lckv info), one row per step of the composition.
# Usage, from the repository root:
#   docs/compression/less-composed.sh ORIGINAL SHARED TRAIN_IDS EVAL_IDS CONTEXT HEAVY RECENT OUT
#   e.g. the 12-layer model and its similar-first cap-3 map (docs/compression.md, KVSharer):
#   docs/compression/less-composed.sh /tmp/lckv-deeper/runs/llama-12x256/checkpoint /tmp/kvs/deeper/t0.5-similar-3 \
#     /tmp/lckv-deeper/grimm-train.ids /tmp/lckv-deeper/grimm-tail.ids 512 8 8 /tmp/lckv-less-composed
set -euo pipefail
ORIG=$1; SHARED=$2; TRAIN=$3; EVAL=$4; CTX=$5; HEAVY=$6; RECENT=$7; OUT=$8
EPOCHS=${EPOCHS:-5}; HIDDEN=${HIDDEN:-512}
LCKV=${LCKV:-"dotnet src/Lckv.Cli/bin/Release/net10.0/Lckv.Cli.dll"}
[ -f Lckv.sln ] || { echo "run from the repository root" >&2; exit 2; }
mkdir -p "$OUT"
maps="$OUT/less-h2o-$HEAVY-$RECENT.safetensors"
[ -f "$maps.done" ] || { $LCKV less train --model "$SHARED" --ids-file "$TRAIN" --evict h2o --heavy "$HEAVY" --recent "$RECENT" \
  --seq-len "$CTX" --epochs "$EPOCHS" --hidden "$HIDDEN" --out "$maps" --force --json > "$maps.json" 2> "$maps.log"; touch "$maps.done"; }
ppl() { $LCKV perplexity --model "$1" --ids-file "$EVAL" --context "$CTX" "${@:2}" --json 2>/dev/null \
  | python3 -c "import json,sys; print('%.2f' % json.loads(sys.stdin.read().splitlines()[-1])['perplexity'])"; }
kv() { $LCKV info --model "$1" --context "$CTX" "${@:2}" --json 2>/dev/null \
  | python3 -c "import json,sys; d=json.load(sys.stdin); print(d['kv_bytes_per_token'], d['kv_bytes_per_sequence'] + d.get('less_state_bytes_per_sequence', 0))"; }
H2O=(--evict h2o --heavy "$HEAVY" --recent "$RECENT")
{
echo "| model | KV | policy | ppl | KV bytes/token | KV bytes per $CTX-token sequence (pool blocks + LESS state) |"
echo "|---|---|---|---:|---:|---:|"
row() { local m=$1 label=$2 kvname=$3 policy=$4; shift 4; read -r bpt bps <<<"$(kv "$m" "$@")"; echo "| $label | $kvname | $policy | $(ppl "$m" "$@") | $bpt | $bps |"; }
row "$ORIG" original f32 "full cache" --kv-dtype f32
row "$SHARED" "KVSharer $(python3 -c "import json; print(json.load(open('$SHARED/config.json'))['layer_types'])")" f32 "full cache" --kv-dtype f32
row "$SHARED" "KVSharer" f32 "H2O $HEAVY+$RECENT" --kv-dtype f32 "${H2O[@]}"
row "$SHARED" "KVSharer" f32 "H2O $HEAVY+$RECENT + LESS" --kv-dtype f32 "${H2O[@]}" --less "$maps"
row "$SHARED" "KVSharer" int8 "H2O $HEAVY+$RECENT + LESS" --kv-dtype int8 "${H2O[@]}" --less "$maps"
} | tee "$OUT/table.md"
