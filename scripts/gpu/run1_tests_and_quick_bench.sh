#!/bin/bash
# GPU run 1: every CUDA test binary, then quick benchmarks and a data-parallel smoke run.
# Binaries: dev-out/s6 (cargo build -p s6-cli --features cuda) and dev-out/test-<name> (the test
# binaries of `cargo test -p s6 --features cuda --no-run --test cuda ...`), stripped; $OUT receives the logs.
NV=/opt/torch/.venv/lib/python3.12/site-packages/nvidia
export LD_LIBRARY_PATH=$(ls -d $NV/*/lib 2>/dev/null | tr '\n' ':')$LD_LIBRARY_PATH
ls $NV; find $NV -name "libnccl*" | head -2
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
S6=dev-out/s6
for t in dev-out/test-*; do
  n=$(basename $t)
  timeout 200 $t --test-threads=1 > $OUT/$n.log 2>&1; echo "$n exit $?" >> $OUT/$n.log
  grep -E "^test .*(FAILED|ok)$|test result|panicked" $OUT/$n.log | grep -v " ok$" | head -20
  grep -A12 "^---- " $OUT/$n.log | head -60
done
{
timeout 60 $S6 bench scan --device cuda --repeats 10 --backward
timeout 90 $S6 bench decode --device cuda --preset mamba-130m --batch 1,16 --tokens 128 --repeats 3
timeout 90 $S6 bench train --device cuda --preset mamba-130m --batch 16 --seqlen 2048 --repeats 2
head -c 200000 README.md docs/*.md > /tmp/t.txt
for d in "--device cuda" "--gpus 1"; do rm -rf /tmp/o; timeout 60 $S6 train --data /tmp/t.txt --vocab-size 256 --d-model 64 --n-layer 2 --steps 30 --batch-size 8 --seq-len 128 --out /tmp/o $d 2>&1 | tail -2; done
} > $OUT/bench.log 2>&1
cat $OUT/bench.log | grep -v "^\s*$" | tail -40
