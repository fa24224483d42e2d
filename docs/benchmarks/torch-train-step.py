"""The PyTorch eager peer of tests/Lckv.Tests/Training/TrainingThroughputTests.cs: the `small` preset's Llama
(hidden 512, intermediate 1408, 8 layers, 8 heads / 4 KV heads of 64, vocab 4096, RoPE 10000, RMSNorm 1e-5, untied
head), random weights, 8 x 128 random tokens; one step = loss, gradients, clip 1.0, AdamW. Prints the median step time
of --steps after 2 warm-up steps, and tok/s.

--layout lckv is the LCKV layout `0_6_6_6_6_6_6_7` trained with the iteration plan of ../shared/docs/kv-sharing.md §4
(m = 7 passes without gradient, then b = 2 with it): layers 1-5 have no K/V projections and read layer 6's KV from the
previous pass with the diagonal masked (zeros in the first pass); in the passes that do not advance the hidden state,
layer 6 computes only its KV, since nothing else of it is used (Lckv's trainer skips the same work).

python3 docs/benchmarks/torch-train-step.py --threads 2 --steps 7 [--layout lckv]
"""
import argparse, statistics, time
import torch
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=2)
p.add_argument("--steps", type=int, default=7)
p.add_argument("--layout", choices=["standard", "lckv"], default="standard")
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
H, I, L, NH, NKV, D, V, B, T = 512, 1408, 8, 8, 4, 64, 4096, 8, 128
TYPES = list(range(L)) if a.layout == "standard" else [0, 6, 6, 6, 6, 6, 6, 7]
M, BP = 7, 2


class Layer(torch.nn.Module):
    def __init__(self, kv):
        super().__init__()
        self.n1, self.n2 = torch.nn.Parameter(torch.ones(H)), torch.nn.Parameter(torch.ones(H))
        self.q = torch.nn.Linear(H, NH * D, bias=False)
        self.k, self.v = (torch.nn.Linear(H, NKV * D, bias=False) for _ in range(2)) if kv else (None, None)
        self.o = torch.nn.Linear(NH * D, H, bias=False)
        self.gate, self.up = torch.nn.Linear(H, I, bias=False), torch.nn.Linear(H, I, bias=False)
        self.down = torch.nn.Linear(I, H, bias=False)

    def kv(self, h, cos, sin):
        k = self.k(h).view(B, T, NKV, D).transpose(1, 2)
        v = self.v(h).view(B, T, NKV, D).transpose(1, 2)
        return rope(k, cos, sin), v

    def forward(self, x, cos, sin, kv=None, kv_only=False):
        """kv: another layer's (K, V) to attend to with the diagonal masked; None: this layer's own, causal.
        Returns the new hidden state (None when kv_only) and the KV this layer computed (None if it computes none)."""
        h = rms(x, self.n1)
        own = self.kv(h, cos, sin) if self.k is not None else None
        if kv_only:
            return None, own
        q = rope(self.q(h).view(B, T, NH, D).transpose(1, 2), cos, sin)
        k, v = kv if kv is not None else own
        k, v = k.repeat_interleave(NH // NKV, 1), v.repeat_interleave(NH // NKV, 1)
        s = (q @ k.transpose(-1, -2)) / D ** 0.5
        s = s.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 0 if kv is not None else 1), float("-inf"))
        p = s.softmax(-1)
        if kv is not None:
            p = p.nan_to_num(0.0)  # token 0 sees no key: its output is zero
        o = (p @ v).transpose(1, 2).reshape(B, T, NH * D)
        x = x + self.o(o)
        h = rms(x, self.n2)
        return x + self.down(F.silu(self.gate(h)) * self.up(h)), own


def rms(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w


def rope(x, cos, sin):
    x1, x2 = x[..., : D // 2], x[..., D // 2:]
    return x * cos + torch.cat((-x2, x1), -1) * sin


emb = torch.nn.Embedding(V, H)
layers = torch.nn.ModuleList(Layer(i in TYPES) for i in range(L))
norm, head = torch.nn.Parameter(torch.ones(H)), torch.nn.Linear(H, V, bias=False)
params = list(emb.parameters()) + list(layers.parameters()) + [norm] + list(head.parameters())
opt = torch.optim.AdamW(params, lr=1e-4)
inv = 1.0 / (10000 ** (torch.arange(0, D, 2).float() / D))
ang = torch.outer(torch.arange(T).float(), inv)
cos, sin = torch.cat((ang, ang), -1).cos(), torch.cat((ang, ang), -1).sin()
tokens = torch.randint(0, V, (B, T))


def group(x, first, top):
    """Layers first..top, where first..top-1 read top's KV: m passes without gradient and b with it, each from the
    same input x; only the last advances the hidden state."""
    kv = tuple(torch.zeros(B, NKV, T, D) for _ in range(2))
    for it in range(M + BP):
        last = it == M + BP - 1
        with torch.set_grad_enabled(it >= M):
            h = x
            for i in range(first, top):
                h, _ = layers[i](h, cos, sin, kv=kv)
            h, kv = layers[top](h, cos, sin, kv_only=not last)
    return h


def step():
    opt.zero_grad()
    x = emb(tokens)
    i = 0
    while i < L:
        if TYPES[i] > i:
            x = group(x, i, TYPES[i])
            i = TYPES[i] + 1
        else:
            x, _ = layers[i](x, cos, sin)
            i += 1
    logits = head(rms(x, norm))
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, V), tokens[:, 1:].reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()


for _ in range(2):
    step()
times = []
for _ in range(a.steps):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
t = statistics.median(times)
print(f"{a.layout}: torch {torch.__version__} ({torch.__config__.parallel_info().splitlines()[0]}), {a.threads} threads: "
      f"step {t * 1000:.0f} ms = {B * T / t:.0f} tok/s")
