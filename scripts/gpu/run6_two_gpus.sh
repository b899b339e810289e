#!/bin/bash
# GPU run 6 (2 GPUs): data-parallel training on 2 GPUs against 1 GPU with the same global batch
# (100 steps, loss curves compared), and tokens/s of a 130M-size model on 1 and 2 GPUs.
# Not run yet: when nvidia-h200-x2 first appeared in `status`, too little device time was left.
# Binaries: dev-out/s6 (cargo build -p s6-cli --features cuda), stripped; $OUT receives the logs.
NV=/opt/torch/.venv/lib/python3.12/site-packages/nvidia
export LD_LIBRARY_PATH=$(ls -d $NV/*/lib 2>/dev/null | tr '\n' ':')$LD_LIBRARY_PATH
export NCCL_NVLS_ENABLE=0
S6=$PWD/dev-out/s6
nvidia-smi -L
cat README.md docs/*.md crates/s6/src/*/*.rs > /tmp/t.txt
A="--data /tmp/t.txt --vocab-size 256 --d-model 64 --n-layer 2 --steps 100 --batch-size 8 --seq-len 128 --eval-every 0"
timeout 60 $S6 train $A --device cuda --out /tmp/one --metrics $OUT/one.jsonl 2>&1 | tail -1
timeout 60 $S6 train $A --gpus 2 --out /tmp/two --metrics $OUT/two.jsonl 2>&1 | tail -2
B="--data /tmp/t.txt --vocab-size 256 --d-model 768 --n-layer 24 --steps 6 --batch-size 16 --seq-len 2048 --dtype tf32 --eval-every 0"
timeout 60 $S6 train $B --device cuda --out /tmp/s1 --metrics $OUT/s1.jsonl 2>&1 | tail -1
timeout 60 $S6 train $B --gpus 2 --out /tmp/s2 --metrics $OUT/s2.jsonl 2>&1 | tail -1
