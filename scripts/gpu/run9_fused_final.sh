#!/bin/bash
# GPU run 9 (session 4): the reworked fused step (conv kernel + GEMV x_proj + dt/scan kernel) and
# the bf16 GEMV with hardware rounding: CUDA tests, then decode side by side (S6_FUSED_STEP=0),
# 130M and 1.4B, and 130M prefill in bf16.
# Binaries: dev-out/s6 (cargo build -p s6-cli --features cuda) and dev-out/test-<name> (the test
# binaries of `cargo test -p s6 --features cuda --no-run --test cuda ...`), stripped; $OUT receives the logs.
NV=/opt/torch/.venv/lib/python3.12/site-packages/nvidia
export LD_LIBRARY_PATH=$(ls -d $NV/*/lib 2>/dev/null | tr '\n' ':')$LD_LIBRARY_PATH
S6=$PWD/dev-out/s6
date -u
for t in dev-out/test-*; do
  n=$(basename $t)
  timeout 100 $t --test-threads=1 > $OUT/$n.log 2>&1; echo "$n exit $?" >> $OUT/$n.log
  grep -E "test result|exit" $OUT/$n.log; grep -E "FAILED|panicked" -A8 $OUT/$n.log | head -30
done
{
for cfg in "bf16 1" "bf16 0" "f32 1" "f32 0"; do
  set -- $cfg; echo "dtype $1 S6_FUSED_STEP=$2"; S6_FUSED_STEP=$2 timeout 40 $S6 bench decode --device cuda --dtype $1 --preset mamba-130m --batch 1,8,16,64,128 --tokens 128 --repeats 3
done
for f in 1 0; do echo "S6_FUSED_STEP=$f"; S6_FUSED_STEP=$f timeout 70 $S6 bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 1,16,128 --tokens 64 --repeats 2; done
timeout 40 $S6 bench prefill --device cuda --dtype bf16 --preset mamba-130m --batch 128 --seqlen 2048 --repeats 2
date -u
} > $OUT/bench.log 2>&1
grep -v "^$" $OUT/bench.log | grep -v "eager\|limits:"
