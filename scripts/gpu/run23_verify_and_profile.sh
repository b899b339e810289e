#!/bin/bash
# GPU run 23 (session 7): every CUDA test on main at b487eb0 (session 5's launch refactors 862cd22
# and d0da30d had not run on a GPU), then where a step of the synthetic tasks' small model goes at
# the paper's selective-copying length (d_model 64, 2 layers, L = 4096): the scan at that shape
# (B = 8 sequences × 128 channels) and a profiled training step.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
run_cuda_tests
CFG=models/induction-heads-s6/config.json
dev-out/s6 bench scan --device cuda --scan-batch 8 --scan-d-inner 128 --scan-seqlen 256,4096 --backward --repeats 5 2>&1 | tail -12
dev-out/s6 bench train --device cuda --config $CFG --batch 8 --seqlen 256,4096 --repeats 3 2>&1 | tail -8
dev-out/s6 bench train --device cuda --config $CFG --batch 8 --seqlen 4096 --profile 2>&1 | tail -40
dev-out/s6 bench decode --device cuda --dtype bf16 --preset mamba-130m --batch 1 --tokens 128 --repeats 3 2>&1 | tail -4
date -u
