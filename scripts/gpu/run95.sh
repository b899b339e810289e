#!/bin/bash
# GPU run 95 (session 24): x_proj fused into the batch-1 scan step over clusters (S6_XSCAN=1) and
# out_proj's weights prefetched into L2 by the batch-1 scan step (S6_PREFETCH_NEXT=1|2): the
# fused step's test, batch-1 decoding with each off and on side by side, every CUDA test (and
# cuda_decode again with both on); then the goals' figures on whatever card the call gets (the goals
# are set on an H200) and where 1.4B prefill's time goes now (`--profile`).
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
t xscan - test-cuda_decode xscan_mixer_step_equals_the_gemv_step
dec() { timeout 80 dev-out/s6 bench decode --device cuda --dtype bf16 "$@" 2>&1 | grep -E "^decode|rror"; }
echo "== batch-1 decoding: S6_XSCAN (x_proj fused) and S6_PREFETCH_NEXT (out_proj's weights into L2)"
ab() { for xp in $1; do
  echo "-- S6_XSCAN=${xp%/*} S6_PREFETCH_NEXT=${xp#*/}"
  S6_XSCAN=${xp%/*} S6_PREFETCH_NEXT=${xp#*/} dec --preset mamba-130m --batch 1 --tokens 128 --repeats 3
  S6_XSCAN=${xp%/*} S6_PREFETCH_NEXT=${xp#*/} dec --preset mamba-1.4b --batch 1 --tokens 64 --repeats 3
done; }
ab "0/0 1/0 0/1 0/2 1/1 1/2"
echo "-- s6-main (ecf0bdf: the scan step without the new parameters)"
timeout 80 dev-out/s6-main bench decode --device cuda --dtype bf16 --preset mamba-130m --batch 1 --tokens 128 --repeats 3 2>&1 | grep -E "^decode|rror"
timeout 80 dev-out/s6-main bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 1 --tokens 64 --repeats 3 2>&1 | grep -E "^decode|rror"
date -u
t decode - test-cuda_decode
export S6_PREFETCH_NEXT=2; t decode_xscan S6_XSCAN=1 test-cuda_decode; unset S6_PREFETCH_NEXT
echo "-- round 2"
ab "0/0 1/0 0/2 1/2"
date -u
for n in cuda cuda_backward cuda_train; do t $n - test-$n; done
date -u
echo "== decode, batch 128"
dec --preset mamba-1.4b --batch 128 --tokens 32 --repeats 2
echo "== prefill"
timeout 80 dev-out/s6 bench prefill --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --seqlen 2048 --repeats 2 2>&1 | grep -E "^prefill|rror"
timeout 100 dev-out/s6 bench prefill --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --seqlen 2048 --repeats 1 --profile > $OUT/prefill_profile.txt 2>&1; tail -30 $OUT/prefill_profile.txt
date -u
echo "== scan"
b() { timeout 60 dev-out/s6 bench scan --device cuda "$@" 2>&1 | grep -E "^scan|rror" | sed 's/  */ /g'; }
b --repeats 5 --dtype bf16 --scan-seqlen 512,2048,8192,32768
b --repeats 3 --backward --scan-seqlen 2048
echo "== train"
train_bench s6 --preset mamba-130m --batch 16
train_bench s6 --preset mamba-1.4b --batch 8
date -u
