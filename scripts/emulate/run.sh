#!/bin/bash
# Builds and runs the CPU emulations of the scan kernels (scan_emu.cpp: the forward against an
# f64 reference; scan_bwd_emu.cpp: the backward against finite differences) and of the conv and
# norm kernels of prefill's bf16 storage (bf16_storage_emu.cpp: against the f32 ones), and of the
# fused decoding step of a block with its grid barriers and in one cluster (layer_step_emu.cpp:
# every block at once, against an f64 reference), and of the decoding scan steps (mixer_step_emu.cpp: the large-batch
# one and the batch-1 one with x_proj over clusters of blocks, against an f64 reference). Needs g++
# (C++20).
set -e
cd "$(dirname "$0")"
for t in scan_emu scan_bwd_emu bf16_storage_emu layer_step_emu mixer_step_emu; do
  g++ -std=c++20 -O2 -pthread -Wno-unknown-pragmas -Wno-attributes -o /tmp/s6_$t $t.cpp
  /tmp/s6_$t
done
# The scan backward once more with its chunk loads' 64-bit offsets, which only sizes past 2^31
# elements take on a GPU.
g++ -std=c++20 -O2 -pthread -Wno-unknown-pragmas -Wno-attributes -DS6_SCAN_BWD_WIDE_ONLY -o /tmp/s6_scan_bwd_emu_wide scan_bwd_emu.cpp
/tmp/s6_scan_bwd_emu_wide
