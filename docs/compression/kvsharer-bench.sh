#!/usr/bin/env bash
# KVSharer's cost side (docs/compression.md, KVSharer): KV bytes per token (lckv info) and batch-16 decode tok/s
# (lckv bench -p 64 -n 64 -b 16, 5 repetitions each) of the original model and the shared one, run back to back and
# alternating for ROUNDS rounds, so that a busy machine weighs on both alike; one markdown row per run.
# Usage, from the repository root:  docs/compression/kvsharer-bench.sh ORIGINAL SHARED [ROUNDS]   (ROUNDS default 2)
set -euo pipefail
ORIG=$1; SHARED_MODEL=$2; ROUNDS=${3:-2}
LCKV="dotnet src/Lckv.Cli/bin/Release/net10.0/Lckv.Cli.dll"
[ -f Lckv.sln ] || { echo "run from the repository root" >&2; exit 2; }
if [ -z "${SKIP_BUILD:-}" ]; then dotnet build -c Release Lckv.sln -v q -nologo >/dev/null; fi
echo "| round | model | layer_types | KV bytes/token | tg64 batch 16 t/s (± sd) | pp64 batch 16 t/s | steady | contended samples |"
echo "|---:|---|---|---:|---:|---:|---|---:|"
for r in $(seq 1 "$ROUNDS"); do for m in "$ORIG" "$SHARED_MODEL"; do
  kv=$($LCKV info --model "$m" | awk '$1 == "KV" && $2 == "bytes/token" { print $3 }')
  $LCKV bench --model "$m" -p 64 -n 64 -b 16 -o json 2>/dev/null | python3 -c "
import json, sys
d = json.load(sys.stdin); t = {x['test']: x for x in d['results']}
tg, pp = t['tg64'], t['pp64']
print('| $r | %s | \`%s\` | $kv | %.0f ± %.0f | %.0f | %s | %d of %d |' % ('$(basename "$m")', d['layer_types'], tg['tokens_per_second'], tg['stddev'],
      pp['tokens_per_second'], 'yes' if tg['steady'] else 'no', d['contended_core_samples'], d['core_samples']))"
done; done
