#!/bin/bash
# GPU run 96 (session 25): scripts/gpu/cluster_probe.cu — whether batch-1 decoding could run a
# layer in one thread-block cluster: the DRAM bandwidth of 8 to 264 blocks streaming cold weights
# (plain loads and bulk copies), the cost of a cluster barrier and of a row's all-reduction over
# 8 or 16 blocks through distributed shared memory, and of a kernel boundary in a CUDA graph.
date -u; nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
nvcc -O3 -arch=sm_90 -o /tmp/cluster_probe scripts/gpu/cluster_probe.cu 2>&1 | tail -3
timeout 120 /tmp/cluster_probe 2>&1 | tee $OUT/cluster_probe.txt
date -u
