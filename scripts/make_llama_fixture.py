#!/usr/bin/env python3
"""Make the reference fixtures of s6's Transformer baseline from HF transformers' LlamaForCausalLM.

Usage (repository root; needs torch + transformers, runs on the CPU in float32):

    python3 scripts/make_llama_fixture.py --out crates/s6/tests/fixtures

For each variant it writes OUT/<variant>/ with

    config.json            HF LlamaConfig (save_pretrained)
    model.safetensors      the weights (save_pretrained, safetensors)
    expected.safetensors   input_ids i64 [2,19]; logits f32 [2,19,V] = model(input_ids).logits;
                           loss f32 [1] = model(input_ids, labels=input_ids).loss;
                           grad.<name> f32 for every parameter after loss.backward()

Random weights are drawn at a larger scale than HF's init (std 0.2 for matrices, norm weights
1 + 0.3·N(0,1)) so that attention patterns, RMSNorm weights and the SwiGLU gate all matter and
the logits are far from uniform. The eager attention implementation is used (plain softmax).
"""

import os

os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import json
import shutil

import torch
import transformers
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

VARIANTS = {
    # Untied head, non-default θ (500: the slow rotation pairs turn visibly within 19 tokens),
    # non-default eps.
    "llama-tiny": dict(
        vocab_size=16,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        rope_theta=500.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        seed=11,
    ),
    # Tied head, 3 heads of 8, an MLP width that is not a power of two, one layer, default θ.
    "llama-tiny-tied": dict(
        vocab_size=16,
        hidden_size=24,
        intermediate_size=40,
        num_hidden_layers=1,
        num_attention_heads=3,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        seed=22,
    ),
}


def make(out_dir, name, spec):
    spec = dict(spec)
    seed = spec.pop("seed")
    cfg = LlamaConfig(
        num_key_value_heads=spec["num_attention_heads"],
        max_position_embeddings=64,
        attention_bias=False,
        mlp_bias=False,
        hidden_act="silu",
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        **spec,
    )
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    d = os.path.join(out_dir, name)
    shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(d, safe_serialization=True)
    gen = os.path.join(d, "generation_config.json")
    if os.path.exists(gen):
        os.remove(gen)

    g = torch.Generator().manual_seed(seed * 100)
    input_ids = torch.randint(0, cfg.vocab_size, (2, 19), generator=g)
    with torch.no_grad():
        logits = model(input_ids).logits.float()
    model.zero_grad()
    out = model(input_ids, labels=input_ids)
    out.loss.backward()
    tensors = {
        "input_ids": input_ids.to(torch.int64).contiguous(),
        "logits": logits.contiguous(),
        "loss": out.loss.detach().reshape(1).float(),
    }
    for pname, p in model.named_parameters():
        tensors["grad." + pname] = p.grad.detach().float().contiguous()
    save_file(tensors, os.path.join(d, "expected.safetensors"))

    # The saved directory must reproduce the logits exactly when reloaded.
    back = LlamaForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        again = back(input_ids).logits
    assert torch.equal(again, logits), f"{name}: reloaded model differs"
    # sdpa agrees with eager to float32 rounding.
    sd = LlamaForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="sdpa").eval()
    with torch.no_grad():
        diff = (sd(input_ids).logits - logits).abs().max().item()
    sizes = {f: os.path.getsize(os.path.join(d, f)) for f in sorted(os.listdir(d))}
    info = dict(
        seed=seed,
        loss=out.loss.item(),
        max_abs_logit=logits.abs().max().item(),
        sdpa_vs_eager=diff,
        files=sizes,
        total_bytes=sum(sizes.values()),
        lm_head_in_checkpoint="lm_head.weight" in open(os.path.join(d, "model.safetensors"), "rb").read(4096).decode("latin1"),
    )
    print(name, json.dumps(info))
    return info


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("torch", torch.__version__, "transformers", transformers.__version__)
    for name, spec in VARIANTS.items():
        make(args.out, name, spec)


if __name__ == "__main__":
    main()
