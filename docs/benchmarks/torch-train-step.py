"""The PyTorch eager peer of tests/Lckv.Tests/Training/TrainingThroughputTests.cs (standard layout): the `small`
preset's Llama (hidden 512, intermediate 1408, 8 layers, 8 heads / 4 KV heads of 64, vocab 4096, RoPE 10000, RMSNorm
1e-5, untied head), random weights, 8 x 128 random tokens; one step = loss, gradients, clip 1.0, AdamW. Prints the
median step time of --steps after 2 warm-up steps, and tok/s.

python3 docs/benchmarks/torch-train-step.py --threads 2 --steps 7
"""
import argparse, statistics, time
import torch
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=2)
p.add_argument("--steps", type=int, default=7)
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
H, I, L, NH, NKV, D, V, B, T = 512, 1408, 8, 8, 4, 64, 4096, 8, 128


class Layer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.n1, self.n2 = torch.nn.Parameter(torch.ones(H)), torch.nn.Parameter(torch.ones(H))
        self.q, self.k, self.v = (torch.nn.Linear(H, n * D, bias=False) for n in (NH, NKV, NKV))
        self.o = torch.nn.Linear(NH * D, H, bias=False)
        self.gate, self.up = torch.nn.Linear(H, I, bias=False), torch.nn.Linear(H, I, bias=False)
        self.down = torch.nn.Linear(I, H, bias=False)

    def forward(self, x, cos, sin):
        h = rms(x, self.n1)
        q = self.q(h).view(B, T, NH, D).transpose(1, 2)
        k = self.k(h).view(B, T, NKV, D).transpose(1, 2)
        v = self.v(h).view(B, T, NKV, D).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        k, v = k.repeat_interleave(NH // NKV, 1), v.repeat_interleave(NH // NKV, 1)
        s = (q @ k.transpose(-1, -2)) / D ** 0.5
        s = s.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
        o = (s.softmax(-1) @ v).transpose(1, 2).reshape(B, T, NH * D)
        x = x + self.o(o)
        h = rms(x, self.n2)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


def rms(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w


def rope(x, cos, sin):
    x1, x2 = x[..., : D // 2], x[..., D // 2:]
    return x * cos + torch.cat((-x2, x1), -1) * sin


emb = torch.nn.Embedding(V, H)
layers = torch.nn.ModuleList(Layer() for _ in range(L))
norm, head = torch.nn.Parameter(torch.ones(H)), torch.nn.Linear(H, V, bias=False)
params = list(emb.parameters()) + list(layers.parameters()) + [norm] + list(head.parameters())
opt = torch.optim.AdamW(params, lr=1e-4)
inv = 1.0 / (10000 ** (torch.arange(0, D, 2).float() / D))
ang = torch.outer(torch.arange(T).float(), inv)
cos, sin = torch.cat((ang, ang), -1).cos(), torch.cat((ang, ang), -1).sin()
tokens = torch.randint(0, V, (B, T))


def step():
    opt.zero_grad()
    x = emb(tokens)
    for layer in layers:
        x = layer(x, cos, sin)
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
print(f"torch {torch.__version__} ({torch.__config__.parallel_info().splitlines()[0]}), {a.threads} threads: "
      f"step {t * 1000:.0f} ms = {B * T / t:.0f} tok/s")
