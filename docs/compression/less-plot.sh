#!/usr/bin/env bash
# The plot of docs/compression/less.sh's table: perplexity against the H2O budget for the full cache, H2O alone and
# H2O + LESS. Usage, from the repository root: docs/compression/less-plot.sh OUT TITLE  (OUT: less.sh's folder)
set -euo pipefail
OUT=$1; TITLE=$2
LCKV=${LCKV:-"dotnet src/Lckv.Cli/bin/Release/net10.0/Lckv.Cli.dll"}
python3 - "$OUT" <<'PY'
import sys
out = sys.argv[1]
rows = [l.split('|')[1:-1] for l in open(f'{out}/table.md') if l.startswith('| ') and l.split('|')[1].strip()[:1].isdigit()]
pts = sorted((sum(int(x) for x in r[0].strip().split('+')), [float(v) for v in r[1:4]]) for r in rows)
with open(f'{out}/less.csv', 'w') as f:
    f.write('series,x,y\n')
    for i, name in enumerate(['full cache', 'H2O', 'H2O + LESS']):
        for b, v in pts: f.write(f'{name},{b},{v[i]}\n')
PY
$LCKV plot lines --csv "$OUT/less.csv" -o "$OUT/less.png" --title "$TITLE" --x-label "H2O budget (heavy + recent positions)" --y-label "perplexity (held-out)"
