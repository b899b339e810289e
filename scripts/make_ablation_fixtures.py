#!/usr/bin/env python3
"""Fixtures for the Mamba block ablations (paper Tables 1 and 7): crates/s6/tests/fixtures/ablation-*.

A pure-PyTorch float64 reference of the Mamba language model, written from the paper's equations
with a sequential scan, with the four ablation switches of s6's `"s6_ablation"`:

    gate            y = (C·h + D·u) · silu(z)       or, without it, y = C·h + D·u
    selective_delta Δ = softplus(dt_proj(δ) + b)     or Δ = softplus(b)      (b = dt_proj.bias)
    selective_b     B_t = x_proj(u)_B                or B = mixer.B, one [d_state] vector
    selective_c     C_t = x_proj(u)_C                or C = mixer.C, one [d_state] vector

x_proj keeps only the selective columns, in the order [δ, B, C]; without a gate in_proj makes only
x. The reference is first checked against HF transformers' MambaForCausalLM (all switches on, same
weights, float64): loss and every gradient. Then, per variant, it draws random weights (float32,
s6's tensor names), saves config.json + model.safetensors, and writes expected.safetensors with
`input_ids` i64 [2, L], `targets` i64 [2, L] (-1 = ignored), `loss` f64 [1], `logits` f64
[2, L, V] and `grad.<name>` f64 for every parameter, all computed in float64 from the float32
weights.

Usage (repository root): /tmp/venv/bin/python scripts/make_ablation_fixtures.py [--out DIR]
"""

import argparse
import json
import math
import os

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

VARIANTS = {
    # name: (selective_delta, selective_b, selective_c, gate, use_bias, tie_embeddings)
    "lti": (False, False, False, True, False, True),
    "no-gate": (True, True, True, False, True, False),
    "delta-only": (True, False, False, True, False, True),
    "b-only": (False, True, False, True, False, False),
    "c-only": (False, False, True, True, True, True),
}

VOCAB, D_MODEL, N_LAYER, D_STATE, D_CONV, EXPAND = 16, 16, 2, 8, 4, 2
BATCH, SEQLEN = 2, 20
EPS = 1e-5


def dims():
    d_inner = EXPAND * D_MODEL
    dt_rank = math.ceil(D_MODEL / 16)
    return d_inner, dt_rank


def param_shapes(ab, use_bias, tie):
    """s6's parameter names and shapes, in s6's checkpoint order (model/mamba1.rs param_specs)."""
    sd, sb, sc, gate = ab
    di, r = dims()
    iw = 2 * di if gate else di
    xw = r * sd + D_STATE * sb + D_STATE * sc
    out = [("backbone.embeddings.weight", (VOCAB, D_MODEL))]
    for i in range(N_LAYER):
        p = f"backbone.layers.{i}."
        out.append((p + "norm.weight", (D_MODEL,)))
        out.append((p + "mixer.in_proj.weight", (iw, D_MODEL)))
        if use_bias:
            out.append((p + "mixer.in_proj.bias", (iw,)))
        out.append((p + "mixer.conv1d.weight", (di, 1, D_CONV)))
        out.append((p + "mixer.conv1d.bias", (di,)))
        if xw:
            out.append((p + "mixer.x_proj.weight", (xw, di)))
        if sd:
            out.append((p + "mixer.dt_proj.weight", (di, r)))
        out.append((p + "mixer.dt_proj.bias", (di,)))
        out.append((p + "mixer.A_log", (di, D_STATE)))
        if not sb:
            out.append((p + "mixer.B", (D_STATE,)))
        if not sc:
            out.append((p + "mixer.C", (D_STATE,)))
        out.append((p + "mixer.D", (di,)))
        out.append((p + "mixer.out_proj.weight", (D_MODEL, di)))
        if use_bias:
            out.append((p + "mixer.out_proj.bias", (D_MODEL,)))
    out.append(("backbone.norm_f.weight", (D_MODEL,)))
    if not tie:
        out.append(("lm_head.weight", (VOCAB, D_MODEL)))
    return out


def rmsnorm(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * w


def mixer(P, p, hs, ab, d_conv):
    """One Mamba block (without its norm) from the paper's equations; hs: [B, L, D]."""
    sd, sb, sc, gate = ab
    bsz, seqlen, _ = hs.shape
    A_log = P[p + "A_log"]
    di, n = A_log.shape
    xz = hs @ P[p + "in_proj.weight"].T
    if p + "in_proj.bias" in P:
        xz = xz + P[p + "in_proj.bias"]
    x, z = (xz[..., :di], xz[..., di:]) if gate else (xz, None)
    # Depthwise causal conv over time, then SiLU.
    w = P[p + "conv1d.weight"]
    xc = F.pad(x.transpose(1, 2), (d_conv - 1, 0))
    u = F.conv1d(xc, w, P.get(p + "conv1d.bias"), groups=di).transpose(1, 2)
    u = F.silu(u)
    # x_proj: only the selective parts, in the order [δ, B, C].
    col = 0
    xdbl = u @ P[p + "x_proj.weight"].T if p + "x_proj.weight" in P else None
    dt_bias = P[p + "dt_proj.bias"]
    if sd:
        r = P[p + "dt_proj.weight"].shape[1]
        delta = F.softplus(xdbl[..., col : col + r] @ P[p + "dt_proj.weight"].T + dt_bias)
        col += r
    else:
        delta = F.softplus(dt_bias).expand(bsz, seqlen, di)
    if sb:
        Bm = xdbl[..., col : col + n]
        col += n
    else:
        Bm = P[p + "B"].expand(bsz, seqlen, n)
    if sc:
        Cm = xdbl[..., col : col + n]
        col += n
    else:
        Cm = P[p + "C"].expand(bsz, seqlen, n)
    A = -torch.exp(A_log)
    Dv = P[p + "D"]
    # h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t;  y_t = C_t · h_t + D u_t.
    h = torch.zeros(bsz, di, n, dtype=hs.dtype)
    ys = []
    for t in range(seqlen):
        dt = delta[:, t, :, None]
        h = torch.exp(dt * A) * h + dt * Bm[:, t, None, :] * u[:, t, :, None]
        ys.append((h * Cm[:, t, None, :]).sum(-1) + Dv * u[:, t])
    y = torch.stack(ys, dim=1)
    if gate:
        y = y * F.silu(z)
    out = y @ P[p + "out_proj.weight"].T
    if p + "out_proj.bias" in P:
        out = out + P[p + "out_proj.bias"]
    return out


def lm_logits(P, ab, ids, n_layer, d_conv):
    x = P["backbone.embeddings.weight"][ids]
    for i in range(n_layer):
        p = f"backbone.layers.{i}."
        x = x + mixer(P, p + "mixer.", rmsnorm(x, P[p + "norm.weight"]), ab, d_conv)
    x = rmsnorm(x, P["backbone.norm_f.weight"])
    head = P.get("lm_head.weight", P["backbone.embeddings.weight"])
    return x @ head.T


def loss_of(logits, targets):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-1)


def shifted(ids):
    t = torch.full_like(ids, -1)
    t[:, :-1] = ids[:, 1:]
    return t


def check_against_hf():
    """All switches on: the reference equals HF MambaForCausalLM in float64 (loss and gradients)."""
    from transformers import MambaConfig, MambaForCausalLM

    torch.manual_seed(0)
    di, r = dims()
    cfg = MambaConfig(
        vocab_size=VOCAB,
        hidden_size=D_MODEL,
        num_hidden_layers=N_LAYER,
        state_size=D_STATE,
        conv_kernel=D_CONV,
        expand=EXPAND,
        time_step_rank=r,
        use_bias=True,
        use_conv_bias=True,
        layer_norm_epsilon=EPS,
        tie_word_embeddings=False,
        time_step_min=0.01,
        time_step_max=0.5,
        residual_in_fp32=False,
    )
    hf = MambaForCausalLM(cfg).double()
    with torch.no_grad():
        for name, prm in hf.named_parameters():
            if name.endswith("A_log") or name.endswith("dt_proj.bias"):
                continue
            # Larger than HF's init, so that every path carries signal.
            prm.add_(torch.randn_like(prm) * 0.3)
    ids = torch.randint(0, VOCAB, (BATCH, SEQLEN))
    out = hf(input_ids=ids, labels=ids)
    out.loss.backward()
    hf_grads = {n: p.grad.clone() for n, p in hf.named_parameters()}
    P = {n: p.detach().clone().requires_grad_(True) for n, p in hf.named_parameters()}
    ab = (True, True, True, True)
    logits = lm_logits(P, ab, ids, N_LAYER, D_CONV)
    loss = loss_of(logits, shifted(ids))
    loss.backward()
    dl = abs(loss.item() - out.loss.item())
    dlog = (logits - out.logits).abs().max().item()
    worst = 0.0
    for n, g in hf_grads.items():
        err = (P[n].grad - g).abs().max().item() / max(g.abs().max().item(), 1e-30)
        worst = max(worst, err)
    # HF's pure-PyTorch path casts A, B, u, the scan and the RMSNorm to float32 even in a float64
    # model, so the two agree to float32 rounding (~1e-6), not to float64's.
    print(f"reference vs HF MambaForCausalLM (float64 model; HF computes parts in float32): "
          f"|Δloss| {dl:.2e}, max |Δlogit| {dlog:.2e}, worst gradient error {worst:.2e} of its max "
          f"over {len(hf_grads)} parameters")
    assert dl < 1e-5 and dlog < 1e-5 and worst < 1e-5, "the reference does not match HF"
    assert set(hf_grads) == set(P)


def init_value(name, shape, gen):
    """Random float32 weights: paper-like A and Δ (with a larger Δ range so that the SSM matters),
    O(1) elsewhere so that every path carries signal."""
    numel = math.prod(shape)
    if name.endswith("A_log"):
        base = torch.log(torch.arange(1, shape[1] + 1, dtype=torch.float64)).expand(shape)
        return base + 0.1 * torch.randn(shape, generator=gen, dtype=torch.float64)
    if name.endswith("dt_proj.bias"):
        dt = torch.exp(torch.rand(shape, generator=gen, dtype=torch.float64) * (math.log(0.5) - math.log(0.01))
                       + math.log(0.01))
        return dt + torch.log(-torch.expm1(-dt))
    if name.endswith("norm.weight") or name.endswith("norm_f.weight") or name.endswith("mixer.D"):
        return 1.0 + 0.2 * torch.randn(shape, generator=gen, dtype=torch.float64)
    if name.endswith("mixer.B"):
        return 1.0 + 0.3 * torch.randn(shape, generator=gen, dtype=torch.float64)
    fan_in = shape[-1] if len(shape) > 1 else 1
    if name.endswith("conv1d.weight"):
        fan_in = shape[-1]
    scale = 1.0 / math.sqrt(fan_in) if len(shape) > 1 else 0.3
    if name.endswith("embeddings.weight") or name.endswith("lm_head.weight"):
        scale = 0.5
    return torch.randn(numel, generator=gen, dtype=torch.float64).reshape(shape) * scale


def make_variant(out_dir, name, spec, seed):
    sd, sb, sc, gate, use_bias, tie = spec
    ab = (sd, sb, sc, gate)
    di, r = dims()
    gen = torch.Generator().manual_seed(seed)
    shapes = param_shapes(ab, use_bias, tie)
    w32 = {n: init_value(n, s, gen).to(torch.float32).contiguous() for n, s in shapes}
    d = os.path.join(out_dir, f"ablation-{name}")
    os.makedirs(d, exist_ok=True)
    save_file(w32, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architectures": ["MambaForCausalLM"],
        "model_type": "mamba",
        "hidden_size": D_MODEL,
        "num_hidden_layers": N_LAYER,
        "vocab_size": VOCAB,
        "state_size": D_STATE,
        "intermediate_size": di,
        "expand": EXPAND,
        "conv_kernel": D_CONV,
        "time_step_rank": r,
        "use_bias": use_bias,
        "use_conv_bias": True,
        "layer_norm_epsilon": EPS,
        "tie_word_embeddings": tie,
        "residual_in_fp32": True,
        "hidden_act": "silu",
        "bos_token_id": 0,
        "eos_token_id": 0,
        "pad_token_id": 0,
        "s6_ablation": {"selective_delta": sd, "selective_b": sb, "selective_c": sc, "gate": gate},
    }
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    ids = torch.randint(0, VOCAB, (BATCH, SEQLEN), generator=gen)
    targets = shifted(ids)
    targets[0, 3] = -1  # one ignored position besides the last ones
    P = {n: v.to(torch.float64).requires_grad_(True) for n, v in w32.items()}
    logits = lm_logits(P, ab, ids, N_LAYER, D_CONV)
    loss = loss_of(logits, targets)
    loss.backward()
    expected = {
        "input_ids": ids.to(torch.int64),
        "targets": targets.to(torch.int64),
        "loss": loss.detach().reshape(1),
        "logits": logits.detach().contiguous(),
    }
    for n, _ in shapes:
        expected[f"grad.{n}"] = P[n].grad.contiguous()
    save_file(expected, os.path.join(d, "expected.safetensors"))
    sizes = {f: os.path.getsize(os.path.join(d, f)) for f in sorted(os.listdir(d))}
    print(f"{name}: ablation {dict(zip(['selective_delta', 'selective_b', 'selective_c', 'gate'], ab))}, "
          f"use_bias {use_bias}, tied {tie}, {len(shapes)} tensors, loss {loss.item():.6f}, files {sizes}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="crates/s6/tests/fixtures")
    args = ap.parse_args()
    torch.set_default_dtype(torch.float64)
    assert not torch.cuda.is_available()
    print(f"torch {torch.__version__}")
    check_against_hf()
    for i, (name, spec) in enumerate(VARIANTS.items()):
        make_variant(args.out, name, spec, seed=1000 + i)


if __name__ == "__main__":
    main()
