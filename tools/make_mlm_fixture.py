#!/usr/bin/env python3
"""Writes the masked-language-model reference fixture tests/fixtures/tiny-bert-mlm/.

A tiny random BERT with Hugging Face's BertForMaskedLM head, and PyTorch's float64 forward and
backward of the MLM loss for one masked batch:

  config.json           tiny-bert's shape (vocab 101, hidden 24, 2 layers, 3 heads, intermediate 37,
                        33 positions), architectures ["BertForMaskedLM"], dropout 0.1 as in real
                        configs (the reference uses none).
  model.safetensors     F32: bert.embeddings.*, bert.encoder.layer.i.*, and the MLM head
                        cls.predictions.transform.dense.{weight,bias},
                        cls.predictions.transform.LayerNorm.{weight,bias}, cls.predictions.bias.
  reference.safetensors input_ids (I64 [B, S], the inputs AFTER masking: [MASK], a random token
                        or the token itself at the chosen positions), attention_mask (I64),
                        original_ids (I64, before masking), positions (I64 [M], flat indices
                        row·S + column of the chosen tokens, ascending), targets (I64 [M], the
                        original tokens there), logits (F64 [M, V], the prediction scores at
                        those rows), loss (F64 [1]) and grad.<name> (F64) for every tensor of
                        model.safetensors.

How Hugging Face names and ties the MLM head (BertForMaskedLM = BertModel(add_pooling_layer=False)
+ BertOnlyMLMHead, saved under `cls.`):

  cls.predictions.transform.dense       Linear(H, H)        BertPredictionHeadTransform
  (transform_act_fn)                    ACT2FN[hidden_act]: "gelu" is the exact erf GELU
  cls.predictions.transform.LayerNorm   LayerNorm(H, eps=layer_norm_eps)
  cls.predictions.decoder.weight        Linear(H, V, bias=False): TIED to
                                        bert.embeddings.word_embeddings.weight (tie_word_embeddings,
                                        default true), so save_pretrained leaves it out of the file
                                        (it is listed in _tied_weights_keys) and from_pretrained
                                        re-ties it
  cls.predictions.bias                  Parameter [V]; cls.predictions.decoder.bias is tied to it
                                        (the same tensor), so only cls.predictions.bias is stored

so prediction_scores = LayerNorm(gelu(dense(h))) · Wordᵀ + bias at every position, and the loss is
CrossEntropyLoss over the flattened [B·S, V] scores with labels −100 (ignored) except at the chosen
positions: the mean over the chosen positions. The word table gets gradient from both of its uses:
the embedding lookup (never at the padding row, HF's padding_idx) and the decoder (every row,
padding included), summed; grad.bert.embeddings.word_embeddings.weight is that sum. The script
asserts the split: the padding row's gradient equals the decoder's share alone.

transformers is not installed here: the encoder and the safetensors writer/reader are those of
tools/make_fixtures.py (imported as a module), and the MLM head is written out below. Checks
before writing: the encoder against torch.nn.TransformerEncoderLayer, the head against torch.nn
modules with the decoder's weight tied to the embedding module's, the loss by hand at the chosen
rows, every tensor's autograd gradient against central finite differences at sampled elements
(the largest and three random) and along one random direction through all parameters at once,
and every value finite. After writing, the files are read back and compared bit for bit.

The reference is float64 computed from the float32 weights (cast exactly), dropout 0.

Run with Debian's torch:  /usr/bin/python3 tools/make_mlm_fixture.py [output_root]
(output_root defaults to <repository>/tests/fixtures; the output is the same on every run).
"""

import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402

NAME = "tiny-bert-mlm"
SEED = 4004
CONFIG = dict(mf.BERT_BASE, architectures=["BertForMaskedLM"])
PREFIX = "bert"
SEQ_LEN = 13  # odd, and not a multiple of any workgroup size
LENGTHS = [11, 7, 4]  # words per row (plus [CLS] and [SEP]): 13, 9 and 6 real tokens
PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
FIRST_FREE = 5  # ids below are special: never chosen, never drawn as a random replacement
MLM_PROBABILITY = 0.15
EXTRA_CHOSEN = 3  # "~15% plus a few", so that the loss averages over several rows

HEAD = {
    "dense.weight": "cls.predictions.transform.dense.weight",
    "dense.bias": "cls.predictions.transform.dense.bias",
    "ln.weight": "cls.predictions.transform.LayerNorm.weight",
    "ln.bias": "cls.predictions.transform.LayerNorm.bias",
    "bias": "cls.predictions.bias",
}
WORD = f"{PREFIX}.embeddings.word_embeddings.weight"


# -------------------------------------------------------------------------------------------------
# Inputs and weights


def build_batch(gen):
    """Original ids, masked ids, mask, chosen flat positions and their targets."""
    V = CONFIG["vocab_size"]
    S = SEQ_LEN
    original = []
    for n in LENGTHS:
        words = torch.randint(FIRST_FREE, V, (n,), generator=gen).tolist()
        row = [CLS] + words + [SEP]
        original.append(row + [PAD] * (S - len(row)))
    original = torch.tensor(original, dtype=torch.int64)
    attention_mask = (original != PAD).to(torch.int64)
    # Candidates: real, non-special tokens (columns 1 .. n of row b).
    candidates = [b * S + 1 + i for b, n in enumerate(LENGTHS) for i in range(n)]
    draw = torch.rand(len(candidates), generator=gen, dtype=torch.float64)
    chosen = {c for c, r in zip(candidates, draw.tolist()) if r < MLM_PROBABILITY}
    rest = [c for c in candidates if c not in chosen]
    for k in torch.randperm(len(rest), generator=gen)[:EXTRA_CHOSEN].tolist():
        chosen.add(rest[k])
    for b, n in enumerate(LENGTHS):  # every row teaches something (as train/mlm_data.ts does)
        if not any(b * S + 1 <= c <= b * S + n for c in chosen):
            chosen.add(b * S + 1 + int(torch.randint(0, n, (1,), generator=gen)))
    positions = sorted(chosen)
    # BERT's 80/10/10: [MASK], a random non-special token, or the token itself. With a handful of
    # positions a draw may miss a kind; the first three positions then take one of each.
    r = torch.rand(len(positions), generator=gen, dtype=torch.float64).tolist()
    kinds = ["mask" if x < 0.8 else "random" if x < 0.9 else "keep" for x in r]
    if len(set(kinds)) < 3:
        kinds[:3] = ["mask", "random", "keep"]
    masked = original.clone().view(-1)
    for p, kind in zip(positions, kinds):
        if kind == "mask":
            masked[p] = MASK
        elif kind == "random":
            masked[p] = int(torch.randint(FIRST_FREE, V, (1,), generator=gen))
    masked = masked.view(len(LENGTHS), S)
    positions = torch.tensor(positions, dtype=torch.int64)
    targets = original.view(-1)[positions].clone()
    return original, masked, attention_mask, positions, targets, kinds


def init_weights(gen):
    """tiny-bert's encoder initialisation (make_fixtures.init_weights, its EH-FT head dropped) and
    an MLM head with non-trivial LayerNorm and output-bias values."""
    H = CONFIG["hidden_size"]
    V = CONFIG["vocab_size"]
    params = mf.init_weights(CONFIG, PREFIX, H, 1, gen)
    params = {n: w for n, w in params.items() if not n.startswith("head.")}

    def normal(shape, std, mean=0.0):
        return (torch.randn(shape, generator=gen, dtype=torch.float32) * std + mean).contiguous()

    params[HEAD["dense.weight"]] = normal([H, H], 0.2)
    params[HEAD["dense.bias"]] = normal([H], 0.1)
    params[HEAD["ln.weight"]] = normal([H], 0.1, 1.0)
    params[HEAD["ln.bias"]] = normal([H], 0.1)
    params[HEAD["bias"]] = normal([V], 0.5)
    return params


# -------------------------------------------------------------------------------------------------
# Model: BertModel (make_fixtures) + BertOnlyMLMHead


def mlm_head(P, h):
    """BertLMPredictionHead on [..., H]: transform, then the decoder tied to the word table."""
    x = F.linear(h, P[HEAD["dense.weight"]], P[HEAD["dense.bias"]])
    x = F.gelu(x)  # ACT2FN["gelu"]: exact erf GELU
    H = CONFIG["hidden_size"]
    x = F.layer_norm(x, (H,), P[HEAD["ln.weight"]], P[HEAD["ln.bias"]], CONFIG["layer_norm_eps"])
    return F.linear(x, P[WORD], P[HEAD["bias"]]), x


def forward(P, inputs, positions, targets):
    """BertForMaskedLM's loss: scores at every position, labels −100 except at the chosen ones.
    Returns (loss, scores at the chosen rows [M, V], transform output at the chosen rows)."""
    h = mf.encoder(P, CONFIG, PREFIX, inputs)
    B, S, H = h.shape
    scores, transformed = mlm_head(P, h)
    labels = torch.full((B * S,), -100, dtype=torch.int64)
    labels[positions] = targets
    V = CONFIG["vocab_size"]
    loss = F.cross_entropy(scores.view(-1, V), labels, ignore_index=-100, reduction="mean")
    return loss, scores.view(-1, V)[positions], transformed.view(-1, H)[positions]


def head_with_modules(P, h_rows):
    """The same head from torch.nn modules, the decoder's weight tied to an nn.Embedding's."""
    H, V = CONFIG["hidden_size"], CONFIG["vocab_size"]
    word = torch.nn.Embedding(V, H, padding_idx=PAD).double()
    dense = torch.nn.Linear(H, H).double()
    ln = torch.nn.LayerNorm(H, eps=CONFIG["layer_norm_eps"]).double()
    decoder = torch.nn.Linear(H, V, bias=False).double()
    bias = torch.nn.Parameter(torch.zeros(V, dtype=torch.float64))
    with torch.no_grad():
        word.weight.copy_(P[WORD])
        dense.weight.copy_(P[HEAD["dense.weight"]])
        dense.bias.copy_(P[HEAD["dense.bias"]])
        ln.weight.copy_(P[HEAD["ln.weight"]])
        ln.bias.copy_(P[HEAD["ln.bias"]])
        bias.copy_(P[HEAD["bias"]])
    decoder.weight = word.weight  # what tie_weights does
    assert decoder.weight.data_ptr() == word.weight.data_ptr()
    with torch.no_grad():
        return decoder(ln(torch.nn.GELU()(dense(h_rows)))) + bias


# -------------------------------------------------------------------------------------------------
# Self-checks


def gradient_check(P, grads, loss_fn, gen):
    """Central differences (h = 1e-6) at each tensor's largest-gradient element and three random
    ones; |fd − autograd| ≤ 1e-6·|autograd| + 1e-9 (GELU is smooth: no kinks to skip)."""
    h_step = 1e-6
    checks, worst_rel, worst_abs = 0, 0.0, 0.0
    for name, w in P.items():
        g = grads[name].reshape(-1)
        flat = w.data.view(-1)
        picks = [int(g.abs().argmax())] + torch.randint(
            0, flat.numel(), (3,), generator=gen
        ).tolist()
        for idx in picks:
            saved = flat[idx].item()
            flat[idx] = saved + h_step
            lp = loss_fn()
            flat[idx] = saved - h_step
            lm = loss_fn()
            flat[idx] = saved
            fd = (lp - lm) / (2 * h_step)
            ag = g[idx].item()
            err = abs(fd - ag)
            assert err <= 1e-6 * abs(ag) + 1e-9, (
                f"{NAME}: gradient check failed for {name}[{idx}]: autograd {ag!r}, fd {fd!r}"
            )
            checks += 1
            worst_abs = max(worst_abs, err)
            if abs(ag) >= 1e-4:
                worst_rel = max(worst_rel, err / abs(ag))
    return checks, worst_rel, worst_abs


def directional_check(P, grads, loss_fn, gen):
    """d/dt loss(θ + t·v) at t = 0 by central differences vs Σ grad·v, v random over ALL
    parameters (the tied word table included) at once."""
    v = {n: torch.randn(w.shape, generator=gen, dtype=torch.float64) for n, w in P.items()}
    predicted = sum((grads[n] * v[n]).sum().item() for n in P)
    t = 1e-6
    base = {n: w.data.clone() for n, w in P.items()}

    def at(sign):
        for n, w in P.items():
            w.data.copy_(base[n] + sign * t * v[n])
        return loss_fn()

    lp, lm = at(1.0), at(-1.0)
    for n, w in P.items():
        w.data.copy_(base[n])
    fd = (lp - lm) / (2 * t)
    rel = abs(fd - predicted) / max(abs(predicted), 1e-12)
    assert rel < 1e-6, f"{NAME}: directional check failed: {fd!r} vs {predicted!r}"
    return rel


# -------------------------------------------------------------------------------------------------


def main():
    loaded, reference_blas = mf.pin_reference_blas()
    print("BLAS: " + (", ".join(sorted(loaded)) or "unknown"))
    if not reference_blas:
        print("   WARNING: not the reference BLAS; float64 results may differ in the last bits")
    torch.set_num_threads(1)
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures"
    )
    gen = torch.Generator().manual_seed(SEED)
    V, H, S = CONFIG["vocab_size"], CONFIG["hidden_size"], SEQ_LEN
    B = len(LENGTHS)

    original, input_ids, attention_mask, positions, targets, kinds = build_batch(gen)
    weights32 = init_weights(gen)
    token_type_ids = torch.zeros_like(input_ids)
    position_ids = torch.arange(S, dtype=torch.int64).unsqueeze(0).expand(B, -1).contiguous()
    inputs = (input_ids, attention_mask, token_type_ids, position_ids)

    # Sanity of the batch.
    M = positions.numel()
    assert int(input_ids.max()) < V and S <= CONFIG["max_position_embeddings"]
    assert attention_mask.sum(1).tolist() == [n + 2 for n in LENGTHS]
    assert positions.tolist() == sorted(set(positions.tolist()))
    for p in positions.tolist():
        b, c = divmod(p, S)
        assert 1 <= c <= LENGTHS[b], "chosen positions are real, non-special tokens"
        assert int(original.view(-1)[p]) >= FIRST_FREE
    assert set(kinds) == {"mask", "random", "keep"}
    assert int((input_ids.view(-1)[positions] == MASK).sum()) >= 1
    unchosen = torch.ones(B * S, dtype=torch.bool)
    unchosen[positions] = False
    assert torch.equal(input_ids.view(-1)[unchosen], original.view(-1)[unchosen])

    # float64 forward and backward from the float32 weights.
    P = {n: w.double().requires_grad_(True) for n, w in weights32.items()}
    loss, logits, transformed = forward(P, inputs, positions, targets)
    loss.backward()
    grads = {n: w.grad.detach().clone() for n, w in P.items()}

    def loss_fn():
        with torch.no_grad():
            return forward(P, inputs, positions, targets)[0].item()

    # Independent re-computations: the encoder with torch's transformer layer, the head with
    # torch.nn modules (tied decoder), the loss by hand at the chosen rows.
    h = mf.encoder(P, CONFIG, PREFIX, inputs).detach()
    h_torch = mf.check_against_torch_layers(P, CONFIG, PREFIX, inputs)
    enc_diff = (h - h_torch).abs().max().item()
    assert enc_diff < 1e-12, f"encoder vs nn.TransformerEncoderLayer: {enc_diff}"
    rows = h.view(-1, H)[positions]
    head_diff = (head_with_modules(P, rows) - logits.detach()).abs().max().item()
    assert head_diff < 1e-12, f"head vs torch.nn modules: {head_diff}"
    z = logits.detach()
    manual = -(torch.log_softmax(z, -1).gather(1, targets[:, None]).squeeze(1)).mean()
    assert abs(manual.item() - loss.item()) < 1e-12, "loss by hand"

    # The tie: the decoder's share of the word table's gradient is dLogitsᵀ · transformed, with
    # dLogits = (softmax − onehot) / M; the embedding share is zero at the padding row.
    d_logits = (torch.softmax(z, -1) - F.one_hot(targets, V).double()) / M
    decoder_share = d_logits.t() @ transformed.detach()
    assert (grads[WORD][PAD] - decoder_share[PAD]).abs().max() < 1e-15, "padding row: decoder only"
    assert grads[WORD][PAD].abs().max() > 1e-4, "the padding row has a decoder gradient"
    assert (grads[HEAD["bias"]] - d_logits.sum(0)).abs().max() < 1e-15, "output-bias gradient"
    embed_share = grads[WORD] - decoder_share
    assert embed_share.abs().max() > 1e-3, "the embedding lookup's share is non-trivial"
    for n, g in grads.items():
        if not n.endswith("key.bias"):  # exactly zero in exact math (softmax shift invariance)
            assert g.abs().max() > 1e-6, f"{n}: no gradient"

    checks, worst_rel, worst_abs = gradient_check(P, grads, loss_fn, gen)
    dir_rel = directional_check(P, grads, loss_fn, gen)

    # What float32 reaches: the same computation in torch float32.
    P32 = {n: w.clone().requires_grad_(True) for n, w in weights32.items()}
    loss32, logits32, _ = forward(P32, inputs, positions, targets)
    loss32.backward()

    def rel_err(a, b):
        b = b.detach()
        return ((a.detach().double() - b).abs() / (b.abs() + b.abs().mean())).max().item()

    f32_report = {
        "logits": rel_err(logits32, logits),
        "loss": rel_err(loss32, loss),
        "grads (except key biases)": max(
            rel_err(P32[n].grad, grads[n]) for n in P if not n.endswith("key.bias")
        ),
    }

    reference = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "original_ids": original,
        "positions": positions,
        "targets": targets,
        "logits": logits.detach().contiguous(),
        "loss": loss.detach().reshape(1),
    }
    for n in P:
        reference[f"grad.{n}"] = grads[n]
    for n, t in {**weights32, **reference}.items():
        if t.dtype.is_floating_point:
            assert torch.isfinite(t).all(), f"{n} not finite"

    out = os.path.join(root, NAME)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(dict(sorted(CONFIG.items())), f, indent=2)
        f.write("\n")
    meta_model = {"format": "pt", "fixture": NAME, "tied": f"cls.predictions.decoder.weight={WORD}"}
    mf.write_safetensors(os.path.join(out, "model.safetensors"), weights32, meta_model)
    meta_ref = {
        "format": "pt",
        "fixture": NAME,
        "dropout": "0 (config.json keeps 0.1 like real configs; the reference uses none)",
        "precision": "float64 forward and backward of the float32 weights",
        "input_ids": "after masking (80% [MASK] 4, 10% random, 10% kept) at `positions`",
        "positions": "flat indices row*S + column of the chosen tokens, ascending",
        "loss": "BertForMaskedLM: cross-entropy mean over the chosen positions (labels -100 "
        "elsewhere)",
        "grad_word_embeddings": "embedding lookup (padding row excluded) + tied decoder",
        "special_ids": "pad 0, unk 1, cls 2, sep 3, mask 4",
        "torch_version": torch.__version__,
        "seed": str(SEED),
    }
    mf.write_safetensors(os.path.join(out, "reference.safetensors"), reference, meta_ref)

    back_w, meta_w = mf.read_safetensors(os.path.join(out, "model.safetensors"))
    back_r, meta_r = mf.read_safetensors(os.path.join(out, "reference.safetensors"))
    assert meta_w == meta_model and meta_r == meta_ref
    assert set(back_w) == set(weights32) and set(back_r) == set(reference)
    for n, t in weights32.items():
        assert torch.equal(back_w[n], t), n
    for n, t in reference.items():
        assert back_r[n].dtype == t.dtype and torch.equal(back_r[n], t), n
    for n in back_w:
        assert back_r[f"grad.{n}"].shape == back_w[n].shape, n

    print(f"torch {torch.__version__}, wrote {out}")
    print(f"   original_ids   {original.tolist()}")
    print(f"   input_ids      {input_ids.tolist()}")
    print(f"   attention_mask real tokens {attention_mask.sum(1).tolist()}")
    print(f"   positions {positions.tolist()} ({M} of {sum(LENGTHS)} candidates), kinds {kinds}")
    print(f"   targets {targets.tolist()}  loss {loss.item():.17g}")
    print(f"   encoder vs nn.TransformerEncoderLayer: max |diff| {enc_diff:.3g}")
    print(f"   head vs torch.nn modules (tied decoder): max |diff| {head_diff:.3g}")
    print(
        f"   gradient check: {checks} elements by central differences: worst relative error "
        f"{worst_rel:.3g} (|grad| >= 1e-4), worst absolute {worst_abs:.3g}"
    )
    print(f"   directional derivative over all parameters: relative error {dir_rel:.3g}")
    print(
        "   torch float32 vs this float64 reference (|a-e| / (|e| + mean|e|)): "
        + ", ".join(f"{k} {v:.3g}" for k, v in f32_report.items())
    )
    print(
        f"   word-table gradient: decoder share max {decoder_share.abs().max().item():.4g}, "
        f"embedding share max {embed_share.abs().max().item():.4g}"
    )
    for fname in ("config.json", "model.safetensors", "reference.safetensors"):
        print(f"   {fname}: {os.path.getsize(os.path.join(out, fname))} bytes")
    print("all checks passed")


if __name__ == "__main__":
    main()
