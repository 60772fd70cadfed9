#!/usr/bin/env python3
"""The PyTorch side of bench/gpu.ts (the GPU comparison): the same GEMMs and training steps as
our rows, by PyTorch on the same GPU, in the same call. One JSON object per row on stdout;
progress and notes on stderr.

GEMM rows, torch.matmul at the linear-layer products of bench/matmul.ts in the same layouts
(forward X·Wᵀ, dX = dY·W, dW = dYᵀ·X; C[m,n] = A[m,k]·B[k,n], 2·m·n·k flops), in fp32 with TF32
off (cuBLAS single precision: what our f32 GEMM is compared with), fp16 and bf16 (tensor cores):
  {"kernel":"gemm_reference","m":..,"n":..,"k":..,"product":"forward"|"dX"|"dW",
   "dtype":"fp32"|"fp16"|"bf16","ms":..,"gflops":..}

Training-step rows, one per mode and precision: Hugging Face's RobertaForSequenceClassification
built from a config (random weights, no download) with its classifier replaced by the EH-FT head
(first token, Linear(H -> 2048) -> ReLU -> Linear(2048 -> 1)), BCE with logits, dropout 0.1 on,
random token ids, no padding; AdamW with the engine's settings (betas 0.9/0.98, eps 1e-6, weight
decay 0.1 except biases and LayerNorm weights) over the trainable tensors, gradients clipped to
global norm 0.1. Modes as bench/train_step.ts: `ft` trains everything; `bitfit` the layers' and
embedding LayerNorm's biases and the head; `lora` rank-8 (alpha 16, no dropout) adapters on query,
key, value and attention-output plus the head, backbone frozen. `amp`: "fp32" (TF32 off: the
like-with-like comparison) or "bf16" (torch.autocast to bfloat16: what a PyTorch user would
run). Each: two untimed warm-up steps, then steps timed until the GPU finished (synchronize), as
many as fit --budget seconds (at least --min-reps); `ms` is their median.
  {"kernel":"train_step_reference","mode":..,"amp":..,"layers":..,"hidden":..,"batch":..,
   "seq":..,"ms":..,"samples_per_s":..,"first_loss":..,"trainable":..,"impl":..,"attention":..}

Without transformers (this CPU machine: Debian's python3-torch only) the encoder is
bench/torch_cpu_step.py's plain-torch BERT (`impl` "plain-torch") so that the harness can be
rehearsed; on the GPU machine's image it is transformers (`impl` "transformers").

  python3 bench/torch_step.py [--shapes 4096x1024x1024,...] [--layers 24 --hidden 1024
      --heads 16 --intermediate 4096 --vocab 50265 --batch 32 --seq 128] [--modes ft,bitfit,lora]
      [--amp fp32,bf16] [--device auto|cuda|cpu] [--budget 4] [--no-gemm] [--no-step]
"""

import argparse
import json
import math
import os
import re
import sys
import time

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_cpu_step import median  # noqa: E402
HEAD_WIDTH = 2048
LORA_R, LORA_ALPHA = 8, 16


def note(text):
    print(f"torch_step: {text}", file=sys.stderr, flush=True)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------
# GEMMs


def gemm_rows(shapes, dtypes, device, reps):
    rows = []
    gen = torch.Generator(device="cpu").manual_seed(0)
    for rows_, inf, outf in shapes:
        for dtype_name in dtypes:
            if device.type == "cpu" and dtype_name != "fp32":
                continue  # CPU half-precision matmuls say nothing about a GPU
            dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[
                dtype_name]

            def t(*shape):
                return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

            x, w, dy = t(rows_, inf), t(outf, inf), t(rows_, outf)
            y = torch.empty(rows_, outf, device=device, dtype=dtype)
            dx = torch.empty(rows_, inf, device=device, dtype=dtype)
            dw = torch.empty(outf, inf, device=device, dtype=dtype)
            products = [
                ("forward", (rows_, outf, inf), lambda: torch.matmul(x, w.t(), out=y)),
                ("dX", (rows_, inf, outf), lambda: torch.matmul(dy, w, out=dx)),
                ("dW", (outf, inf, rows_), lambda: torch.matmul(dy.t(), x, out=dw)),
            ]
            for product, (m, n, k), fn in products:
                s = timed_calls(fn, device, reps)
                rows.append({
                    "kernel": "gemm_reference", "m": m, "n": n, "k": k, "product": product,
                    "dtype": dtype_name, "ms": s * 1000, "gflops": 2 * m * n * k / s / 1e9,
                })
    return rows


def timed_calls(fn, device, reps):
    """Median seconds per call: `reps` timings, each of a batch of calls long enough to time."""
    fn()
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    one = max(time.perf_counter() - start, 1e-6)
    per = max(1, min(200, int(0.02 / one)))  # about 20 ms per timing
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(per):
            fn()
        sync(device)
        times.append((time.perf_counter() - start) / per)
    return median(times)


# ---------------------------------------------------------------------------------------------
# Training steps


class EhftHead(nn.Module):
    """The EH-FT head on the first token: Linear(H -> 2048) -> ReLU -> Linear(2048 -> 1)."""

    def __init__(self, hidden):
        super().__init__()
        self.dense = nn.Linear(hidden, HEAD_WIDTH)
        self.out_proj = nn.Linear(HEAD_WIDTH, 1)

    def forward(self, features, **_):
        return self.out_proj(torch.relu(self.dense(features[:, 0])))


class LoraLinear(nn.Module):
    """y = base(x) + (alpha / r) · x Aᵀ Bᵀ, A ~ U(±1/√in), B = 0 (PEFT's init; no dropout)."""

    def __init__(self, base):
        super().__init__()
        self.base = base
        bound = 1 / math.sqrt(base.in_features)
        like = {"device": base.weight.device, "dtype": base.weight.dtype}  # the model's, not CPU
        self.lora_A = nn.Parameter(
            torch.empty(LORA_R, base.in_features, **like).uniform_(-bound, bound))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, LORA_R, **like))

    def forward(self, x):
        return self.base(x) + F.linear(F.linear(x, self.lora_A), self.lora_B) * (LORA_ALPHA / LORA_R)


# Parameter names per encoder implementation: what BitFit trains, where LoRA goes, what is not
# decayed.
NAMES = {
    "transformers": {
        "bitfit": re.compile(
            r"(encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\."
            r"(dense|LayerNorm)|intermediate\.dense|output\.(dense|LayerNorm))|embeddings\.LayerNorm)"
            r"\.bias$"),
        "lora": re.compile(r"encoder\.layer\.\d+\.attention\.(self\.(query|key|value)|output\.dense)$"),
        "no_decay": re.compile(r"(\.bias|LayerNorm\.weight)$"),
    },
    "plain-torch": {
        "bitfit": re.compile(
            r"(layers\.\d+\.(query|key|value|attn_out|attn_ln|inter|out|out_ln)|emb_ln)\.bias$"),
        "lora": re.compile(r"layers\.\d+\.(query|key|value|attn_out)$"),
        "no_decay": re.compile(r"(\.bias|_ln\.weight)$"),
    },
}


def on_device(make, device):
    """make() with its tensors created on `device` (torch >= 2.0), else made here and moved."""
    if not hasattr(torch.device, "__enter__"):  # torch 1.x: a device is no context manager
        return make().to(device)
    with torch.device(device):
        return make()


def build_model(a, device):
    """The encoder with the EH-FT head, its implementation's name and its attention kernel."""
    try:
        import transformers
        from transformers import RobertaConfig, RobertaForSequenceClassification
    except ImportError as e:
        note(f"transformers not importable ({e}): plain-torch encoder instead")
        import torch_cpu_step
        a.max_positions = a.seq + 2
        model = on_device(lambda: torch_cpu_step.Model(a), device)
        return model, "plain-torch", "eager (plain torch)", "none"
    config = RobertaConfig(
        vocab_size=a.vocab, hidden_size=a.hidden, num_hidden_layers=a.layers,
        num_attention_heads=a.heads, intermediate_size=a.intermediate,
        max_position_embeddings=a.seq + 2 if a.seq + 2 > 514 else 514, type_vocab_size=1,
        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, num_labels=1,
    )

    def make():
        model = RobertaForSequenceClassification(config)
        model.classifier = EhftHead(a.hidden)
        return model

    model = on_device(make, device)
    attention = getattr(model.config, "_attn_implementation", None) or "eager"
    return model, "transformers", attention, transformers.__version__


def logits_of(model, impl, ids):
    if impl == "transformers":
        return model(input_ids=ids).logits.squeeze(-1)
    return model(ids)


def prepare_mode(model, impl, mode, layers):
    """Sets requires_grad for `mode` (adding LoRA adapters); returns the trainable parameters."""
    names = NAMES[impl]
    head = "classifier." if impl == "transformers" else ("dense.", "out_proj.")
    if mode == "lora":
        sites = [(n, m) for n, m in model.named_modules()
                 if isinstance(m, nn.Linear) and names["lora"].search(n)]
        if len(sites) != 4 * layers:
            sys.exit(f"torch_step: lora: found {len(sites)} attention linears, expected "
                     f"{4 * layers}: this transformers version names them differently")
        for name, module in sites:
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, LoraLinear(module))
    for name, p in model.named_parameters():
        if mode == "ft":
            p.requires_grad_(True)
        elif mode == "bitfit":
            p.requires_grad_(bool(names["bitfit"].search(name)) or name.startswith(head))
        else:
            p.requires_grad_("lora_" in name or name.startswith(head))
    if mode == "bitfit":
        biases = [n for n, _ in model.named_parameters() if names["bitfit"].search(n)]
        if len(biases) != 8 * layers + 1:
            sys.exit(f"torch_step: bitfit: found {len(biases)} biases, expected {8 * layers + 1}: "
                     "this transformers version names them differently")
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def step_row(a, mode, amp, device):
    torch.manual_seed(0)
    model, impl, attention, version = build_model(a, device)
    model.train()
    params = prepare_mode(model, impl, mode, a.layers)
    no_decay = NAMES[impl]["no_decay"]
    opt = torch.optim.AdamW(
        [{"params": [p for n, p in params if not no_decay.search(n)], "weight_decay": 0.1},
         {"params": [p for n, p in params if no_decay.search(n)], "weight_decay": 0.0}],
        lr=1e-5 if mode == "ft" else 5e-4, betas=(0.9, 0.98), eps=1e-6,
    )
    gen = torch.Generator(device="cpu").manual_seed(1)
    batches = [
        (torch.randint(5, a.vocab, (a.batch, a.seq), generator=gen).to(device),
         torch.randint(0, 2, (a.batch,), generator=gen).float().to(device))
        for _ in range(2)
    ]
    trainable = [p for _, p in params]

    def step(i):
        ids, labels = batches[i % 2]
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
            logits = logits_of(model, impl, ids)
        loss = F.binary_cross_entropy_with_logits(logits.float(), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 0.1)
        opt.step()
        return loss

    first_loss = step(0).item()
    step(1)
    sync(device)
    times = []
    while len(times) < a.min_reps or sum(times) + times[-1] <= a.budget:
        start = time.perf_counter()
        loss = step(len(times))
        sync(device)
        times.append(time.perf_counter() - start)
        if len(times) >= 50:
            break
    if not math.isfinite(loss.item()) or not math.isfinite(first_loss):
        sys.exit(f"torch_step: {mode} {amp}: non-finite loss")
    s = median(times)
    row = {
        "kernel": "train_step_reference", "mode": mode, "amp": amp,
        "layers": a.layers, "hidden": a.hidden, "heads": a.heads,
        "intermediate": a.intermediate, "vocab": a.vocab, "batch": a.batch, "seq": a.seq,
        "ms": s * 1000, "samples_per_s": a.batch / s, "timed_steps": len(times),
        "first_loss": first_loss, "trainable": sum(p.numel() for p in trainable),
        "impl": impl, "attention": attention, "transformers": version,
    }
    return row


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default="4096x1024x1024,4096x1024x4096,4096x4096x1024",
                        help="GEMM shapes: rows x in x out, comma-separated")
    parser.add_argument("--gemm-dtypes", default="fp32,fp16,bf16")
    for name, default in [("layers", 24), ("hidden", 1024), ("heads", 16),
                          ("intermediate", 4096), ("vocab", 50265), ("batch", 32), ("seq", 128),
                          ("reps", 7), ("min-reps", 3)]:
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--modes", default="ft,bitfit,lora")
    parser.add_argument("--amp", default="fp32,bf16")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--budget", type=float, default=4.0, help="seconds of timed steps per row")
    parser.add_argument("--no-gemm", action="store_true")
    parser.add_argument("--no-step", action="store_true")
    a = parser.parse_args()
    if a.min_reps < 1 or a.reps < 1:
        parser.error("--reps and --min-reps must be at least 1")
    for mode in a.modes.split(","):
        if mode not in ("ft", "bitfit", "lora"):
            parser.error(f"--modes: unknown mode {mode!r} (ft, bitfit, lora)")
    for amp in a.amp.split(","):
        if amp not in ("fp32", "bf16"):
            parser.error(f"--amp: unknown {amp!r} (fp32, bf16)")
    if a.device == "auto":
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(a.device)
    # Like with like: our f32 kernels do IEEE single-precision multiply-adds, so cuBLAS must not
    # round the inputs to TF32 (PyTorch's default for matmul is already off; cuDNN's is on).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    cuda = torch.version.cuda if device.type == "cuda" else "none"
    note(f"torch {torch.__version__}, CUDA {cuda}, device {name}")
    common = {"device": name, "torch": torch.__version__}

    def emit(row):
        print(json.dumps({**row, **common}), flush=True)

    if not a.no_gemm:
        shapes = [tuple(int(v) for v in s.lower().split("x")) for s in a.shapes.split(",") if s]
        start = time.perf_counter()
        for row in gemm_rows(shapes, a.gemm_dtypes.split(","), device, a.reps):
            emit(row)
        note(f"GEMMs in {time.perf_counter() - start:.1f} s")
    if not a.no_step:
        for amp in a.amp.split(","):
            if amp == "bf16" and device.type == "cpu":
                note("bf16 autocast skipped on the CPU")
                continue
            for mode in a.modes.split(","):
                start = time.perf_counter()
                row = step_row(a, mode, amp, device)
                if device.type == "cuda":
                    torch.cuda.empty_cache()  # the row's model and optimizer are gone now
                emit(row)
                note(f"train step {mode} {amp}: {row['ms']:.1f} ms ({row['impl']}, attention "
                     f"{row['attention']}), {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
