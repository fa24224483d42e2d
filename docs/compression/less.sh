#!/usr/bin/env bash
# LESS against H2O alone and the full cache (docs/compression.md, LESS): for each H2O budget, maps trained on the
# training data (lckv less train), then perplexity of the full cache, H2O alone and H2O + LESS on held-out data, and
# the share of H2O's perplexity gap to the full cache that LESS recovers; a markdown table.
# Usage, from the repository root:
#   docs/compression/less.sh MODEL TRAIN EVAL CONTEXT OUT BUDGET...
#     MODEL   a checkpoint folder or .gguf file
#     TRAIN   training data: a .txt file (the model's tokenizer) or a file of token ids (.ids)
#     EVAL    held-out data, the same kinds
#     CONTEXT tokens per training and evaluation window
#     BUDGET  heavy:recent, e.g. 8:8
#   EPOCHS (10), HIDDEN (512), RANK (8), LR (1e-3) set the training; maps are kept in OUT and not trained again.
# stories260K, grimm split at the last newline before 90% of its characters (what docs/compression.md reports):
#   python3 -c "t=open('../shared/data/grimm.txt').read(); c=t.rfind('\n',0,int(len(t)*0.9))+1; \
#     open('/tmp/grimm-head.txt','w').write(t[:c]); open('/tmp/grimm-tail.txt','w').write(t[c:])"
#   docs/compression/less.sh ../shared/models/stories260K/stories260Ktok512.gguf /tmp/grimm-head.txt /tmp/grimm-tail.txt 128 /tmp/lckv-less-stories 4:4 8:8
set -euo pipefail
MODEL=$1; TRAIN=$2; EVAL=$3; CTX=$4; OUT=$5; shift 5
EPOCHS=${EPOCHS:-10}; HIDDEN=${HIDDEN:-512}; RANK=${RANK:-8}; LR=${LR:-1e-3}
LCKV=${LCKV:-"dotnet src/Lckv.Cli/bin/Release/net10.0/Lckv.Cli.dll"}
[ -f Lckv.sln ] || { echo "run from the repository root" >&2; exit 2; }
if [ -z "${SKIP_BUILD:-}" ]; then dotnet build -c Release Lckv.sln -v q -nologo >/dev/null; fi
mkdir -p "$OUT"
data() { case "$1" in *.txt) echo "$2 $1" ;; *) echo "--ids-file $1" ;; esac; }
ppl() { $LCKV perplexity --model "$MODEL" $(data "$EVAL" --file) --context "$CTX" --kv-dtype f32 "$@" --json 2>/dev/null \
  | python3 -c "import json,sys; print('%.4f' % json.loads(sys.stdin.read().splitlines()[-1])['perplexity'])"; }
full=$(ppl)
{
echo "| budget (heavy+recent) | full cache | H2O | H2O + LESS | gap recovered | training (s) |"
echo "|---|---:|---:|---:|---:|---:|"
for b in "$@"; do
  heavy=${b%%:*}; recent=${b##*:}
  maps="$OUT/less-h2o-$heavy-$recent.safetensors"
  if [ ! -f "$maps.done" ]; then
    t0=$(date +%s)
    $LCKV less train --model "$MODEL" $(data "$TRAIN" --data) --evict h2o --heavy "$heavy" --recent "$recent" --seq-len "$CTX" \
      --epochs "$EPOCHS" --hidden "$HIDDEN" --rank "$RANK" --lr "$LR" --out "$maps" --force --json > "$maps.json" 2> "$maps.log"
    echo $(( $(date +%s) - t0 )) > "$maps.done"
  fi
  h2o=$(ppl --evict h2o --heavy "$heavy" --recent "$recent")
  less=$(ppl --evict h2o --heavy "$heavy" --recent "$recent" --less "$maps")
  rec=$(python3 -c "print('%.0f%%' % (100 * ($h2o - $less) / ($h2o - $full)))")
  echo "| $heavy+$recent | $full | $h2o | $less | $rec | $(cat "$maps.done") |"
done
} | tee "$OUT/table.md"
