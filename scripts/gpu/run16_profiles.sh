#!/bin/bash
# GPU run 16 (session 5): where the time goes before this session's changes: training (130M, 1.4B),
# decode at 1.4B batch 128 and 130M batch 1, prefill at 1.4B (`--profile`: each op timed alone).
NV=/opt/torch/.venv/lib/python3.12/site-packages/nvidia
export LD_LIBRARY_PATH=$(ls -d $NV/*/lib 2>/dev/null | tr '\n' ':')$LD_LIBRARY_PATH
S6=$PWD/dev-out/s6
date -u
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv
timeout 60 $S6 bench train --device cuda --dtype bf16 --preset mamba-130m --batch 16 --seqlen 2048 --repeats 2 | grep -E "train|GEMM|copy"
timeout 120 $S6 bench train --device cuda --dtype bf16 --preset mamba-130m --batch 16 --seqlen 2048 --repeats 1 --profile > $OUT/profile-train-130m.log 2>&1
timeout 150 $S6 bench train --device cuda --dtype bf16 --preset mamba-1.4b --batch 8 --seqlen 2048 --repeats 1 --profile > $OUT/profile-train-1.4b.log 2>&1
timeout 100 $S6 bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --tokens 16 --repeats 1 --profile > $OUT/profile-decode-1.4b-b128.log 2>&1
timeout 60 $S6 bench decode --device cuda --dtype bf16 --preset mamba-130m --batch 1 --tokens 64 --repeats 1 --profile > $OUT/profile-decode-130m-b1.log 2>&1
timeout 100 $S6 bench prefill --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --seqlen 2048 --repeats 1 --profile > $OUT/profile-prefill-1.4b.log 2>&1
for f in $OUT/*.log; do echo "== $f"; grep -A28 "^profile" $f; done
date -u
