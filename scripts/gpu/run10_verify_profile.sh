#!/bin/bash
# GPU run 10 (session 4): every CUDA test on the final binaries, then where a 130M bf16 training
# step and a 130M decode step spend their time (nsys's kernel summary, when the machine has nsys).
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
NSYS=$(command -v nsys || ls /usr/local/cuda*/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
echo "nsys: ${NSYS:-none}"
timeout 40 $S6 bench decode --device cuda --dtype bf16 --preset mamba-130m --batch 1 --tokens 128 --repeats 2 | grep -v eager
if [ -n "$NSYS" ]; then
  cd /tmp
  timeout 120 $NSYS profile -o train --force-overwrite true $S6 bench train --device cuda --dtype bf16 --preset mamba-130m --batch 16 --seqlen 2048 --repeats 2 > /dev/null 2>&1
  timeout 60 $NSYS stats --report cuda_gpu_kern_sum --format csv train.nsys-rep 2>/dev/null | head -40 > $OUT/train_kernels.csv
  timeout 120 $NSYS profile -o dec --force-overwrite true --cuda-graph-trace node $S6 bench decode --device cuda --dtype bf16 --preset mamba-130m --batch 1 --tokens 256 --repeats 1 > /dev/null 2>&1
  timeout 60 $NSYS stats --report cuda_gpu_kern_sum --format csv dec.nsys-rep 2>/dev/null | head -40 > $OUT/decode_kernels.csv
  cut -c1-200 $OUT/train_kernels.csv | head -30; cut -c1-200 $OUT/decode_kernels.csv | head -25
fi
date -u
