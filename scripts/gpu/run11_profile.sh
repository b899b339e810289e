#!/bin/bash
# GPU run 11 (session 4): where a training step spends its time, op by op
# (`s6 bench train --profile`: each op timed alone between two synchronizations).
NV=/opt/torch/.venv/lib/python3.12/site-packages/nvidia
export LD_LIBRARY_PATH=$(ls -d $NV/*/lib 2>/dev/null | tr '\n' ':')$LD_LIBRARY_PATH
S6=$PWD/dev-out/s6
date -u
timeout 120 $S6 bench train --device cuda --dtype bf16 --preset mamba-130m --batch 16 --seqlen 2048 --repeats 1 --profile > $OUT/profile-130m.log 2>&1
timeout 150 $S6 bench train --device cuda --dtype bf16 --recompute full --preset mamba-1.4b --batch 8 --seqlen 2048 --repeats 1 --profile > $OUT/profile-1.4b.log 2>&1
head -30 $OUT/profile-130m.log; head -30 $OUT/profile-1.4b.log
date -u
