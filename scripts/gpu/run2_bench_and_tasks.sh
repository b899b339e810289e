#!/bin/bash
# GPU run 2: benchmarks alone, then the synthetic tasks at paper-like settings (concurrent processes).
# Binaries: dev-out/s6 (cargo build -p s6-cli --features cuda) and dev-out/test-<name> (the test
# binaries of `cargo test -p s6 --features cuda --no-run --test cuda ...`), stripped; $OUT receives the logs.
NV=/opt/torch/.venv/lib/python3.12/site-packages/nvidia
export LD_LIBRARY_PATH=$(ls -d $NV/*/lib 2>/dev/null | tr '\n' ':')$LD_LIBRARY_PATH
S6=$PWD/dev-out/s6
date -u
{
timeout 60 $S6 bench decode --device cuda --preset mamba-130m --batch 64,128 --tokens 128 --repeats 2
timeout 90 $S6 bench decode --device cuda --preset mamba-1.4b --batch 1,128 --tokens 64 --repeats 2
timeout 60 $S6 bench train --device cuda --preset mamba-1.4b --batch 8 --seqlen 2048 --repeats 1
timeout 60 $S6 bench prefill --device cuda --preset mamba-1.4b --batch 128 --seqlen 2048 --repeats 1
} > $OUT/bench.log 2>&1
date -u
mkdir -p /tmp/tk && cd /tmp/tk
LEN="--eval-lengths 2^6,2^7,2^8,2^9,2^10,2^11,2^12,2^13,2^14,2^15,2^16,2^17,2^18,2^19,2^20 --eval-samples 256 --eval-tokens 8388608"
run() { name=$1; shift; ( timeout 400 $S6 task "$@" --device cuda --json $name.json --plot $name.svg > $name.log 2>&1; echo "exit $?" >> $name.log ) & }
run sc4096-s6 selective-copying --items 16 --seq-len 4096 --batch-size 16 --steps 3000 --lr 2e-3 --eval-every 250 --eval-samples 256
run sc4096-lti selective-copying --variant lti --items 16 --seq-len 4096 --batch-size 16 --steps 3000 --lr 2e-3 --eval-every 250 --eval-samples 256
run ih256-s6 induction-heads --seq-len 256 --batch-size 32 --steps 8000 --lr 1e-3 --eval-every 500 $LEN --eval-budget 60
run ih256-att induction-heads --variant attention --seq-len 256 --batch-size 32 --steps 8000 --lr 1e-3 --eval-every 500 $LEN --eval-budget 20
( for s in 1 2 3; do timeout 120 $S6 task selective-copying --variant s6,lti --items 4 --seq-len 32 --steps 1200 --lr 3e-3 --seed $s --eval-every 0 --eval-samples 1024 --device cuda --json seeds-$s.json --plot seeds-$s.svg > seeds-$s.log 2>&1; done ) &
wait
date -u
tail -n 4 *.log
tar czf $OUT/tasks.tar.gz *.json *.svg *.log
