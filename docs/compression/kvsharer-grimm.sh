#!/usr/bin/env bash
# KVSharer on grimm (docs/compression.md, KVSharer): grimm.txt is split at the last newline before 90% of its
# characters; calibration comes from the head's paragraphs (wrapped lines joined into one line each, so that a
# paragraph holds a 64-token sequence), perplexity from the held-out tail in CONTEXT-token windows. For each threshold,
# order and cap 1..MAX_SHARE: the map the search finds, its accepted/rejected counts and its perplexity; a markdown table.
# Usage, from the repository root:  docs/compression/kvsharer-grimm.sh MODEL MAX_SHARE [OUT]
#   MODEL: a checkpoint folder or a .gguf file (then each result is a .gguf file naming its map); OUT: /tmp/lckv-kvsharer-grimm
#   env: CONTEXT (default 128), THRESHOLDS (default "0.5 0.9"), SAMPLES (30), LENGTH (64),
#        TAIL_IDS (the held-out tail as ids, scored instead of the tail text), WIKITEXT=1 (also wikitext-2 test, first 65536 tokens)
set -euo pipefail
MODEL=$1; MAX=$2; OUT=${3:-/tmp/lckv-kvsharer-grimm}
SHARED=${LCKV_SHARED:-../shared}
CONTEXT=${CONTEXT:-128}; THRESHOLDS=${THRESHOLDS:-0.5 0.9}; SAMPLES=${SAMPLES:-30}; LENGTH=${LENGTH:-64}
LCKV="dotnet src/Lckv.Cli/bin/Release/net10.0/Lckv.Cli.dll"
[ -f Lckv.sln ] || { echo "run from the repository root" >&2; exit 2; }
if [ -z "${SKIP_BUILD:-}" ]; then dotnet build -c Release Lckv.sln -v q -nologo >/dev/null; fi
mkdir -p "$OUT"

# the split: head (calibration paragraphs) and tail (evaluation text)
python3 - "$SHARED/data/grimm.txt" "$OUT" <<'EOF'
import re, sys
t = open(sys.argv[1], encoding='utf-8').read()
cut = t.rfind('\n', 0, int(len(t) * 0.9)) + 1
open(sys.argv[2] + '/grimm-tail.txt', 'w', encoding='utf-8').write(t[cut:])
paras = (' '.join(p.split()) for p in re.split(r'\n\s*\n', t[:cut]))
open(sys.argv[2] + '/grimm-head-paragraphs.txt', 'w', encoding='utf-8').write(''.join(p + '\n' for p in paras if p))
EOF

ext=""; [ -f "$MODEL" ] && ext=".gguf"
ppl() { $LCKV perplexity --model "$1" "${@:2}" --context "$CONTEXT" --json 2>/dev/null | python3 -c "import json,sys; print('%.2f' % json.load(sys.stdin)['perplexity'])"; }
declare -A cache   # perplexity columns by layer_types: the same map is scored once
cols() {
  if [ -z "${cache[$2]:-}" ]; then
    local c
    if [ -n "${TAIL_IDS:-}" ]; then c="$(ppl "$1" --ids-file "$TAIL_IDS")"; else c="$(ppl "$1" --file "$OUT/grimm-tail.txt")"; fi
    if [ -n "${WIKITEXT:-}" ]; then c="$c | $(ppl "$1" --file "$SHARED/data/wikitext-2/test.txt" --limit-tokens 65536)"; fi
    cache[$2]=$c
  fi
  echo "${cache[$2]}"
}
{
head="| threshold | order | share | layer_types | KV layers | accepted / rejected | tried (i,j):score, x = rejected | ppl grimm tail"
sep="|---:|---|---:|---|---:|---:|---|---:"
if [ -n "${WIKITEXT:-}" ]; then head="$head | ppl wikitext-2 test"; sep="$sep|---:"; fi
echo "$head |"; echo "$sep|"
read -r n base <<<"$($LCKV info --model "$MODEL" | awk '$1 == "layer_types" { print split($2, a, "_"), $2 }')"
echo "| | (none) | 0 | \`$base\` | $n | | | $(cols "$MODEL" "$base") |"
for th in $THRESHOLDS; do for order in dissimilar similar; do for c in $(seq 1 "$MAX"); do
  dst="$OUT/t$th-$order-$c$ext"
  j=$($LCKV kvsharer --model "$MODEL" --calib "$OUT/grimm-head-paragraphs.txt" --samples "$SAMPLES" --length "$LENGTH" --share "$c" \
      --threshold "$th" --order "$order" --out "$dst" --force --json)
  echo "$j" > "$OUT/t$th-$order-$c.json"
  read -r types kv counts tried <<<"$(echo "$j" | python3 -c "import json,sys; d=json.load(sys.stdin); t=d['tried']; a=sum(x['accepted'] for x in t); print(d['layer_types'], d['kv_layers'], '%d/%d' % (a, len(t) - a), ','.join('(%d,%d):%.3f%s' % (x['layer'],x['target'],x['score'],'' if x['accepted'] else 'x') for x in t) or '-')")"
  echo "| $th | $order | $c | \`$types\` | $kv | $counts | $tried | $(cols "$dst" "$types") |"
done; done; done
} | tee "$OUT/table.md"
