#!/bin/bash
# GPU run 46 (session 11): which products the tensor-core kernel should take when decoding
# (S6_MMA_SHAPES: n = few columns, x_proj; k = a short k, dt_proj; both) and its k-steps per warp
# (S6_MMA_SPW), side by side with dev-out/s6-prev (main at d7861cd).
# (S6_MMA_SHAPES existed only in the builds of runs 46 and 47.)
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
for cfgs in "prev n k both n:2 both:2" "prev n both:2"; do
  for cfg in $cfgs; do
    shapes=${cfg%%:*}; spw=${cfg#*:}; [ "$spw" = "$cfg" ] && spw=
    bin=s6; [ "$cfg" = prev ] && bin=s6-prev
    echo "== $cfg"
    S6_MMA_SHAPES=$shapes S6_MMA_SPW=$spw dev-out/$bin bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 16,64,128 --tokens 64 --repeats 1 2>&1 | grep graph
    S6_MMA_SHAPES=$shapes S6_MMA_SPW=$spw dev-out/$bin bench decode --device cuda --dtype bf16 --preset mamba-130m --batch 16,64,128 --tokens 128 --repeats 2 2>&1 | grep graph
  done
  date -u
done
