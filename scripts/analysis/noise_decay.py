#!/usr/bin/env python3
"""How long can an induction-heads model hold a token? Δ on noise tokens, per layer.

Reads a Mamba model saved by `s6 task induction-heads --save DIR` (HF layout, f32), runs it in
NumPy (an independent re-implementation of the forward: embedding, per layer RMSNorm → in_proj →
causal conv1d + SiLU → x_proj → Δ = softplus(dt_proj + bias) → selective scan → gate → out_proj,
residual; final RMSNorm, tied head) on fresh induction-heads sequences, checks that it answers them,
and reports, per layer, how much of what the model wrote about the token x survives T noise
tokens: the state difference between two copies of a sequence that differ only in x, carried
forward at each (channel, state) pair's mean decay rate on noise, Δ_t · |A| (a pair keeps
exp(-rate · T) over T tokens; holding x to 2^20 tokens needs rates near ln 2 / 2^20 ≈ 6.6e-7 on
the pairs that store it).

Usage: noise_decay.py MODEL_DIR [MODEL_DIR ...]   (needs numpy)
"""
import json
import struct
import sys

import numpy as np


def load(dir_):
    with open(f"{dir_}/model.safetensors", "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        assert t["dtype"] == "F32", f"{name}: expected F32, found {t['dtype']}"
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype=np.float32).reshape(t["shape"]).astype(np.float64)
    cfg = json.load(open(f"{dir_}/config.json"))
    return cfg, out


def sample(rng, length, vocab=16):
    """The s6 generator's definition: tokens from {0, 2..15}, trigger 1 at a random position
    followed by x, and again as the last input; the answer is x."""
    data = np.array([0] + list(range(2, vocab)))
    ids = rng.choice(data, size=length)
    p = rng.integers(0, length - 2)
    ids[p] = 1
    ids[-1] = 1
    return ids, p, ids[p + 1]


def forward(cfg, w, ids, keep_state_at=None):
    """Logits at the last position, per layer `(Δ, |A|)`, and per layer the scan state after
    position `keep_state_at` (if given)."""
    silu = lambda v: v / (1.0 + np.exp(-v))
    rms = lambda v, g: v / np.sqrt((v * v).mean(-1, keepdims=True) + cfg["layer_norm_epsilon"]) * g
    L, n, r = len(ids), cfg["state_size"], cfg["time_step_rank"]
    h = w["backbone.embeddings.weight"][ids]
    deltas, states = [], []
    for i in range(cfg["num_hidden_layers"]):
        m = lambda k: w[f"backbone.layers.{i}.mixer.{k}"]
        xz = rms(h, w[f"backbone.layers.{i}.norm.weight"]) @ m("in_proj.weight").T
        di = xz.shape[1] // 2
        x, z = xz[:, :di], xz[:, di:]
        k = m("conv1d.weight").shape[-1]
        xp = np.vstack([np.zeros((k - 1, di)), x])
        conv = m("conv1d.bias") + sum(m("conv1d.weight")[:, 0, j] * xp[j : j + L] for j in range(k))
        u = silu(conv)
        xdbl = u @ m("x_proj.weight").T
        bm, cm = xdbl[:, r : r + n], xdbl[:, r + n :]
        delta = np.logaddexp(0.0, xdbl[:, :r] @ m("dt_proj.weight").T + m("dt_proj.bias"))
        a = -np.exp(m("A_log"))
        s = np.zeros((di, n))
        y = np.empty((L, di))
        for t in range(L):
            s = np.exp(delta[t][:, None] * a) * s + (delta[t] * u[t])[:, None] * bm[t][None, :]
            y[t] = s @ cm[t] + m("D") * u[t]
            if t == keep_state_at:
                states.append(s.copy())
        h = h + (y * silu(z)) @ m("out_proj.weight").T
        deltas.append((delta, -a))
    logits = rms(h[-1], w["backbone.norm_f.weight"]) @ w["backbone.embeddings.weight"].T
    return logits, deltas, states


def main():
    length, at = 1024, 8
    print(
        "What the model wrote about x: per layer, the state difference between two copies of a "
        f"sequence that differ only in x (trigger at {at}, difference taken 4 steps after x), and "
        "the fraction of it left after T noise tokens at the pairs' mean noise decay rates "
        "(exact for layer 0, whose later inputs are equal in both copies)."
    )
    print("model | answered (length 1024) | per layer: fraction left after 2^12 / 2^16 / 2^20 tokens")
    for dir_ in sys.argv[1:]:
        cfg, w = load(dir_)
        rng = np.random.default_rng(7)  # the same sequences for every model
        right, total = 0, 0
        left = None
        for _ in range(8):
            ids, _, _ = sample(rng, length)
            ids[ids == 1] = 0
            ids[at], ids[-1] = 1, 1
            x1, x2 = rng.choice(np.arange(2, 16), size=2, replace=False)
            runs = []
            for x in (x1, x2):
                ids[at + 1] = x
                logits, deltas, states = forward(cfg, w, ids, keep_state_at=at + 5)
                right += int(np.argmax(logits) == x)
                total += 1
                runs.append(states)
            noise = np.zeros(length, bool)
            noise[at + 6 : length - 1] = True
            part = []
            for (d, absa), s1, s2 in zip(deltas, runs[0], runs[1]):
                rate = d[noise].mean(0)[:, None] * absa
                diff = np.abs(s1 - s2)
                norm = np.sqrt((diff**2).sum())
                part.append([np.sqrt(((diff * np.exp(-rate * T)) ** 2).sum()) / norm for T in (2**12, 2**16, 2**20)])
            left = np.array(part) if left is None else left + np.array(part)
        left /= 8
        cells = [f"layer {i}: " + " / ".join(f"{v:.3g}" for v in row) for i, row in enumerate(left)]
        print(f"{dir_} | {right}/{total} | " + " | ".join(cells))


if __name__ == "__main__":
    main()
