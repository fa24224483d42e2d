#!/usr/bin/env bash
# KV compression on a real model (docs/compression.md): StreamingLLM over a stream 40x the training length, H2O and
# StreamingLLM against the full cache at four budgets, and quantized KV, all on stories260K with grimm.txt; CSVs,
# PNG plots and markdown tables in OUT.
# Usage, from the repository root:  docs/compression/run.sh [OUT]    (OUT defaults to /tmp/lckv-compression)
set -euo pipefail
OUT=${1:-/tmp/lckv-compression}
SHARED=${LCKV_SHARED:-../shared}
STREAM=${STREAM:-20480}      # tokens of the one-stream test (40x the 512-token training length)
WINDOW_TOKENS=${WINDOW_TOKENS:-all}   # tokens of grimm scored in 512-token windows (all, or the first N)
LCKV="dotnet src/Lckv.Cli/bin/Release/net10.0/Lckv.Cli.dll"
M="$SHARED/models/stories260K/stories260Ktok512.gguf"
TEXT="$SHARED/data/grimm.txt"
# the file says llama.context_length 128 (its converter's default); the model was trained on 512-token sequences
LONG="--allow-long-context"

[ -f Lckv.sln ] || { echo "run from the repository root" >&2; exit 2; }
if [ -z "${SKIP_BUILD:-}" ]; then dotnet build -c Release Lckv.sln -v q -nologo >/dev/null; fi
mkdir -p "$OUT"
limit=(); [ "$WINDOW_TOKENS" != all ] && limit=(--limit-tokens "$WINDOW_TOKENS")

# 1. one stream of $STREAM tokens, teacher-forced, perplexity per 1000 positions
s=(--model "$M" --file "$TEXT" --limit-tokens "$STREAM" --context "$STREAM" $LONG --segment 1000 --json)
$LCKV perplexity "${s[@]}" --evict streaming --sinks 4 --recent 252 > "$OUT/stream-sinks4-recent252.json"
$LCKV perplexity "${s[@]}" --evict streaming --sinks 0 --recent 256 > "$OUT/stream-recent256.json"
$LCKV perplexity "${s[@]}" > "$OUT/stream-full.json"
$LCKV perplexity --model "$M" --file "$TEXT" --limit-tokens "$STREAM" --context 512 $LONG --segment 1000 --json > "$OUT/stream-windows512.json"
$LCKV perplexity --model "$M" --file "$TEXT" --limit-tokens 512 --context 512 $LONG --json > "$OUT/stream-first512.json"

# 2. grimm in 512-token windows: the full cache, then StreamingLLM (4 sinks) and H2O (half heavy, half recent) at each budget
w=(--model "$M" --file "$TEXT" --context 512 $LONG --json "${limit[@]}")
$LCKV perplexity "${w[@]}" > "$OUT/budget-full.json"
for b in 32 64 128 256; do
  $LCKV perplexity "${w[@]}" --evict streaming --sinks 4 --recent $((b - 4)) > "$OUT/budget-streaming-$b.json"
  $LCKV perplexity "${w[@]}" --evict h2o --heavy $((b / 2)) --recent $((b / 2)) > "$OUT/budget-h2o-$b.json"
done

# 4. quantized KV, the same windows (q4 needs a head dim that is a multiple of 32: stories260K's is 8)
$LCKV perplexity "${w[@]}" --kv-dtype int8 > "$OUT/kv-int8.json"
$LCKV perplexity "${w[@]}" --kv-dtype q4 > "$OUT/kv-q4.json" 2> "$OUT/kv-q4.err" || true

python3 docs/compression/report.py "$OUT"
$LCKV plot lines --csv "$OUT/stream.csv" --out "$OUT/stream.png" --title "stories260K on one stream of grimm.txt" \
  --subtitle "teacher-forced, perplexity per 1000 positions; trained on 512-token sequences" --x-label "position (thousands)" --y-label "perplexity"
$LCKV plot lines --csv "$OUT/budget.csv" --out "$OUT/budget.png" --title "stories260K, grimm.txt in 512-token windows" \
  --subtitle "teacher-forced decode under each policy; the full cache for reference" --x-label "KV budget (entries per store)" --y-label "perplexity"
