#!/bin/bash
# GPU run 4: all CUDA tests with the reworked scan backward; scan and training benches; selective
# copying with 16 tokens trained at 256 and tested up to 4096.
# Binaries: dev-out/s6 (cargo build -p s6-cli --features cuda) and dev-out/test-<name> (the test
# binaries of `cargo test -p s6 --features cuda --no-run --test cuda ...`), stripped; $OUT receives the logs.
NV=/opt/torch/.venv/lib/python3.12/site-packages/nvidia
export LD_LIBRARY_PATH=$(ls -d $NV/*/lib 2>/dev/null | tr '\n' ':')$LD_LIBRARY_PATH
S6=$PWD/dev-out/s6
date -u
for t in dev-out/test-*; do
  n=$(basename $t)
  timeout 200 $t --test-threads=1 > $OUT/$n.log 2>&1; echo "$n exit $?" >> $OUT/$n.log
  grep -E "test result|exit" $OUT/$n.log; grep -E "FAILED|panicked" -A8 $OUT/$n.log | head -30
done
mkdir -p /tmp/tk && cd /tmp/tk
run() { name=$1; shift; ( timeout 240 $S6 task "$@" --device cuda --json $name.json --plot $name.svg > $name.log 2>&1; echo "exit $?" >> $name.log ) & }
{
timeout 60 $S6 bench scan --device cuda --repeats 10 --backward
for dt in f32 tf32; do timeout 60 $S6 bench train --device cuda --dtype $dt --preset mamba-130m --batch 16 --seqlen 2048 --repeats 2; done
timeout 60 $S6 bench train --device cuda --dtype tf32 --preset mamba-1.4b --batch 8 --seqlen 2048 --repeats 1
} > $OUT/bench.log 2>&1
date -u
run sc256-s6 selective-copying --items 16 --seq-len 256 --batch-size 32 --steps 6000 --lr 2e-3 --eval-every 500 --eval-lengths 256,512,1024,2048,4096 --eval-samples 512
run sc256-lti selective-copying --variant lti --items 16 --seq-len 256 --batch-size 32 --steps 6000 --lr 2e-3 --eval-every 500 --eval-lengths 256,512,1024,2048,4096 --eval-samples 512
wait
date -u
tail -n 9 *.log
tar czf $OUT/tasks.tar.gz *.json *.svg *.log
cat $OUT/bench.log | grep -v "^$"
