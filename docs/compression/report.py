#!/usr/bin/env python3
"""Tables and plot data of docs/compression/run.sh: reads OUT/*.json, writes OUT/stream.csv, OUT/budget.csv, OUT/tables.md."""
import json
import os
import sys

out = sys.argv[1]


def load(name):
    path = os.path.join(out, name)
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return None
    with open(path) as f:
        return json.load(f)


lines = []
stream = [("sinks 4 + recent 252", "stream-sinks4-recent252.json"), ("recent 256 (no sinks)", "stream-recent256.json"),
          ("full cache (whole stream)", "stream-full.json"), ("full cache (512-token windows)", "stream-windows512.json")]
runs = [(label, load(name)) for label, name in stream]
with open(os.path.join(out, "stream.csv"), "w") as f:
    f.write("series,x,y\n")
    for label, r in runs:
        for s in r["segments"]:
            f.write(f"{label},{s['from'] / 1000:.3f},{s['perplexity']:.6f}\n")
first = load("stream-first512.json")
lines.append("Perplexity per 1000-token segment of one teacher-forced stream:")
lines.append("")
lines.append("| positions | " + " | ".join(label for label, _ in runs) + " |")
lines.append("|---|" + "---:|" * len(runs))
for i, seg in enumerate(runs[0][1]["segments"]):
    cells = [f"{r['segments'][i]['perplexity']:.2f}" if i < len(r["segments"]) else "-" for _, r in runs]
    lines.append(f"| {seg['from']}-{seg['from'] + 999} | " + " | ".join(cells) + " |")
lines.append("| whole stream | " + " | ".join(f"{r['perplexity']:.2f}" for _, r in runs) + " |")
lines.append("")
lines.append(f"Full cache over the first 512 tokens alone: perplexity {first['perplexity']:.2f} ({first['tokens']} tokens).")
lines.append("")

full = load("budget-full.json")
budgets = [32, 64, 128, 256]
with open(os.path.join(out, "budget.csv"), "w") as f:
    f.write("series,x,y\n")
    for kind in ("streaming", "h2o"):
        for b in budgets:
            r = load(f"budget-{kind}-{b}.json")
            f.write(f"{'StreamingLLM (4 sinks)' if kind == 'streaming' else 'H2O (half heavy)'},{b},{r['perplexity']:.6f}\n")
    for b in budgets:
        f.write(f"full cache,{b},{full['perplexity']:.6f}\n")
lines.append(f"grimm.txt in 512-token windows ({full['tokens']} tokens scored, {full['windows']} windows):")
lines.append("")
lines.append("| KV budget | StreamingLLM (4 sinks + rest recent) | H2O (half heavy, half recent) | full cache |")
lines.append("|---:|---:|---:|---:|")
for b in budgets:
    st, h2 = load(f"budget-streaming-{b}.json"), load(f"budget-h2o-{b}.json")
    lines.append(f"| {b} | {st['perplexity']:.3f} | {h2['perplexity']:.3f} | {full['perplexity']:.3f} |")
lines.append("")

int8 = load("kv-int8.json")
q4 = load("kv-q4.json")
lines.append("| KV dtype | perplexity | vs f32 |")
lines.append("|---|---:|---:|")
lines.append(f"| f32 | {full['perplexity']:.4f} | |")
lines.append(f"| int8 | {int8['perplexity']:.4f} | {int8['perplexity'] / full['perplexity'] - 1:+.3%} |")
if q4 is not None:
    lines.append(f"| q4 | {q4['perplexity']:.4f} | {q4['perplexity'] / full['perplexity'] - 1:+.3%} |")
else:
    err = open(os.path.join(out, "kv-q4.err")).read().strip().splitlines()
    lines.append(f"| q4 | - | {err[-1] if err else 'not run'} |")

text = "\n".join(lines) + "\n"
with open(os.path.join(out, "tables.md"), "w") as f:
    f.write(text)
print(text)
