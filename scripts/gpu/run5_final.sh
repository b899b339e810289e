#!/bin/bash
# GPU run 5 (final): all CUDA tests; scan forward/backward, the small-batch GEMV side by side
# (S6_GEMV=0 turns it off), training throughput; selective copying with 16 tokens trained at 256
# and tested up to 4096.
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
date -u
timeout 40 $S6 bench scan --device cuda --repeats 10 --backward
for g in 1 0; do echo "S6_GEMV=$g"; S6_GEMV=$g timeout 40 $S6 bench decode --device cuda --preset mamba-130m --batch 1,8 --tokens 128 --repeats 3; done
for dt in f32 tf32; do timeout 40 $S6 bench train --device cuda --dtype $dt --preset mamba-130m --batch 16 --seqlen 2048 --repeats 2; done
date -u
} > $OUT/bench.log 2>&1
grep -v "^$" $OUT/bench.log
mkdir -p /tmp/tk && cd /tmp/tk
run() { name=$1; shift; ( timeout 110 $S6 task "$@" --device cuda --json $name.json --plot $name.svg > $name.log 2>&1; echo "exit $?" >> $name.log ) & }
run sc256-s6 selective-copying --items 16 --seq-len 256 --batch-size 32 --steps 4000 --lr 2e-3 --eval-every 500 --eval-lengths 256,512,1024,2048,4096 --eval-samples 512
run sc256-lti selective-copying --variant lti --items 16 --seq-len 256 --batch-size 32 --steps 4000 --lr 2e-3 --eval-every 500 --eval-lengths 256,512,1024,2048,4096 --eval-samples 512
wait
date -u
tail -n 9 *.log
tar czf $OUT/tasks.tar.gz *.json *.svg *.log
