#!/usr/bin/env python3
"""The CPU reference of the train_step rows of `deno task bench`: the same model shape trained by
PyTorch on this machine's CPU. transformers is not installable here, so the encoder is Hugging
Face's BertModel written in plain torch (as tools/make_fixtures.py does: embeddings + LayerNorm,
post-LayerNorm layers with eager attention, exact GELU, no pooler), with its dropout (hidden and
attention probabilities, 0.1) on, and the EH-FT head on the first token (Linear(H -> 2048) ->
ReLU -> Linear(2048 -> 1), BCE with logits). torch.optim.AdamW over every parameter (full
fine-tuning: the `ft` mode), betas (0.9, 0.98), eps 1e-6, weight decay 0.1 except biases and
LayerNorm weights, gradients clipped to global norm 0.1, as the engine's defaults.

Threads: torch's own default (--threads overrides it); the row says how many. Random weights (N(0, 0.02), LayerNorm 1, biases 0), random token ids, no padding. One warm-up
step, then timed steps (each: zero_grad, forward, backward, clip, optimizer step) until --reps
steps or --budget seconds (at least one); the median goes to stdout as one JSON line:
{"kernel":"train_step_reference","mode":"ft","layers":..,"hidden":..,"batch":..,"seq":..,"ms":..,
"samples_per_s":..,"threads":..,"torch":..,"blas":..}.

Run with Debian's torch:  /usr/bin/python3 bench/torch_cpu_step.py [--layers 4 --hidden 256
--heads 4 --intermediate 1024 --vocab 30522 --max-positions 512 --batch 32 --seq 128]
"""

import argparse
import json
import math
import os
import sys
import time

for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
    os.environ.pop(var, None)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

HEAD_WIDTH = 2048
DROPOUT = 0.1
EPS = 1e-12


class Layer(nn.Module):
    def __init__(self, H, heads, inter):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(H, H)
        self.key = nn.Linear(H, H)
        self.value = nn.Linear(H, H)
        self.attn_out = nn.Linear(H, H)
        self.attn_ln = nn.LayerNorm(H, eps=EPS)
        self.inter = nn.Linear(H, inter)
        self.out = nn.Linear(inter, H)
        self.out_ln = nn.LayerNorm(H, eps=EPS)

    def forward(self, h):
        B, S, H = h.shape
        nh = self.heads
        hd = H // nh

        def split(x):
            return x.view(B, S, nh, hd).permute(0, 2, 1, 3)

        q, k, v = split(self.query(h)), split(self.key(h)), split(self.value(h))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(hd)
        probs = F.dropout(torch.softmax(scores, dim=-1), DROPOUT, self.training)
        ctx = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous().view(B, S, H)
        h = self.attn_ln(F.dropout(self.attn_out(ctx), DROPOUT, self.training) + h)
        o = self.out(F.gelu(self.inter(h)))
        return self.out_ln(F.dropout(o, DROPOUT, self.training) + h)


class Model(nn.Module):
    def __init__(self, a):
        super().__init__()
        H = a.hidden
        self.word = nn.Embedding(a.vocab, H, padding_idx=0)
        self.position = nn.Embedding(a.max_positions, H)
        self.token_type = nn.Embedding(2, H)
        self.emb_ln = nn.LayerNorm(H, eps=EPS)
        self.layers = nn.ModuleList(Layer(H, a.heads, a.intermediate) for _ in range(a.layers))
        self.dense = nn.Linear(H, HEAD_WIDTH)
        self.out_proj = nn.Linear(HEAD_WIDTH, 1)
        for name, p in self.named_parameters():
            with torch.no_grad():
                if name.endswith("bias"):
                    p.zero_()
                elif "ln" in name:
                    p.fill_(1.0)
                else:
                    p.normal_(0.0, 0.02)

    def forward(self, ids):
        B, S = ids.shape
        pos = torch.arange(S, device=ids.device).expand(B, S)
        x = self.word(ids) + self.position(pos) + self.token_type(torch.zeros_like(ids))
        h = F.dropout(self.emb_ln(x), DROPOUT, self.training)
        for layer in self.layers:
            h = layer(h)
        return self.out_proj(torch.relu(self.dense(h[:, 0]))).squeeze(-1)


def median(xs):
    s = sorted(xs)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def blas_libraries():
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "/" in line}
    except OSError:
        return []
    return sorted(p for p in paths if "blas" in os.path.basename(p))


def main():
    parser = argparse.ArgumentParser()
    for name, default in [("layers", 4), ("hidden", 256), ("heads", 4), ("intermediate", 1024),
                          ("vocab", 30522), ("max-positions", 512), ("batch", 32), ("seq", 128),
                          ("reps", 3)]:
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--budget", type=float, default=20.0)
    # Debian's torch starts with 1 OpenMP thread here, and its GEMMs go to OpenBLAS, which runs
    # its own 2 threads: that default is the faster one (BERT-mini 32 x 128: 2.1 s per step with
    # 1 torch thread, 3.5 s with 2, which oversubscribe the 2 cores), so it is kept unless given.
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's own)")
    a = parser.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = Model(a)
    model.train()
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "ln" in n)]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "ln" in n]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-5, betas=(0.9, 0.98), eps=1e-6,
    )
    gen = torch.Generator().manual_seed(1)
    batches = [
        (torch.randint(5, a.vocab, (a.batch, a.seq), generator=gen),
         torch.randint(0, 2, (a.batch,), generator=gen).float())
        for _ in range(2)
    ]

    def step(i):
        ids, labels = batches[i % 2]
        opt.zero_grad(set_to_none=True)
        loss = F.binary_cross_entropy_with_logits(model(ids), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        opt.step()
        return loss.item()

    step(0)
    times = []
    while len(times) < a.reps and (not times or sum(times) + times[-1] <= a.budget):
        start = time.perf_counter()
        loss = step(len(times) + 1)
        times.append(time.perf_counter() - start)
        if not math.isfinite(loss):
            sys.exit(f"torch_cpu_step: non-finite loss {loss}")
    s = median(times)
    blas = ", ".join(blas_libraries()) or "none loaded"
    print(f"torch_cpu_step: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"BLAS {blas}, {len(times)} timed steps", file=sys.stderr)
    print(json.dumps({
        "kernel": "train_step_reference",
        "mode": "ft",
        "layers": a.layers, "hidden": a.hidden, "heads": a.heads,
        "intermediate": a.intermediate, "vocab": a.vocab,
        "batch": a.batch, "seq": a.seq,
        "ms": s * 1000,
        "samples_per_s": a.batch / s,
        "timed_steps": len(times),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "blas": blas,
    }))


if __name__ == "__main__":
    main()
