#!/bin/bash
# GPU run 8 (session 4): the re-run tests (device optimizer, fused step), the fused step
# side by side again (S6_FUSED_STEP=0), 1.4B in bf16 (decode, prefill, training with
# --recompute light and full: memory), and the context-length scaling of 130M decode to 2^20.
# Binaries: dev-out/s6 (cargo build -p s6-cli --features cuda) and dev-out/test-<name> (the test
# binaries of `cargo test -p s6 --features cuda --no-run --test cuda ...`), stripped; $OUT receives the logs.
NV=/opt/torch/.venv/lib/python3.12/site-packages/nvidia
export LD_LIBRARY_PATH=$(ls -d $NV/*/lib 2>/dev/null | tr '\n' ':')$LD_LIBRARY_PATH
S6=$PWD/dev-out/s6
date -u
for t in dev-out/test-cuda_train dev-out/test-cuda_decode; do
  n=$(basename $t)
  timeout 100 $t --test-threads=1 > $OUT/$n.log 2>&1; echo "$n exit $?" >> $OUT/$n.log
  grep -E "test result|exit" $OUT/$n.log; grep -E "FAILED|panicked" -A8 $OUT/$n.log | head -30
done
{
for cfg in "bf16 1" "bf16 0" "f32 1"; do
  set -- $cfg; echo "dtype $1 S6_FUSED_STEP=$2"; S6_FUSED_STEP=$2 timeout 40 $S6 bench decode --device cuda --dtype $1 --preset mamba-130m --batch 1,8,128 --tokens 128 --repeats 3
done
timeout 60 $S6 bench scaling --device cuda --dtype bf16 --preset mamba-130m --batch 1 --seqlen 1024,16384,131072,1048576 --tokens 128 --chunk 16384
for f in 1 0; do echo "S6_FUSED_STEP=$f"; S6_FUSED_STEP=$f timeout 70 $S6 bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 1,128 --tokens 64 --repeats 2; done
timeout 70 $S6 bench prefill --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --seqlen 2048 --repeats 2
for rc in light full; do timeout 80 $S6 bench train --device cuda --dtype bf16 --recompute $rc --preset mamba-1.4b --batch 8 --seqlen 2048 --repeats 2; done
timeout 80 $S6 bench train --device cuda --dtype tf32 --recompute full --preset mamba-1.4b --batch 8 --seqlen 2048 --repeats 2
date -u
} > $OUT/bench.log 2>&1
grep -v "^$" $OUT/bench.log
