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


def encoder_layer(P, cfg, p, h, ext_mask):
    B, S, H = h.shape
    nh = cfg["num_attention_heads"]
    hd = H // nh
    eps = cfg["layer_norm_eps"]

    def lin(name, x):
        return F.linear(x, P[f"{p}.{name}.weight"], P[f"{p}.{name}.bias"])

    def heads(x):
        return x.view(B, S, nh, hd).permute(0, 2, 1, 3)

    q = heads(lin("attention.self.query", h))
    k = heads(lin("attention.self.key", h))
    v = heads(lin("attention.self.value", h))
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


def encoder(P, cfg, prefix, inputs):
    input_ids, attention_mask, token_type_ids, position_ids = inputs
    h = embeddings(P, cfg, prefix, input_ids, token_type_ids, position_ids)
    ext = extended_mask(attention_mask, h.dtype)
    for i in range(cfg["num_hidden_layers"]):
        h = encoder_layer(P, cfg, f"{prefix}.encoder.layer.{i}", h, ext)
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


def full_forward(P, cfg, prefix, inputs, fx, labels):
    h = encoder(P, cfg, prefix, inputs)
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
    return checks


def main():
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
