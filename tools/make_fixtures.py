#!/usr/bin/env python3
"""Writes the PyTorch reference fixtures tests/fixtures/{tiny-bert,tiny-roberta,tiny-bert-wic}/.

Each fixture is a tiny random encoder in Hugging Face layout plus the EH-FT head, and PyTorch's
float64 forward and backward for one batch:

  config.json           Hugging Face style config (dropout probabilities 0.1 as in real configs).
  model.safetensors     F32 weights `<prefix>.embeddings.*`, `<prefix>.encoder.layer.i.*`, `head.*`.
  reference.safetensors inputs (I64), labels, spans (WiC), last_hidden_state, head_input, logits,
                        loss and grad.<name> for every tensor of model.safetensors (F64).

The reference is computed with dropout 0 and in float64 from the float32 weights (cast to double),
so it is the exact float64 result for exactly the weights that are stored.

tiny-bert also gets adamw_reference.safetensors: three steps of torch.optim.AdamW (lr 1e-3 constant,
betas (0.9, 0.98), eps 1e-6, weight decay 0.1 except on biases and LayerNorm weights) in float64 from
model.safetensors over 9 examples in batches of 3 (the first is reference.safetensors' batch): the
inputs, labels, each step's loss before its update and delta.<name> = final − initial per tensor.
It is checked against AdamW's formula by hand and against a float32 torch run of the same steps.
tiny-bert also gets ehft_reference.safetensors: EH-FT with BitFit over the same batches (Stage 1,
one step, on BitFit's biases and the head; the backbone restored, the head kept; Stage 2, two steps,
on everything with a fresh AdamW): each step's loss and delta.<name>; and EH-FT-reserve's
(BitFit's biases kept through the hand-off) as reserve.losses and reserve.delta.<name>;
and ehft_peft_reference.safetensors, the same two runs with LoRA and with prefix-tuning (Stage 1 two
steps, from the adapters' initial values that the file holds), under "lora." and "prefix.".

transformers and safetensors are not installable here, so the modeling code below reproduces
Hugging Face's BertModel / RobertaModel (eager attention, absolute positions, no pooler) in plain
torch, and the safetensors writer is our own. The script checks itself before writing anything:
every encoder layer against torch.nn.TransformerEncoderLayer (an independent implementation of the
same post-LayerNorm block), RoBERTa's position ids against a loop, every tensor's autograd gradient
against central finite differences at sampled elements and along one random direction through all
parameters, and every value finite. After writing, it reads the files back and compares bit for bit.

Run with Debian's torch:  /usr/bin/python3 tools/make_fixtures.py [output_root]
(output_root defaults to <repository>/tests/fixtures; the output is the same on every run).
"""

import json
import math
import os
import re
import struct
import sys

import torch
import torch.nn.functional as F

HEAD_HIDDEN = 2048  # EH-FT head: Linear(F -> 2048) -> ReLU -> Linear(2048 -> C).

# Hugging Face's safetensors dtype names and its layout order (larger alignment first, then name).
ST_DTYPE = {torch.float64: "F64", torch.float32: "F32", torch.int64: "I64"}
ST_RANK = {"F32": 11, "F64": 12, "I64": 13}

BERT_BASE = {
    "model_type": "bert",
    "architectures": ["BertModel"],
    "vocab_size": 101,
    "hidden_size": 24,
    "num_hidden_layers": 2,
    "num_attention_heads": 3,
    "intermediate_size": 37,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 33,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
    "position_embedding_type": "absolute",
    "classifier_dropout": None,
    "use_cache": True,
    "torch_dtype": "float32",
}

ROBERTA_BASE = {
    "model_type": "roberta",
    "architectures": ["RobertaModel"],
    "vocab_size": 103,
    "hidden_size": 24,
    "num_hidden_layers": 2,
    "num_attention_heads": 3,
    "intermediate_size": 37,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 40,  # includes RoBERTa's padding_idx + 1 = 2 offset
    "type_vocab_size": 1,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-5,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "position_embedding_type": "absolute",
    "classifier_dropout": None,
    "use_cache": True,
    "torch_dtype": "float32",
}

# The WiC head input is 5·hidden wide, and head.dense.weight [2048, 5·hidden] with its float64
# gradient dominates the fixture's size, so the WiC encoder is narrower (hidden 12, head dim 4).
BERT_WIC = dict(BERT_BASE, hidden_size=12, num_attention_heads=3, intermediate_size=19)

BERT_SPECIAL = {"cls": 2, "sep": 3, "first_free": 5}  # ids below first_free are never drawn
ROBERTA_SPECIAL = {"cls": 0, "sep": 2, "first_free": 4}  # <s> 0, <pad> 1, </s> 2, <unk> 3

FIXTURES = [
    {
        "name": "tiny-bert",
        "config": BERT_BASE,
        "task": "binary",
        "classes": 1,
        "seed": 1001,
        # (length of segment A, length of segment B or None): 11, 8 and 4 real tokens in S = 11.
        "segments": [(4, 4), (3, 2), (2, None)],
        "labels": [1.0, 0.0, 1.0],
        # adamw_reference.safetensors: three AdamW steps from model.safetensors. Batch 1 is the
        # batch above (so step 1's loss and gradients are reference.safetensors' loss and grad.*);
        # batches 2 and 3 are drawn from their own generator, so the files above do not change.
        "adamw": {
            "seed": 1004,
            # 7, 9, 5 and 9, 11, 3 real tokens in S = 11.
            "segments": [(5, None), (2, 3), (1, 1), (3, 3), (6, 2), (1, None)],
            "labels": [0.0, 0.0, 1.0, 1.0, 0.0, 0.0],
        },
    },
    {
        "name": "tiny-roberta",
        "config": ROBERTA_BASE,
        "task": "multiclass",
        "classes": 3,
        "seed": 2002,
        "segments": [(3, 4), (2, 2), (2, None)],
        "labels": [2, 0, 1],
    },
    {
        "name": "tiny-bert-wic",
        "config": BERT_WIC,
        "task": "wic",
        "classes": 1,
        "seed": 3003,
        "segments": [(4, 4), (3, 2), (1, 1)],
        "labels": [0.0, 1.0, 1.0],
        # token index spans [start, end): first one in segment A, second in segment B
        "span1": [(2, 4), (1, 2), (1, 2)],
        "span2": [(7, 10), (5, 7), (3, 4)],
    },
]

SEQ_LEN = 11


# -------------------------------------------------------------------------------------------------
# Inputs


def build_inputs(cfg, segments, gen):
    """Token ids, mask, token types and position ids the way HF tokenizers and models make them."""
    roberta = cfg["model_type"] == "roberta"
    special = ROBERTA_SPECIAL if roberta else BERT_SPECIAL
    pad = cfg["pad_token_id"]
    vocab = cfg["vocab_size"]

    def words(n):
        return torch.randint(special["first_free"], vocab, (n,), generator=gen).tolist()

    ids, types = [], []
    for a, b in segments:
        seq = [special["cls"]] + words(a) + [special["sep"]]
        tt = [0] * len(seq)
        if b is not None:
            # BERT: [CLS] A [SEP] B [SEP]; RoBERTa: <s> A </s></s> B </s> (no token types).
            seg_b = ([special["sep"]] if roberta else []) + words(b) + [special["sep"]]
            seq += seg_b
            tt += [0 if roberta else 1] * len(seg_b)
        assert len(seq) <= SEQ_LEN
        n_pad = SEQ_LEN - len(seq)
        ids.append(seq + [pad] * n_pad)
        types.append(tt + [0] * n_pad)  # tokenizers give padding token type 0
    input_ids = torch.tensor(ids, dtype=torch.int64)
    token_type_ids = torch.tensor(types, dtype=torch.int64)
    attention_mask = (input_ids != pad).to(torch.int64)
    if roberta:
        position_ids = create_position_ids_from_input_ids(input_ids, pad)
    else:
        position_ids = torch.arange(SEQ_LEN, dtype=torch.int64).unsqueeze(0).expand(len(ids), -1)
    return input_ids, attention_mask, token_type_ids, position_ids.contiguous()


def create_position_ids_from_input_ids(input_ids, padding_idx):
    """HF's RoBERTa: real tokens count from padding_idx + 1, padding gets padding_idx."""
    mask = input_ids.ne(padding_idx).int()
    incremental_indices = torch.cumsum(mask, dim=1).type_as(mask) * mask
    return incremental_indices.long() + padding_idx


# -------------------------------------------------------------------------------------------------
# Weights


def init_weights(cfg, prefix, head_in, classes, gen):
    """float32 weights in HF naming order; scales chosen so no signal vanishes in a tiny model."""
    H, I = cfg["hidden_size"], cfg["intermediate_size"]
    params = {}

    def normal(shape, std, mean=0.0):
        return (torch.randn(shape, generator=gen, dtype=torch.float32) * std + mean).contiguous()

    def layer_norm(name):
        params[f"{name}.weight"] = normal([H], 0.1, 1.0)
        params[f"{name}.bias"] = normal([H], 0.1)

    def linear(name, out_f, in_f, std=0.2, bias_std=0.1):
        params[f"{name}.weight"] = normal([out_f, in_f], std)
        params[f"{name}.bias"] = normal([out_f], bias_std)

    e = f"{prefix}.embeddings"
    params[f"{e}.word_embeddings.weight"] = normal([cfg["vocab_size"], H], 0.5)
    params[f"{e}.position_embeddings.weight"] = normal([cfg["max_position_embeddings"], H], 0.5)
    params[f"{e}.token_type_embeddings.weight"] = normal([cfg["type_vocab_size"], H], 0.5)
    layer_norm(f"{e}.LayerNorm")
    for i in range(cfg["num_hidden_layers"]):
        p = f"{prefix}.encoder.layer.{i}"
        for m in ("query", "key", "value"):
            linear(f"{p}.attention.self.{m}", H, H)
        linear(f"{p}.attention.output.dense", H, H)
        layer_norm(f"{p}.attention.output.LayerNorm")
        linear(f"{p}.intermediate.dense", I, H)
        linear(f"{p}.output.dense", H, I)
        layer_norm(f"{p}.output.LayerNorm")
    linear("head.dense", HEAD_HIDDEN, head_in, std=0.05, bias_std=0.05)
    linear("head.out_proj", classes, HEAD_HIDDEN, std=0.05, bias_std=0.05)
    return params


# -------------------------------------------------------------------------------------------------
# Model: HF BertModel / RobertaModel forward (eager attention, dropout 0) + the EH-FT head


def embeddings(P, cfg, prefix, input_ids, token_type_ids, position_ids):
    roberta = cfg["model_type"] == "roberta"
    pad = cfg["pad_token_id"]
    e = f"{prefix}.embeddings"
    # HF builds word_embeddings (and RoBERTa's position_embeddings) with padding_idx, which keeps
    # those rows' gradients at zero; F.embedding(padding_idx=...) does the same.
    inputs_embeds = F.embedding(input_ids, P[f"{e}.word_embeddings.weight"], padding_idx=pad)
    token_type_embeddings = F.embedding(token_type_ids, P[f"{e}.token_type_embeddings.weight"])
    x = inputs_embeds + token_type_embeddings
    position_embeddings = F.embedding(
        position_ids, P[f"{e}.position_embeddings.weight"], padding_idx=pad if roberta else None
    )
    x = x + position_embeddings
    H = cfg["hidden_size"]
    eps = cfg["layer_norm_eps"]
    return F.layer_norm(x, (H,), P[f"{e}.LayerNorm.weight"], P[f"{e}.LayerNorm.bias"], eps)


def extended_mask(attention_mask, dtype):
    """HF get_extended_attention_mask: [B, 1, 1, S], 0 where attended, else finfo(dtype).min."""
    m = attention_mask[:, None, None, :].to(dtype)
    return (1.0 - m) * torch.finfo(dtype).min


def encoder_layer(P, cfg, p, h, ext_mask, layer=None, lora_scale=None):
    """One post-LN block. Layer `layer`'s LoRA factors (lora_name) and prefix rows (prefix_name),
    when P holds them, enter as Hugging Face PEFT's do: y = x·Wᵀ + b + lora_scale·(x·Aᵀ)·Bᵀ, and
    P key / value rows per head in front of the sequence's, attended to by every query."""
    B, S, H = h.shape
    nh = cfg["num_attention_heads"]
    hd = H // nh
    eps = cfg["layer_norm_eps"]

    def lin(name, x):
        y = F.linear(x, P[f"{p}.{name}.weight"], P[f"{p}.{name}.bias"])
        a = P.get(lora_name(layer, name, "A"))
        if a is not None:
            y = y + lora_scale * F.linear(F.linear(x, a), P[lora_name(layer, name, "B")])
        return y

    def heads(x):
        return x.view(B, S, nh, hd).permute(0, 2, 1, 3)

    q = heads(lin("attention.self.query", h))
    k = heads(lin("attention.self.key", h))
    v = heads(lin("attention.self.value", h))
    rows_k = P.get(prefix_name(layer, "key"))
    if rows_k is not None:
        rows_v = P[prefix_name(layer, "value")]
        k = torch.cat([rows_k.expand(B, -1, -1, -1), k], dim=2)
        v = torch.cat([rows_v.expand(B, -1, -1, -1), v], dim=2)
        rows_mask = torch.zeros(B, 1, 1, rows_k.shape[1], dtype=ext_mask.dtype)
        ext_mask = torch.cat([rows_mask, ext_mask.expand(B, 1, 1, S)], dim=-1)
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(hd)
    scores = scores + ext_mask
    probs = torch.softmax(scores, dim=-1)
    ctx = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous().view(B, S, H)
    a = lin("attention.output.dense", ctx)
    ln = f"{p}.attention.output.LayerNorm"
    h = F.layer_norm(a + h, (H,), P[f"{ln}.weight"], P[f"{ln}.bias"], eps)
    inter = F.gelu(lin("intermediate.dense", h))  # exact erf GELU ("gelu")
    o = lin("output.dense", inter)
    ln = f"{p}.output.LayerNorm"
    return F.layer_norm(o + h, (H,), P[f"{ln}.weight"], P[f"{ln}.bias"], eps)


def encoder(P, cfg, prefix, inputs, lora_scale=None):
    input_ids, attention_mask, token_type_ids, position_ids = inputs
    h = embeddings(P, cfg, prefix, input_ids, token_type_ids, position_ids)
    ext = extended_mask(attention_mask, h.dtype)
    for i in range(cfg["num_hidden_layers"]):
        h = encoder_layer(P, cfg, f"{prefix}.encoder.layer.{i}", h, ext, i, lora_scale)
    return h


def span_mean(h, spans):
    return torch.stack([h[b, s:e].mean(dim=0) for b, (s, e) in enumerate(spans)])


def head_input_of(h, fx):
    h0 = h[:, 0]
    if fx["task"] != "wic":
        return h0
    w1 = span_mean(h, fx["span1"])
    w2 = span_mean(h, fx["span2"])
    return torch.cat([h0, w1, w2, (w1 - w2).abs(), w1 * w2], dim=-1)


def head(P, x):
    pre = F.linear(x, P["head.dense.weight"], P["head.dense.bias"])
    logits = F.linear(torch.relu(pre), P["head.out_proj.weight"], P["head.out_proj.bias"])
    return logits, pre


def loss_of(logits, labels, classes):
    if classes == 1:
        return F.binary_cross_entropy_with_logits(logits.squeeze(-1), labels, reduction="mean")
    return F.cross_entropy(logits, labels, reduction="mean")


def full_forward(P, cfg, prefix, inputs, fx, labels, lora_scale=None):
    h = encoder(P, cfg, prefix, inputs, lora_scale)
    x = head_input_of(h, fx)
    logits, pre = head(P, x)
    return h, x, logits, loss_of(logits, labels, fx["classes"]), pre


# -------------------------------------------------------------------------------------------------
# Self-checks


def check_against_torch_layers(P, cfg, prefix, inputs):
    """Re-runs the encoder with torch.nn.TransformerEncoderLayer, which implements the same
    post-LN block (MHA with packed q/k/v, out_proj, norm1, linear1, GELU, linear2, norm2)."""
    input_ids, attention_mask, token_type_ids, position_ids = inputs
    H = cfg["hidden_size"]
    e = f"{prefix}.embeddings"
    # Embeddings through nn.Embedding / nn.LayerNorm modules rather than the functional path.
    word = torch.nn.Embedding.from_pretrained(P[f"{e}.word_embeddings.weight"].detach())
    pos = torch.nn.Embedding.from_pretrained(P[f"{e}.position_embeddings.weight"].detach())
    typ = torch.nn.Embedding.from_pretrained(P[f"{e}.token_type_embeddings.weight"].detach())
    ln = torch.nn.LayerNorm(H, eps=cfg["layer_norm_eps"]).double()
    with torch.no_grad():
        ln.weight.copy_(P[f"{e}.LayerNorm.weight"])
        ln.bias.copy_(P[f"{e}.LayerNorm.bias"])
    h = ln(word(input_ids) + typ(token_type_ids) + pos(position_ids))
    pad_mask = attention_mask == 0
    for i in range(cfg["num_hidden_layers"]):
        p = f"{prefix}.encoder.layer.{i}"
        layer = torch.nn.TransformerEncoderLayer(
            H,
            cfg["num_attention_heads"],
            dim_feedforward=cfg["intermediate_size"],
            dropout=0.0,
            activation="gelu",
            layer_norm_eps=cfg["layer_norm_eps"],
            batch_first=True,
            norm_first=False,
        ).double()
        # train() (with dropout 0) keeps torch off its inference fast path, which would return
        # zeros at padded positions instead of computing them.
        layer.train()
        s = f"{p}.attention.self"
        with torch.no_grad():
            layer.self_attn.in_proj_weight.copy_(
                torch.cat([P[f"{s}.{m}.weight"] for m in ("query", "key", "value")])
            )
            layer.self_attn.in_proj_bias.copy_(
                torch.cat([P[f"{s}.{m}.bias"] for m in ("query", "key", "value")])
            )
            layer.self_attn.out_proj.weight.copy_(P[f"{p}.attention.output.dense.weight"])
            layer.self_attn.out_proj.bias.copy_(P[f"{p}.attention.output.dense.bias"])
            layer.norm1.weight.copy_(P[f"{p}.attention.output.LayerNorm.weight"])
            layer.norm1.bias.copy_(P[f"{p}.attention.output.LayerNorm.bias"])
            layer.linear1.weight.copy_(P[f"{p}.intermediate.dense.weight"])
            layer.linear1.bias.copy_(P[f"{p}.intermediate.dense.bias"])
            layer.linear2.weight.copy_(P[f"{p}.output.dense.weight"])
            layer.linear2.bias.copy_(P[f"{p}.output.dense.bias"])
            layer.norm2.weight.copy_(P[f"{p}.output.LayerNorm.weight"])
            layer.norm2.bias.copy_(P[f"{p}.output.LayerNorm.bias"])
        h = layer(h, src_key_padding_mask=pad_mask)
    return h.detach()


def relu_pattern(P, cfg, prefix, inputs, fx, labels):
    with torch.no_grad():
        return full_forward(P, cfg, prefix, inputs, fx, labels)[4] > 0


def gradient_check(P, grads, cfg, prefix, inputs, fx, labels, gen):
    """Central finite differences of the float64 loss against autograd.

    Per tensor: the element with the largest |grad| plus three random ones. An element whose ±h
    perturbation flips a head ReLU is skipped (the loss has a kink there), and nothing else is.
    Asserts |fd − autograd| ≤ 1e-6·|autograd| + 1e-9 (the roundoff of a float64 central
    difference with h = 1e-6 is about 1e-16·|loss|/h ≈ 1e-10). Returns (checks, worst relative
    error among elements with |grad| ≥ 1e-4, worst absolute error, skipped).
    """
    h_step = 1e-6
    base_relu = relu_pattern(P, cfg, prefix, inputs, fx, labels)

    def loss_at():
        with torch.no_grad():
            _, _, _, loss, pre = full_forward(P, cfg, prefix, inputs, fx, labels)
        return loss.item(), pre > 0

    checks, worst_rel, worst_abs, skipped = 0, 0.0, 0.0, 0
    for name, w in P.items():
        g = grads[name].reshape(-1)
        flat = w.data.view(-1)
        randoms = torch.randint(0, flat.numel(), (3,), generator=gen).tolist()
        picks = [int(g.abs().argmax())] + randoms
        for idx in picks:
            saved = flat[idx].item()
            flat[idx] = saved + h_step
            lp, rp = loss_at()
            flat[idx] = saved - h_step
            lm, rm = loss_at()
            flat[idx] = saved
            if not (torch.equal(rp, base_relu) and torch.equal(rm, base_relu)):
                skipped += 1
                continue
            fd = (lp - lm) / (2 * h_step)
            ag = g[idx].item()
            err = abs(fd - ag)
            assert err <= 1e-6 * abs(ag) + 1e-9, (
                f"{fx['name']}: gradient check failed for {name}[{idx}]: autograd {ag!r}, "
                f"finite difference {fd!r}"
            )
            checks += 1
            worst_abs = max(worst_abs, err)
            if abs(ag) >= 1e-4:
                worst_rel = max(worst_rel, err / abs(ag))
    return checks, worst_rel, worst_abs, skipped


def directional_check(P, grads, cfg, prefix, inputs, fx, labels, gen):
    """d/dt loss(θ + t·v) at t = 0 by central differences vs Σ grad·v, with v random over ALL
    parameters at once. Returns the relative error."""
    v = {n: torch.randn(w.shape, generator=gen, dtype=torch.float64) for n, w in P.items()}
    predicted = sum((grads[n] * v[n]).sum().item() for n in P)
    t = 1e-6
    base = {n: w.data.clone() for n, w in P.items()}

    def at(sign):
        for n, w in P.items():
            w.data.copy_(base[n] + sign * t * v[n])
        with torch.no_grad():
            _, _, _, loss, pre = full_forward(P, cfg, prefix, inputs, fx, labels)
        return loss.item(), pre > 0

    base_relu = relu_pattern(P, cfg, prefix, inputs, fx, labels)
    lp, rp = at(1.0)
    lm, rm = at(-1.0)
    for n, w in P.items():
        w.data.copy_(base[n])
    fd = (lp - lm) / (2 * t)
    kink = not (torch.equal(rp, base_relu) and torch.equal(rm, base_relu))
    rel = abs(fd - predicted) / max(abs(predicted), 1e-12)
    if not kink:
        assert rel < 1e-6, f"{fx['name']}: directional check failed: {fd!r} vs {predicted!r}"
    return rel, kink, predicted


# -------------------------------------------------------------------------------------------------
# safetensors writer (Hugging Face's layout: __metadata__ first, tensors by dtype alignment
# descending then name, compact JSON padded with spaces to a multiple of 8, data contiguous)


def write_safetensors(path, tensors, metadata=None):
    names = sorted(tensors, key=lambda n: (-ST_RANK[ST_DTYPE[tensors[n].dtype]], n))
    parts = []
    if metadata is not None:
        meta = json.dumps(dict(sorted(metadata.items())), separators=(",", ":"))
        parts.append('"__metadata__":' + meta)
    offset = 0
    blobs = []
    for n in names:
        t = tensors[n].detach().contiguous().cpu()
        assert t.dtype in ST_DTYPE, (n, t.dtype)
        if t.dtype.is_floating_point:
            assert torch.isfinite(t).all(), f"{path}: {n} is not finite"
        raw = t.numpy().astype(t.numpy().dtype.newbyteorder("<"), copy=False).tobytes()
        assert len(raw) == t.numel() * t.element_size()
        entry = {
            "dtype": ST_DTYPE[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        parts.append(json.dumps(n) + ":" + json.dumps(entry, separators=(",", ":")))
        offset += len(raw)
        blobs.append(raw)
    header = ("{" + ",".join(parts) + "}").encode("utf-8")
    header += b" " * (-len(header) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        for raw in blobs:
            f.write(raw)
    os.replace(tmp, path)


def read_safetensors(path):
    """Minimal reader, used to re-check what was written."""
    import numpy as np

    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__", None)
    np_dtype = {"F64": "<f8", "F32": "<f4", "I64": "<i8"}
    out = {}
    end = 0
    for name, e in header.items():
        s, t = e["data_offsets"]
        arr = np.frombuffer(data[8 + n + s : 8 + n + t], dtype=np_dtype[e["dtype"]])
        arr = arr.reshape(e["shape"])
        out[name] = torch.from_numpy(arr.copy())
        end = max(end, t)
    assert 8 + n + end == len(data), f"{path}: trailing bytes"
    return out, meta


# -------------------------------------------------------------------------------------------------


def write_checked(path, tensors, metadata):
    """write_safetensors, then the file read back: the same metadata and every tensor bit for bit."""
    write_safetensors(path, tensors, metadata)
    back, back_meta = read_safetensors(path)
    assert back_meta == metadata and set(back) == set(tensors)
    for name, value in tensors.items():
        assert back[name].dtype == value.dtype and torch.equal(back[name], value), name


def make_fixture(fx, root):
    cfg = fx["config"]
    prefix = cfg["model_type"]
    classes = fx["classes"]
    H = cfg["hidden_size"]
    head_in = 5 * H if fx["task"] == "wic" else H
    gen = torch.Generator().manual_seed(fx["seed"])

    inputs = build_inputs(cfg, fx["segments"], gen)
    input_ids, attention_mask, token_type_ids, position_ids = inputs
    if classes == 1:
        labels = torch.tensor(fx["labels"], dtype=torch.float64)
    else:
        labels = torch.tensor(fx["labels"], dtype=torch.int64)
    weights32 = init_weights(cfg, prefix, head_in, classes, gen)

    # Sanity of the inputs against the config.
    assert int(input_ids.max()) < cfg["vocab_size"]
    assert int(position_ids.max()) < cfg["max_position_embeddings"]
    assert int(token_type_ids.max()) < cfg["type_vocab_size"]
    if prefix == "roberta":
        expect = []
        for row in input_ids.tolist():
            pos, k = [], cfg["pad_token_id"]
            for tok in row:
                if tok == cfg["pad_token_id"]:
                    pos.append(cfg["pad_token_id"])
                else:
                    k += 1
                    pos.append(k)
            expect.append(pos)
        assert position_ids.tolist() == expect, "RoBERTa position ids"

    # float64 forward + backward on the float32 weights, cast exactly.
    P = {n: w.double().requires_grad_(True) for n, w in weights32.items()}
    h, x, logits, loss, _ = full_forward(P, cfg, prefix, inputs, fx, labels)
    loss.backward()
    grads = {n: w.grad.detach().clone() for n, w in P.items()}

    # Independent re-computation of the encoder with torch's own transformer layer.
    h_torch = check_against_torch_layers(P, cfg, prefix, inputs)
    enc_diff = (h.detach() - h_torch).abs().max().item()
    assert enc_diff < 1e-12, f"{fx['name']}: encoder vs nn.TransformerEncoderLayer: {enc_diff}"

    # The loss by hand (numerically naive but fine at these magnitudes).
    z = logits.detach()
    if classes == 1:
        p = torch.sigmoid(z.squeeze(-1))
        manual = -(labels * torch.log(p) + (1 - labels) * torch.log(1 - p)).mean()
    else:
        manual = -(torch.log_softmax(z, -1).gather(1, labels[:, None]).squeeze(1)).mean()
    assert abs(manual.item() - loss.item()) < 1e-12, "loss by hand"

    # Padding rows of HF's padding_idx embeddings get no gradient (true in exact math too here).
    pad = cfg["pad_token_id"]
    assert grads[f"{prefix}.embeddings.word_embeddings.weight"][pad].abs().max() == 0
    if prefix == "roberta":
        assert grads[f"{prefix}.embeddings.position_embeddings.weight"][pad].abs().max() == 0

    checks, worst_rel, worst_abs, skipped = gradient_check(
        P, grads, cfg, prefix, inputs, fx, labels, gen
    )
    dir_rel, dir_kink, dir_pred = directional_check(P, grads, cfg, prefix, inputs, fx, labels, gen)

    # What a float32 implementation can hope for: the same computation in torch float32.
    P32 = {n: w.clone().requires_grad_(True) for n, w in weights32.items()}
    h32, x32, logits32, loss32, _ = full_forward(
        P32, cfg, prefix, inputs, fx, labels.float() if classes == 1 else labels
    )
    loss32.backward()

    def rel_err(a, b):
        b = b.detach()
        return ((a.detach().double() - b).abs() / (b.abs() + b.abs().mean())).max().item()

    f32_report = {
        "last_hidden_state": rel_err(h32, h),
        "logits": rel_err(logits32, logits),
        "loss": rel_err(loss32, loss),
        # Key biases have exactly zero gradient in exact math (softmax is shift invariant and
        # q·b_k shifts a whole score row), so a relative error means nothing there.
        "grads (except key biases)": max(
            rel_err(P32[n].grad, grads[n]) for n in P if not n.endswith("key.bias")
        ),
        "max |key-bias grad| in float32": max(
            P32[n].grad.abs().max().item() for n in P if n.endswith("key.bias")
        ),
    }

    reference = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": token_type_ids,
        "position_ids": position_ids,
        "labels": labels,
        "last_hidden_state": h.detach(),
        "head_input": x.detach(),
        "logits": logits.detach(),
        "loss": loss.detach().reshape(1),
    }
    if fx["task"] == "wic":
        reference["span1"] = torch.tensor(fx["span1"], dtype=torch.int64)
        reference["span2"] = torch.tensor(fx["span2"], dtype=torch.int64)
        for s, e in fx["span1"] + fx["span2"]:
            assert 0 < s < e <= SEQ_LEN
        for b, ((s1, e1), (s2, e2)) in enumerate(zip(fx["span1"], fx["span2"])):
            real = int(attention_mask[b].sum())
            assert e1 <= real and e2 <= real, "spans inside the real tokens"
    for n in P:
        reference[f"grad.{n}"] = grads[n]

    for n, t in {**weights32, **reference}.items():
        if t.dtype.is_floating_point:
            assert torch.isfinite(t).all(), f"{fx['name']}: {n} not finite"

    out = os.path.join(root, fx["name"])
    os.makedirs(out, exist_ok=True)
    config = dict(sorted(cfg.items()))
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    meta_common = {
        "format": "pt",
        "fixture": fx["name"],
        "head_classes": str(classes),
        "task": fx["task"],
    }
    write_safetensors(os.path.join(out, "model.safetensors"), weights32, meta_common)
    write_safetensors(
        os.path.join(out, "reference.safetensors"),
        reference,
        {
            **meta_common,
            "dropout": "0 (config.json keeps 0.1 like real configs; the reference uses none)",
            "precision": "float64 forward and backward of the float32 weights",
            "attention_mask_constant": "(1 - mask) * torch.finfo(float64).min",
            "head_input": "[h0; w1; w2; |w1-w2|; w1*w2], wi = mean over span i [start, end)"
            if fx["task"] == "wic"
            else "h0 (final hidden state of the first token)",
            "loss": "BCE-with-logits mean, float labels" if classes == 1 else "cross-entropy mean",
            "torch_version": torch.__version__,
            "seed": str(fx["seed"]),
        },
    )

    # Read back and compare bit for bit.
    back_w, meta_w = read_safetensors(os.path.join(out, "model.safetensors"))
    back_r, _ = read_safetensors(os.path.join(out, "reference.safetensors"))
    assert meta_w == meta_common
    assert set(back_w) == set(weights32) and set(back_r) == set(reference)
    for n, t in weights32.items():
        assert torch.equal(back_w[n], t), n
    for n, t in reference.items():
        assert back_r[n].dtype == t.dtype and torch.equal(back_r[n], t), n
    for n in back_w:
        assert back_r[f"grad.{n}"].shape == back_w[n].shape, n

    # Summary.
    print(f"== {fx['name']} ({prefix}, task {fx['task']}, C = {classes}, F = {head_in})")
    print(f"   input_ids      {input_ids.tolist()}")
    print(f"   attention_mask {attention_mask.tolist()}")
    print(f"   token_type_ids {token_type_ids.tolist()}")
    print(f"   position_ids   {position_ids.tolist()}")
    print(f"   labels {labels.tolist()}  loss {loss.item():.17g}")
    print(f"   logits {[[round(v, 6) for v in r] for r in logits.detach().tolist()]}")
    print(f"   encoder vs nn.TransformerEncoderLayer: max |diff| {enc_diff:.3g}")
    print(
        f"   gradient check: {checks} elements by central differences (h = 1e-6): worst relative "
        f"error {worst_rel:.3g} (|grad| >= 1e-4), worst absolute error {worst_abs:.3g}, "
        f"{skipped} skipped at ReLU kinks"
    )
    print(
        f"   directional derivative over all parameters: relative error {dir_rel:.3g}"
        + (" (kink crossed: not asserted)" if dir_kink else "")
    )
    print(
        "   torch float32 vs this float64 reference (|a-e| / (|e| + mean|e|)): "
        + ", ".join(f"{k} {v:.3g}" for k, v in f32_report.items())
    )
    print("   max |grad| per tensor:")
    for n in P:
        print(f"     {n:60s} {list(grads[n].shape)!s:12s} {grads[n].abs().max().item():.4g}")
    for fname in ("config.json", "model.safetensors", "reference.safetensors"):
        print(f"   {fname}: {os.path.getsize(os.path.join(out, fname))} bytes")
    if "adamw" in fx:
        make_adamw_reference(fx, weights32, inputs, labels, loss.item(), grads, out)
        make_ehft_reference(fx, weights32, inputs, labels, out)
        make_ehft_peft_reference(fx, weights32, inputs, labels, out)
    return checks


# -------------------------------------------------------------------------------------------------
# AdamW reference: three optimizer steps of the whole model (tiny-bert only)

ADAMW_LR = 1e-3  # constant; large enough that every change is visible in float32
ADAMW_BETAS = (0.9, 0.98)
ADAMW_EPS = 1e-6
ADAMW_WEIGHT_DECAY = 0.1
ADAMW_STEPS = 3
# The training references' settings as their metadata records them (the AdamW reference asserts
# them against the constants above).
TRAINING_META = {
    "lr": "0.001",
    "betas": "[0.9, 0.98]",
    "eps": "1e-6",
    "weight_decay": "0.1",
    "schedule": "constant",
    "clipping": "none",
    "dropout": "0",
    "precision": "float64 parameters, gradients and AdamW state",
}
ADAMW_BATCH = 3
ADAMW_DECAY_RULE = (
    'weight_decay 0 for names ending in ".bias" or containing "LayerNorm."; '
    "weight_decay 0.1 for every other tensor (embedding tables and head weights included)"
)


def adamw_no_decay(name):
    """The engine's rule: no weight decay on biases and LayerNorm weights."""
    return name.endswith(".bias") or "LayerNorm." in name


def adamw_over(P, names):
    decay = [P[n] for n in names if not adamw_no_decay(n)]
    no_decay = [P[n] for n in names if adamw_no_decay(n)]
    return torch.optim.AdamW(
        [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=ADAMW_LR,
        betas=ADAMW_BETAS,
        eps=ADAMW_EPS,
        weight_decay=ADAMW_WEIGHT_DECAY,
    )


def adamw_run(weights, batches, cfg, prefix, fx, dtype):
    """ADAMW_STEPS steps of torch.optim.AdamW with two groups (decay / no decay), dropout 0,
    constant lr, no clipping. Returns (final parameters, losses before each step, step-1 grads)."""
    P = {n: w.to(dtype).clone().requires_grad_(True) for n, w in weights.items()}
    opt = adamw_over(P, list(P))
    assert [g["weight_decay"] for g in opt.param_groups] == [ADAMW_WEIGHT_DECAY, 0.0]
    losses, grads = [], []
    for inputs, labels in batches:
        opt.zero_grad(set_to_none=True)
        loss = full_forward(P, cfg, prefix, inputs, fx, labels.to(dtype))[3]
        loss.backward()
        losses.append(loss.item())
        grads.append({n: w.grad.detach().clone() for n, w in P.items()})
        opt.step()
    return {n: w.detach() for n, w in P.items()}, losses, grads


def adamw_by_hand(weights, grads):
    """AdamW from its formula (torch's order of operations), independent of torch.optim."""
    b1, b2 = ADAMW_BETAS
    out = {}
    for n, w in weights.items():
        wd = 0.0 if adamw_no_decay(n) else ADAMW_WEIGHT_DECAY
        p = w.double().clone()
        m = torch.zeros_like(p)
        v = torch.zeros_like(p)
        for t, g in enumerate(grads, start=1):
            g = g[n]
            p = p * (1 - ADAMW_LR * wd)
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            m_hat_step = ADAMW_LR / (1 - b1**t)
            denom = v.sqrt() / math.sqrt(1 - b2**t) + ADAMW_EPS
            p = p - m_hat_step * m / denom
        out[n] = p
    return out


def reference_batches(fx, inputs1, labels1):
    """The training references' examples: reference.safetensors' batch, then the spec's seeded
    ones; returns (inputs, labels, [(inputs, labels)] in batches of ADAMW_BATCH)."""
    spec = fx["adamw"]
    gen = torch.Generator().manual_seed(spec["seed"])
    more = build_inputs(fx["config"], spec["segments"], gen)
    inputs = tuple(torch.cat([a, b]) for a, b in zip(inputs1, more))
    labels = torch.cat([labels1, torch.tensor(spec["labels"], dtype=torch.float64)])
    batches = [
        (tuple(t[k : k + ADAMW_BATCH] for t in inputs), labels[k : k + ADAMW_BATCH])
        for k in range(0, ADAMW_STEPS * ADAMW_BATCH, ADAMW_BATCH)
    ]
    return inputs, labels, batches


def make_adamw_reference(fx, weights32, inputs1, labels1, loss1, grads1, out):
    spec = fx["adamw"]
    cfg = fx["config"]
    prefix = cfg["model_type"]
    inputs, labels, batches = reference_batches(fx, inputs1, labels1)
    n = ADAMW_STEPS * ADAMW_BATCH
    assert inputs[0].shape == (n, SEQ_LEN) and labels.shape == (n,)
    assert set(labels.tolist()) == {0.0, 1.0}
    assert int(inputs[0].max()) < cfg["vocab_size"]
    assert int(inputs[2].max()) < cfg["type_vocab_size"]
    for _, lab in batches:
        assert lab.min() == 0 and lab.max() == 1, "both classes in every batch"

    final, losses, grads = adamw_run(weights32, batches, cfg, prefix, fx, torch.float64)
    delta = {name: final[name] - weights32[name].double() for name in weights32}

    # Step 1 is reference.safetensors' batch: same loss and gradients, bit for bit.
    assert losses[0] == loss1, (losses[0], loss1)
    for name in weights32:
        assert torch.equal(grads[0][name], grads1[name]), name

    # The whole run again from AdamW's formula.
    by_hand = adamw_by_hand(weights32, grads)
    hand_err = max((by_hand[k] - final[k]).abs().max().item() for k in final)
    assert hand_err <= 1e-15, f"AdamW by hand vs torch: {hand_err}"

    # Step 1 in closed form at a few elements: m̂ = g and sqrt(v̂) = |g|, so
    # Δ = −lr·wd·p − lr·g/(|g| + eps). Checked with a one-step run of torch.optim.AdamW.
    one, _, _ = adamw_run(weights32, batches[:1], cfg, prefix, fx, torch.float64)
    picks = [
        f"{prefix}.embeddings.word_embeddings.weight",  # decays
        f"{prefix}.encoder.layer.1.attention.output.LayerNorm.weight",  # no decay
        f"{prefix}.encoder.layer.0.intermediate.dense.bias",  # no decay
        "head.out_proj.weight",  # decays
    ]
    for name in picks:
        g = grads[0][name].reshape(-1)
        p0 = weights32[name].double().reshape(-1)
        wd = 0.0 if adamw_no_decay(name) else ADAMW_WEIGHT_DECAY
        assert (wd == 0.0) == (".bias" in name or "LayerNorm." in name)
        for idx in (int(g.abs().argmax()), int(g.abs().argmin())):
            gi, pi = g[idx].item(), p0[idx].item()
            expect = -ADAMW_LR * ADAMW_WEIGHT_DECAY * pi * (wd != 0) - ADAMW_LR * gi / (
                abs(gi) + ADAMW_EPS
            )
            got = one[name].reshape(-1)[idx].item() - pi
            assert abs(got - expect) <= 1e-15, (name, idx, got, expect)
    # The padding row of word_embeddings never gets a gradient, so only weight decay moves it.
    pad = cfg["pad_token_id"]
    word = f"{prefix}.embeddings.word_embeddings.weight"
    w0 = weights32[word][pad].double()
    decayed = w0.clone()
    for _ in range(ADAMW_STEPS):
        decayed = decayed * (1 - ADAMW_LR * ADAMW_WEIGHT_DECAY)
    assert torch.equal(delta[word][pad], decayed - w0), "padding row: weight decay only"
    # Every tensor moved, and no update is larger than lr per step plus the decay.
    for name, d in delta.items():
        assert d.abs().max() > 0, name
        bound = ADAMW_STEPS * ADAMW_LR * (1 + ADAMW_EPS + weights32[name].abs().max().item())
        assert d.abs().max().item() <= bound, name

    # What float32 reaches: the same run with torch float32 parameters and AdamW state.
    final32, losses32, grads32 = adamw_run(weights32, batches, cfg, prefix, fx, torch.float32)
    tol = ADAMW_LR * ADAMW_STEPS
    d32 = {
        k: (final32[k].double() - weights32[k].double() - delta[k]).abs().max().item() / tol
        for k in delta
    }
    worst32 = max(d32, key=d32.get)
    loss32 = max(abs(a - b) / abs(b) for a, b in zip(losses32, losses))
    key_grad32 = max(
        g[k].abs().max().item() for g in grads32 for k in g if k.endswith("key.bias")
    )
    key_grad64 = max(g[k].abs().max().item() for g in grads for k in g if k.endswith("key.bias"))
    # The training test's tolerances (changes within 1e-2·lr·steps, losses within 1e-4 relative)
    # must be reachable by a float32 implementation.
    assert d32[worst32] < 1e-2 and loss32 < 1e-4, (worst32, d32[worst32], loss32)

    reference = {
        "input_ids": inputs[0],
        "attention_mask": inputs[1],
        "token_type_ids": inputs[2],
        "position_ids": inputs[3],
        "labels": labels,
        "losses": torch.tensor(losses, dtype=torch.float64),
    }
    for name in weights32:
        reference[f"delta.{name}"] = delta[name]
    meta = {
        "format": "pt",
        "fixture": fx["name"],
        "task": fx["task"],
        "head_classes": str(fx["classes"]),
        "initial_weights": "model.safetensors (float32, cast to float64)",
        "optimizer": "torch.optim.AdamW, two parameter groups (decay, no decay), amsgrad off",
        **TRAINING_META,
        "decay_rule": ADAMW_DECAY_RULE,
        "steps": str(ADAMW_STEPS),
        "batch_size": str(ADAMW_BATCH),
        "batches": "file order: step k (1-based) uses examples 3(k-1) .. 3k-1; no shuffling",
        "loss": "BCE-with-logits mean over the batch, float labels",
        "losses": "loss of step k's batch before step k's update",
        "delta": "delta.<name> = parameter after the last step - initial parameter",
        "torch_version": torch.__version__,
        "seed": str(spec["seed"]),
    }
    assert float(meta["lr"]) == ADAMW_LR and float(meta["eps"]) == ADAMW_EPS
    assert json.loads(meta["betas"]) == list(ADAMW_BETAS)
    assert float(meta["weight_decay"]) == ADAMW_WEIGHT_DECAY
    path = os.path.join(out, "adamw_reference.safetensors")
    write_checked(path, reference, meta)

    print(f"== {fx['name']}: AdamW reference ({ADAMW_STEPS} steps of {ADAMW_BATCH}, lr {ADAMW_LR})")
    print(f"   input_ids      {inputs[0].tolist()}")
    print(f"   attention_mask real tokens {inputs[1].sum(1).tolist()}")
    print(f"   labels {labels.tolist()}")
    print(f"   decay rule: {ADAMW_DECAY_RULE}")
    print(
        f"   {sum(not adamw_no_decay(k) for k in weights32)} tensors decay, "
        f"{sum(adamw_no_decay(k) for k in weights32)} do not"
    )
    print(f"   losses {[f'{v:.17g}' for v in losses]}")
    print(f"   step 1 = reference.safetensors' batch (same loss and gradients, bit for bit)")
    print(f"   AdamW by hand vs torch.optim.AdamW: max |diff| {hand_err:.3g}")
    print(
        f"   torch float32 run vs this reference: worst |Δ32 − Δ| / (lr·steps) {d32[worst32]:.3g} "
        f"({worst32}), losses relative {loss32:.3g}; max |key-bias grad| float32 {key_grad32:.3g}, "
        f"float64 {key_grad64:.3g}"
    )
    print("   max |delta| / (lr·steps) per tensor:")
    for k, d in delta.items():
        print(f"     {k:60s} {'no decay' if adamw_no_decay(k) else 'decay':8s} "
              f"{d.abs().max().item() / tol:.4g}")
    print(f"   adamw_reference.safetensors: {os.path.getsize(path)} bytes")


def blas_libraries():
    """Paths of the BLAS / LAPACK libraries this process has loaded (from /proc/self/maps)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "/" in line}
    except OSError:
        return set()
    return {p for p in paths if "blas" in os.path.basename(p) or "lapack" in os.path.basename(p)}


def pin_reference_blas():
    """Debian's torch calls whatever libblas.so.3 the alternatives system points at, and OpenBLAS
    sums in another order than the reference BLAS (libblas3): the float64 results then differ in
    the last bits (~1e-15 relative) and the files are no longer byte-identical. The committed
    fixtures were made with the reference BLAS, so if OpenBLAS (or any other) is loaded and
    libblas3 is installed, run again with libblas3's directories first on LD_LIBRARY_PATH."""
    import glob

    blas_dirs = glob.glob("/usr/lib/*/blas")
    ref = [d for d in blas_dirs if os.path.exists(os.path.join(d, "libblas.so.3"))]
    loaded = blas_libraries()
    reference = bool(loaded) and all(
        any(p.startswith(d + "/") for d in ref + [os.path.join(os.path.dirname(d), "lapack")
                                                 for d in ref]) for p in loaded
    )
    if reference or not loaded:
        return loaded, reference
    if ref and os.environ.get("MAKE_FIXTURES_BLAS_PINNED") != "1":
        dirs = ref + [os.path.join(os.path.dirname(d), "lapack") for d in ref]
        dirs = [d for d in dirs if os.path.isdir(d)]
        env = dict(os.environ, MAKE_FIXTURES_BLAS_PINNED="1")
        env["LD_LIBRARY_PATH"] = ":".join(dirs + [p for p in [env.get("LD_LIBRARY_PATH")] if p])
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable] + sys.argv, env)
    return loaded, reference


# EH-FT reference: the two stages of EH-FT with BitFit (tiny-bert only), on the AdamW reference's
# batches: Stage 1 trains BitFit's biases and the head for EHFT_STAGE1_STEPS steps; then the
# backbone is restored to its pretrained values, the head kept, and a fresh AdamW trains
# everything for the remaining steps.

EHFT_STAGE1_STEPS = 1
# The biases BitFit trains (peft/bitfit.ts): every layer's linear layers and LayerNorms, and the
# embedding LayerNorm's; not LayerNorm gains, not the tables.
BITFIT_LAYER_MODULES = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "attention.output.LayerNorm",
    "intermediate.dense",
    "output.dense",
    "output.LayerNorm",
)


def is_bitfit(name, prefix):
    if name == f"{prefix}.embeddings.LayerNorm.bias":
        return True
    m = re.fullmatch(re.escape(prefix) + r"\.encoder\.layer\.(0|[1-9][0-9]*)\.(.+)\.bias", name)
    return m is not None and m.group(2) in BITFIT_LAYER_MODULES


def ehft_run(weights, batches, cfg, prefix, fx, dtype, reserve=False, adapters=None):
    """EH-FT: Stage 1 on the PEFT method's tensors and the head, the hand-off, Stage 2 on all.
    The method is BitFit without `adapters`; with them (LoRA's factors or prefix rows, by name),
    that method, for PEFT_STAGE1_STEPS. The hand-off restores every backbone tensor but BitFit's
    biases with `reserve` (EH-FT-reserve), and drops the adapters without it. Frozen tensors do
    not require gradients (they would gather them across the stages). Returns (final tensors,
    losses, Stage 1's tensor names, the adapters after Stage 1)."""
    adapters = adapters or {}
    lora_scale = PEFT_LORA_ALPHA / PEFT_LORA_R
    P = {n: w.to(dtype).clone() for n, w in {**weights, **adapters}.items()}
    if adapters:
        stage1 = [n for n in P if n.startswith("head.") or n in adapters]
        stage1_steps = PEFT_STAGE1_STEPS
    else:
        stage1 = [n for n in P if n.startswith("head.") or is_bitfit(n, prefix)]
        stage1_steps = EHFT_STAGE1_STEPS
    for n, w in P.items():
        w.requires_grad_(n in stage1)
    losses = []

    def steps(opt, part):
        for inputs, labels in part:
            opt.zero_grad(set_to_none=True)
            loss = full_forward(P, cfg, prefix, inputs, fx, labels.to(dtype), lora_scale)[3]
            loss.backward()
            losses.append(loss.item())
            opt.step()

    steps(adamw_over(P, stage1), batches[:stage1_steps])
    after1 = {n: P[n].detach().clone() for n in adapters}
    for n in weights:
        if not (n.startswith("head.") or (reserve and n in stage1)):
            P[n] = weights[n].to(dtype).clone()
    if not reserve:
        for n in adapters:
            del P[n]
    for w in P.values():
        w.requires_grad_(True)
        w.grad = None
    steps(adamw_over(P, list(P)), batches[stage1_steps:])
    return {n: w.detach() for n, w in P.items()}, losses, stage1, after1


def make_ehft_reference(fx, weights32, inputs1, labels1, out):
    cfg = fx["config"]
    prefix = cfg["model_type"]
    _, _, batches = reference_batches(fx, inputs1, labels1)
    final, losses, stage1, _ = ehft_run(weights32, batches, cfg, prefix, fx, torch.float64)
    delta = {name: final[name] - weights32[name].double() for name in weights32}
    trained = [n for n in stage1 if not n.startswith("head.")]
    assert len(trained) == 1 + len(BITFIT_LAYER_MODULES) * cfg["num_hidden_layers"], trained
    # The same run in float32 reaches the test's tolerances.
    final32, losses32, _, _ = ehft_run(weights32, batches, cfg, prefix, fx, torch.float32)
    tol = ADAMW_LR * ADAMW_STEPS
    worst32 = max(
        (final32[k].double() - weights32[k].double() - delta[k]).abs().max().item() / tol
        for k in delta
    )
    loss32 = max(abs(a - b) / abs(b) for a, b in zip(losses32, losses))
    assert worst32 < 1e-2 and loss32 < 1e-4, (worst32, loss32)
    reference = {"losses": torch.tensor(losses, dtype=torch.float64)}
    for name in weights32:
        reference[f"delta.{name}"] = delta[name]
    # EH-FT-reserve: the same, BitFit's biases kept through the hand-off.
    kept, kept_losses, _, _ = ehft_run(weights32, batches, cfg, prefix, fx, torch.float64, True)
    assert kept_losses[0] == losses[0] and kept_losses[1] != losses[1]
    reference["reserve.losses"] = torch.tensor(kept_losses, dtype=torch.float64)
    for name in weights32:
        reference[f"reserve.delta.{name}"] = kept[name] - weights32[name].double()
    meta = {
        "format": "pt",
        "fixture": fx["name"],
        "strategy": "ehft",
        "peft": "bitfit",
        "batches": "adamw_reference.safetensors' three, in order",
        "stage1_steps": str(EHFT_STAGE1_STEPS),
        "stage1": "BitFit's biases and the head (" + str(len(stage1)) + " tensors)",
        "handoff": "every backbone tensor restored to model.safetensors; the head kept",
        "reserve": "reserve.losses and reserve.delta.<name>: EH-FT-reserve, BitFit's biases kept too",
        "stage2": "every tensor, a fresh torch.optim.AdamW",
        **TRAINING_META,
        "decay_rule": ADAMW_DECAY_RULE,
        "delta": "delta.<name> = parameter after the last step - initial parameter",
        "torch_version": torch.__version__,
    }
    write_checked(os.path.join(out, "ehft_reference.safetensors"), reference, meta)
    print(f"== {fx['name']}: EH-FT (BitFit) reference, Stage 1 {EHFT_STAGE1_STEPS} step(s)")
    print(f"   losses {[f'{v:.17g}' for v in losses]}")
    print(f"   torch float32 run vs this reference: worst |Δ32 − Δ| / (lr·steps) {worst32:.3g}, losses relative {loss32:.3g}")


# EH-FT with LoRA and with prefix-tuning (tiny-bert only), on the same batches: Stage 1 trains the
# adapters and the head for PEFT_STAGE1_STEPS steps (two, so that Adam's second step, with its
# moments, reaches the adapters too), the hand-off restores the backbone and keeps the head, and
# Stage 2 trains everything (the adapters too for EH-FT-reserve) for the remaining step. The
# adapters' initial values are the fixture's own, written beside the results for the test to load:
# LoRA's A as peft/lora.ts draws it, uniform in ±1/√in, but B not zero, so that the low-rank term
# enters the first forward; prefix rows N(0, 0.5²), large enough to change the attention visibly.

PEFT_STAGE1_STEPS = 2
PEFT_SEED = 1005
PEFT_LORA_R = 4
PEFT_LORA_ALPHA = 8  # the low-rank term's factor α/r = 2
PEFT_PREFIX_LENGTH = 3
LORA_TARGET_PATHS = (  # peft/lora.ts's LORA_MODULE_PATHS
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
)


def lora_name(layer, path, which):
    """peft/lora.ts's loraParameterName: the name of a site's A [r, in] or B [out, r]."""
    return f"lora.encoder.layer.{layer}.{path}.lora_{which}.weight"


def prefix_name(layer, which):
    """peft/prefix.ts's prefixParameterName: layer's key or value rows [heads, P, head_dim]."""
    return f"prefix.encoder.layer.{layer}.{which}"


def initial_adapters(cfg, method):
    """The adapters' float32 starting values, from their own seeded generator."""
    gen = torch.Generator().manual_seed(PEFT_SEED)
    H = cfg["hidden_size"]
    nh = cfg["num_attention_heads"]
    out = {}
    for layer in range(cfg["num_hidden_layers"]):
        if method == "lora":
            for path in LORA_TARGET_PATHS:
                a = (torch.rand(PEFT_LORA_R, H, generator=gen, dtype=torch.float64) * 2 - 1)
                out[lora_name(layer, path, "A")] = (a / math.sqrt(H)).float()
                b = torch.randn(H, PEFT_LORA_R, generator=gen, dtype=torch.float64) * 0.2
                out[lora_name(layer, path, "B")] = b.float()
        else:
            for which in ("key", "value"):
                shape = (nh, PEFT_PREFIX_LENGTH, H // nh)
                rows = torch.randn(*shape, generator=gen, dtype=torch.float64)
                out[prefix_name(layer, which)] = (rows * 0.5).float()
    return out


def check_lora_merge(weights32, adapters, cfg, prefix, fx, inputs, labels):
    """LoRA's forward equals the plain forward with each target's weight merged, W + (α/r)·B·A
    (what PEFT's merge_and_unload writes)."""
    plain = {n: w.double() for n, w in weights32.items()}
    P = {**plain, **{n: w.double() for n, w in adapters.items()}}
    scale = PEFT_LORA_ALPHA / PEFT_LORA_R
    merged = {n: w.clone() for n, w in plain.items()}
    for layer in range(cfg["num_hidden_layers"]):
        for path in LORA_TARGET_PATHS:
            a = adapters[lora_name(layer, path, "A")].double()
            b = adapters[lora_name(layer, path, "B")].double()
            merged[f"{prefix}.encoder.layer.{layer}.{path}.weight"] += scale * (b @ a)
    with torch.no_grad():
        got = full_forward(P, cfg, prefix, inputs, fx, labels, scale)[2]
        want = full_forward(merged, cfg, prefix, inputs, fx, labels)[2]
        unadapted = full_forward(plain, cfg, prefix, inputs, fx, labels)[2]
    err = (got - want).abs().max().item()
    assert err < 1e-12 and (got - unadapted).abs().max().item() > 1e-3, err
    return err


def make_ehft_peft_reference(fx, weights32, inputs1, labels1, out):
    cfg = fx["config"]
    prefix = cfg["model_type"]
    _, _, batches = reference_batches(fx, inputs1, labels1)
    reference = {}
    report = []
    for method in ("lora", "prefix"):
        adapters = initial_adapters(cfg, method)
        if method == "lora":
            merge_err = check_lora_merge(weights32, adapters, cfg, prefix, fx, inputs1, labels1)
            report.append(f"LoRA merged-weight forward vs adapter forward {merge_err:.3g}")
        for name, value in adapters.items():
            reference[f"{method}.init.{name}"] = value
        for reserve in (False, True):
            def run(dtype):
                return ehft_run(weights32, batches, cfg, prefix, fx, dtype, reserve, adapters)

            final, losses, stage1, after1 = run(torch.float64)
            heads = [n for n in weights32 if n.startswith("head.")]
            assert sorted(stage1) == sorted(heads + list(adapters))
            assert (set(final) == set(weights32) | set(adapters)) == reserve
            final32, losses32, _, _ = run(torch.float32)
            tol = ADAMW_LR * ADAMW_STEPS
            start = {n: w.double() for n, w in {**weights32, **adapters}.items()}
            worst32 = max(
                (final32[k].double() - final[k]).abs().max().item() / tol for k in final
            )
            loss32 = max(abs(a - b) / abs(b) for a, b in zip(losses32, losses))
            assert worst32 < 1e-2 and loss32 < 1e-4, (method, reserve, worst32, loss32)
            key = f"{method}.reserve" if reserve else method
            reference[f"{key}.losses"] = torch.tensor(losses, dtype=torch.float64)
            for name in final:
                reference[f"{key}.delta.{name}"] = final[name] - start[name]
            if not reserve:
                for name in adapters:
                    reference[f"{method}.stage1.delta.{name}"] = after1[name] - start[name]
                plain_losses = losses
            else:
                assert losses[:PEFT_STAGE1_STEPS] == plain_losses[:PEFT_STAGE1_STEPS]
                assert losses[-1] != plain_losses[-1]
            report.append(
                f"{key}: losses {[f'{v:.17g}' for v in losses]}; torch float32 run vs this "
                f"reference: worst |Δ32 − Δ| / (lr·steps) {worst32:.3g}, "
                f"losses relative {loss32:.3g}"
            )
    meta = {
        "format": "pt",
        "fixture": fx["name"],
        "strategy": "ehft and ehft-reserve",
        "peft": "lora and prefix: keys <peft>.*",
        "batches": "adamw_reference.safetensors' three, in order",
        "stage1_steps": str(PEFT_STAGE1_STEPS),
        "stage1": "the adapters and the head",
        "handoff": "every backbone tensor restored to model.safetensors; the head kept; the "
        "adapters dropped (<peft>.*) or kept and trained on (<peft>.reserve.*)",
        "stage2": "every tensor, a fresh torch.optim.AdamW",
        "init": "<peft>.init.<name>: the adapters' initial float32 values (LoRA B not zero)",
        "stage1_delta": "<peft>.stage1.delta.<name>: an adapter after Stage 1 - its initial value",
        "delta": "<peft>[.reserve].delta.<name> = a tensor after the last step - its initial value",
        "lora_r": str(PEFT_LORA_R),
        "lora_alpha": str(PEFT_LORA_ALPHA),
        "lora_targets": ",".join(LORA_TARGET_PATHS),
        "prefix_length": str(PEFT_PREFIX_LENGTH),
        **TRAINING_META,
        "decay_rule": ADAMW_DECAY_RULE + "; the adapters' tensors decay",
        "torch_version": torch.__version__,
    }
    write_checked(os.path.join(out, "ehft_peft_reference.safetensors"), reference, meta)
    print(f"== {fx['name']}: EH-FT (LoRA, prefix) reference, Stage 1 {PEFT_STAGE1_STEPS} step(s)")
    for line in report:
        print(f"   {line}")


def main():
    loaded, reference = pin_reference_blas()
    print("BLAS: " + (", ".join(sorted(loaded)) or "unknown"))
    if not reference:
        print(
            "   WARNING: not the reference BLAS (apt-get install libblas3 liblapack3); the float64 "
            "results may differ from the committed files in the last bits"
        )
    torch.set_num_threads(1)  # fixed reduction order for the float32 comparison numbers too
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures"
    )
    print(f"torch {torch.__version__}, writing to {root}")
    total = 0
    for fx in FIXTURES:
        total += make_fixture(fx, root)
    print(f"all checks passed ({total} finite-difference checks)")


if __name__ == "__main__":
    main()


