#!/bin/bash
# GPU run 7 (session 4): every CUDA test (bf16 matmuls, the fused decode step, the device-side
# optimizer, GPU gradients against the PyTorch fixtures), induction heads at 256 over three seeds
# and a wider attention baseline in the background, then 130M decode and training side by side:
# f32 / tf32 / bf16, fused step on and off (S6_FUSED_STEP=0).
# Binaries: dev-out/s6 (cargo build -p s6-cli --features cuda) and dev-out/test-<name> (the test
# binaries of `cargo test -p s6 --features cuda --no-run --test cuda ...`), stripped; $OUT receives the logs.
NV=/opt/torch/.venv/lib/python3.12/site-packages/nvidia
export LD_LIBRARY_PATH=$(ls -d $NV/*/lib 2>/dev/null | tr '\n' ':')$LD_LIBRARY_PATH
S6=$PWD/dev-out/s6
date -u
mkdir -p /tmp/tk && cd /tmp/tk
LEN="--eval-lengths 2^6,2^7,2^8,2^9,2^10,2^11,2^12,2^13,2^14,2^15,2^16,2^17,2^18,2^19,2^20 --eval-samples 256 --eval-tokens 8388608"
run() { name=$1; shift; ( timeout 300 $S6 task "$@" --device cuda --json $name.json --plot $name.svg > $name.log 2>&1; echo "exit $?" >> $name.log ) & }
for seed in 1 2 3; do
  run ih256-s6-seed$seed induction-heads --seq-len 256 --batch-size 32 --steps 8000 --lr 1e-3 --seed $seed --eval-every 1000 $LEN --eval-budget 60
done
run ih256-att-d128 induction-heads --variant attention --d-model 128 --heads 4 --seq-len 256 --batch-size 32 --steps 8000 --lr 3e-4 --warmup-steps 500 --eval-every 1000 $LEN --eval-budget 15
cd - > /dev/null
for t in dev-out/test-*; do
  n=$(basename $t)
  timeout 120 $t --test-threads=1 > $OUT/$n.log 2>&1; echo "$n exit $?" >> $OUT/$n.log
  grep -E "test result|exit" $OUT/$n.log; grep -E "FAILED|panicked" -A8 $OUT/$n.log | head -30
done
date -u
wait
date -u
{
for cfg in "f32 1" "bf16 1" "bf16 0"; do
  set -- $cfg; echo "dtype $1 S6_FUSED_STEP=$2"; S6_FUSED_STEP=$2 timeout 40 $S6 bench decode --device cuda --dtype $1 --preset mamba-130m --batch 1,8,128 --tokens 128 --repeats 3
done
for dt in tf32 bf16; do timeout 50 $S6 bench train --device cuda --dtype $dt --preset mamba-130m --batch 16 --seqlen 2048 --repeats 2; done
timeout 50 $S6 bench train --device cuda --dtype bf16 --recompute full --preset mamba-130m --batch 16 --seqlen 2048 --repeats 2
date -u
} > $OUT/bench.log 2>&1
grep -v "^$" $OUT/bench.log
cd /tmp/tk && tail -n 20 *.log | grep -E "==>|2\^|exit|accuracy" | head -80
tar czf $OUT/tasks.tar.gz *.json *.svg *.log
