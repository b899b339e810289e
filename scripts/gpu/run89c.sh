#!/bin/bash
# GPU run 89, call C (session 23): decoding at 1.4B batch 16 / 128 (run 88's part 3): main,
# this build, this build with S6_DT_FUSED=1 (the coalesced lanes; its first version was 25,370
# against 31,857 tok/s in run 87), two rounds; then the goals' decoding figures.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
dec() { timeout 80 dev-out/${BIN:-s6} bench decode --device cuda --dtype bf16 "$@" 2>&1 | grep -E "device, graph\)|rror"; }
for r in 1 2; do
  echo "== s6-main"; BIN=s6-main dec --preset mamba-1.4b --batch 16,128 --tokens 32 --repeats 2
  echo "== s6"; dec --preset mamba-1.4b --batch 16,128 --tokens 32 --repeats 2
  echo "== S6_DT_FUSED=1"; (export S6_DT_FUSED=1; dec --preset mamba-1.4b --batch 16,128 --tokens 32 --repeats 2)
done
date -u
echo "== goals"
dec --preset mamba-130m --batch 1 --tokens 128 --repeats 3
dec --preset mamba-1.4b --batch 1 --tokens 64 --repeats 3
timeout 80 dev-out/s6 bench prefill --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --seqlen 2048 --repeats 2 2>&1 | grep -E "^prefill|rror"
date -u
