#!/usr/bin/env bash
# KVSharer on a trained checkpoint (docs/compression.md, KVSharer): for each order and cap, the layer map the search
# finds (calibration: 30 lines of wikitext-2 valid, 64 tokens, threshold 0.5) and the resulting model's perplexity in
# 128-token windows on wikitext-2 test (the first 65536 tokens) and on the tinyshakespeare tail ids; a markdown table.
# Usage, from the repository root:  docs/compression/kvsharer.sh CHECKPOINT TAIL_IDS [OUT]
#   CHECKPOINT: e.g. the llama run of docs/experiments/run.sh (OUT/runs/llama/checkpoint), TAIL_IDS its
#   tinyshakespeare-tail.ids; OUT defaults to /tmp/lckv-kvsharer
set -euo pipefail
BASE=$1; TAIL=$2; OUT=${3:-/tmp/lckv-kvsharer}
SHARED=${LCKV_SHARED:-../shared}
LCKV="dotnet src/Lckv.Cli/bin/Release/net10.0/Lckv.Cli.dll"
[ -f Lckv.sln ] || { echo "run from the repository root" >&2; exit 2; }
if [ -z "${SKIP_BUILD:-}" ]; then dotnet build -c Release Lckv.sln -v q -nologo >/dev/null; fi
mkdir -p "$OUT"
ppl() { $LCKV perplexity --model "$1" "${@:2}" --context 128 --json 2>/dev/null | python3 -c "import json,sys; print('%.2f' % json.load(sys.stdin)['perplexity'])"; }
row() { echo "| $(ppl "$1" --file "$SHARED/data/wikitext-2/test.txt" --limit-tokens 65536) | $(ppl "$1" --ids-file "$TAIL") |"; }
{
echo "| order | share | layer_types | KV layers | tried (i,j):score, x = rejected | ppl wikitext-2 test | ppl tinyshakespeare tail |"
echo "|---|---:|---|---:|---|---:|---:|"
n=$(python3 -c "import json; print(json.load(open('$BASE/config.json'))['num_hidden_layers'])")
echo "| (none) | 0 | \`$(seq -s _ 0 $((n - 1)))\` | $n | $(row "$BASE")"
for order in dissimilar similar; do for c in 1 2 3 4; do
  j=$($LCKV kvsharer --model "$BASE" --calib "$SHARED/data/wikitext-2/valid.txt" --share $c --order $order --out "$OUT/$order-$c" --force --json)
  echo "$j" > "$OUT/$order-$c.json"
  read -r types kv tried <<<"$(echo "$j" | python3 -c "import json,sys; d=json.load(sys.stdin); print(d['layer_types'], d['kv_layers'], ','.join('(%d,%d):%.3f%s' % (t['layer'],t['target'],t['score'],'' if t['accepted'] else 'x') for t in d['tried']))")"
  echo "| $order | $c | \`$types\` | $kv | $tried $(row "$OUT/$order-$c")"
done; done
} | tee "$OUT/table.md"
