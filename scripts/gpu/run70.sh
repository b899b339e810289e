#!/bin/bash
# GPU run 70: everything sessions 18 and 19 left unmeasured, in one call (device time is scarce),
# the decisive parts first, each skipped if its test failed:
# - the one-kernel block step (kernels/layer_step.cu): its test, then batch-1 decoding with
#   S6_LAYER_STEP=0/1 side by side (and two blocks per SM);
# - the scan backward n16q8: the backward tests with it, then n16p / n16r8 / n16q8 side by side;
# - 130M training with S6_BF16_STORAGE_TRAIN and n16q8 off and on (1.4B too with SHORT=0);
# - the tests that flipping those defaults would rest on; last, profiles of 1.4B decoding at
#   batch 128 and of a 130M training step.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
export S6_KERNEL_CACHE=/tmp/s6-kernels
timeout 60 dev-out/test-cuda_decode --test-threads=1 layer_step_kernel > $OUT/layer.log 2>&1; rc=$?
echo "layer exit $rc"; grep -E "test result|panicked" -A6 $OUT/layer.log | head -20
LS=1; [ $rc = 0 ] || LS=0
S6_SCAN_BWD=n16q8 timeout 90 dev-out/test-cuda_backward --test-threads=1 > $OUT/bwd-q8.log 2>&1; rc=$?
echo "backward n16q8 exit $rc"; grep -E "test result|panicked" -A6 $OUT/bwd-q8.log | head -20
Q8=1; [ $rc = 0 ] || Q8=0
dec() { timeout 50 dev-out/s6 bench decode --device cuda --dtype bf16 "$@" 2>&1 | tail -3; }
if [ $LS = 1 ]; then
  for p in "mamba-130m 128" "mamba-1.4b 32"; do
    set -- $p
    for s in 0 1 0 1; do echo "$1 S6_LAYER_STEP=$s"; S6_LAYER_STEP=$s dec --preset $1 --batch 1 --tokens $2 --repeats 2; done
    echo "$1, two blocks per SM"; S6_LAYER_STEP=1 S6_LAYER_STEP_BLOCKS_PER_SM=2 dec --preset $1 --batch 1 --tokens $2 --repeats 2
  done
fi
b() { timeout 60 dev-out/s6 bench scan --device cuda --dtype bf16 "$@" 2>&1 | grep -E "backward|rror"; }
ks="n16p n16r8"; [ $Q8 = 1 ] && ks="$ks n16q8"
for k in $ks; do
  echo "== $k"
  S6_SCAN_BWD=$k b --repeats 5 --backward --scan-seqlen 2048
  S6_SCAN_BWD=$k b --repeats 3 --backward --scan-batch 16 --scan-d-inner 1536 --scan-seqlen 2048
done
date -u
tr() { timeout 100 dev-out/s6 bench train --device cuda --dtype bf16 --seqlen 2048 --repeats 2 "$@" 2>&1 | grep -E "^train|rror"; }
presets=("mamba-130m 16")
[ "${SHORT:-1}" = 1 ] || presets+=("mamba-1.4b 8")
for p in "${presets[@]}"; do
  set -- $p
  echo "$1 training, defaults"; tr --preset $1 --batch $2
  echo "$1, S6_BF16_STORAGE_TRAIN=1"; S6_BF16_STORAGE_TRAIN=1 tr --preset $1 --batch $2
  if [ $Q8 = 1 ]; then
    echo "$1, S6_SCAN_BWD=n16q8"; S6_SCAN_BWD=n16q8 tr --preset $1 --batch $2
    echo "$1, both"; S6_SCAN_BWD=n16q8 S6_BF16_STORAGE_TRAIN=1 tr --preset $1 --batch $2
  fi
done
date -u
t train_st S6_BF16_STORAGE_TRAIN=1 test-cuda_train
[ $Q8 = 1 ] && t train_q8 S6_SCAN_BWD=n16q8 test-cuda_train grads
[ $LS = 1 ] && t decode_ls S6_LAYER_STEP=1 test-cuda_decode
date -u
timeout 90 dev-out/s6 bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --tokens 8 --repeats 1 --profile 2>&1 | tail -30
timeout 90 dev-out/s6 bench train --device cuda --dtype bf16 --preset mamba-130m --batch 16 --seqlen 2048 --repeats 1 --profile 2>&1 | tail -40
[ $Q8 = 1 ] && ncu_scan bwd-q8 s6_scan_bwd_n16q8 --backward --dtype bf16 --scan-seqlen 2048
date -u
