#!/bin/bash
# GPU run 95b (session 24): run95.sh cut to what little device time was left after the failed
# starts: the fused x_proj's test, batch-1 decoding with the two switches off and on beside main's
# build, cuda_decode with both on and with both off, then the other test binaries.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
t xscan - test-cuda_decode xscan_mixer_step_equals_the_gemv_step
dec() { timeout 60 dev-out/$1 bench decode --device cuda --dtype bf16 --batch 1 --repeats 3 "${@:2}" 2>&1 | grep -E "^decode|rror"; }
for xp in 0/0 1/0 0/2 1/2; do
  echo "-- S6_XSCAN=${xp%/*} S6_PREFETCH_NEXT=${xp#*/}"
  S6_XSCAN=${xp%/*} S6_PREFETCH_NEXT=${xp#*/} dec s6 --preset mamba-130m --tokens 128
  S6_XSCAN=${xp%/*} S6_PREFETCH_NEXT=${xp#*/} dec s6 --preset mamba-1.4b --tokens 64
done
echo "-- s6-main"; dec s6-main --preset mamba-130m --tokens 128; dec s6-main --preset mamba-1.4b --tokens 64
date -u
export S6_PREFETCH_NEXT=2; t decode_xscan S6_XSCAN=1 test-cuda_decode; unset S6_PREFETCH_NEXT
t decode - test-cuda_decode
for n in cuda cuda_backward cuda_train; do t $n - test-$n; done
date -u
