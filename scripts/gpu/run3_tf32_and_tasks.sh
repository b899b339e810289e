#!/bin/bash
# GPU run 3: the TF32 test, f32 vs tf32 benchmarks side by side, induction heads (attention tuned, S6 longer).
# Binaries: dev-out/s6 (cargo build -p s6-cli --features cuda) and dev-out/test-<name> (the test
# binaries of `cargo test -p s6 --features cuda --no-run --test cuda ...`), stripped; $OUT receives the logs.
NV=/opt/torch/.venv/lib/python3.12/site-packages/nvidia
export LD_LIBRARY_PATH=$(ls -d $NV/*/lib 2>/dev/null | tr '\n' ':')$LD_LIBRARY_PATH
S6=$PWD/dev-out/s6
date -u
timeout 60 dev-out/test-cuda --test-threads=1 --nocapture 2>&1 | grep -E "^test |test result|tf32|panicked" > $OUT/tests.log
cat $OUT/tests.log
{
for dt in f32 tf32; do
timeout 60 $S6 bench train --device cuda --dtype $dt --preset mamba-130m --batch 16 --seqlen 2048 --repeats 2
done
for dt in f32 tf32; do
timeout 60 $S6 bench train --device cuda --dtype $dt --preset mamba-1.4b --batch 8 --seqlen 2048 --repeats 1
done
timeout 60 $S6 bench prefill --device cuda --dtype tf32 --preset mamba-1.4b --batch 128 --seqlen 2048 --repeats 1
timeout 60 $S6 bench prefill --device cuda --dtype tf32 --preset mamba-130m --batch 128 --seqlen 2048 --repeats 2
timeout 60 $S6 bench prefill --device cuda --dtype f32 --preset mamba-130m --batch 128 --seqlen 2048 --repeats 2
timeout 60 $S6 bench decode --device cuda --dtype tf32 --preset mamba-1.4b --batch 128 --tokens 64 --repeats 2
} > $OUT/bench.log 2>&1
date -u
mkdir -p /tmp/tk && cd /tmp/tk
LEN="--eval-lengths 2^6,2^7,2^8,2^9,2^10,2^11,2^12,2^13,2^14,2^15,2^16,2^17,2^18,2^19,2^20 --eval-samples 256 --eval-tokens 8388608"
run() { name=$1; shift; ( timeout 330 $S6 task "$@" --device cuda --json $name.json --plot $name.svg > $name.log 2>&1; echo "exit $?" >> $name.log ) & }
run ih256-att-lr3e-4 induction-heads --variant attention --seq-len 256 --batch-size 32 --steps 6000 --lr 3e-4 --warmup-steps 500 --eval-every 500 $LEN --eval-budget 15
run ih256-att-lr1e-4 induction-heads --variant attention --seq-len 256 --batch-size 32 --steps 6000 --lr 1e-4 --warmup-steps 500 --eval-every 500 $LEN --eval-budget 15
run ih256-s6-16k induction-heads --seq-len 256 --batch-size 32 --steps 16000 --lr 1e-3 --eval-every 1000 $LEN --eval-budget 60
run seeds-1 selective-copying --variant s6,lti --items 4 --seq-len 32 --steps 1200 --lr 3e-3 --seed 1 --eval-every 0 --eval-samples 1024
wait
date -u
tail -n 4 *.log
tar czf $OUT/tasks.tar.gz *.json *.svg *.log
