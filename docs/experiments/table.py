#!/usr/bin/env python3
"""Markdown table of a docs/experiments/run.sh output folder: table.py OUT LAYOUT..."""
import json, os, re, sys

out, layouts = sys.argv[1], sys.argv[2:]
rows = []
for l in layouts:
    run = os.path.join(out, "runs", l)
    cfg = json.load(open(os.path.join(run, "checkpoint", "config.json")))
    n = cfg["num_hidden_layers"]
    lt = cfg.get("layer_types") or "_".join(str(i) for i in range(n))
    targets = [int(t.rstrip("s")) for t in lt.split("_")]
    steps = [json.loads(x) for x in open(os.path.join(run, "log.jsonl"))]
    evals = [x for x in steps if x["event"] == "eval"]
    steps = [x for x in steps if x["event"] == "step"]
    tokens = steps[-1]["tokens"]
    per_step = tokens / len(steps)
    seconds = sum(per_step / s["tokens_per_second"] for s in steps)
    tail = [s["loss"] for s in steps[-20:]]
    m = re.search(r"([\d,]+) parameters", open(os.path.join(run, "train.out")).read())
    wt = json.load(open(os.path.join(run, "ppl-wikitext2-test.json")))
    ts = json.load(open(os.path.join(run, "ppl-tinyshakespeare-tail.json")))
    rows.append(dict(layout=l, lt=lt, kv=len(set(targets)), params=m.group(1) if m else "?", tokens=tokens,
                     tps=tokens / seconds, wall=int(open(os.path.join(run, "train.seconds")).read()),
                     loss=sum(tail) / len(tail), val=evals[-1]["val_perplexity"] if evals else float("nan"),
                     wt=wt["perplexity"], wt_tokens=wt["tokens"], ts=ts["perplexity"], ts_tokens=ts["tokens"]))

base = next((r for r in rows if r["layout"] == "llama"), rows[0])
print(f"| layout | layer_types | KV layers | params | tokens trained | train tok/s | train wall s | final train loss (last 20 steps) "
      f"| val ppl (held-out 5% tails) | ppl wikitext-2 test ({rows[0]['wt_tokens']} tok) | ppl tinyshakespeare tail ({rows[0]['ts_tokens']} tok) "
      f"| ratio to llama (val / wt2 / ts) |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    ratio = f"{r['val'] / base['val']:.3f} / {r['wt'] / base['wt']:.3f} / {r['ts'] / base['ts']:.3f}"
    print(f"| {r['layout']} | `{r['lt']}` | {r['kv']} | {r['params']} | {r['tokens']:,} | {r['tps']:.0f} | {r['wall']} | {r['loss']:.3f} "
          f"| {r['val']:.2f} | {r['wt']:.2f} | {r['ts']:.2f} | {ratio} |")
