#!/bin/bash
# GPU run 19 (session 5): programmatic dependent launch, the RMSNorm-backward and cross-entropy
# kernels (branch norm), training keeping x_proj's output, decode conv one thread per channel.
# Every CUDA test; then s6-base (main at c873413), the new binary, and the new one with S6_PDL=0.
NV=/opt/torch/.venv/lib/python3.12/site-packages/nvidia
export LD_LIBRARY_PATH=$(ls -d $NV/*/lib 2>/dev/null | tr '\n' ':')$LD_LIBRARY_PATH
date -u
for n in test-cuda_train test-cuda_decode test-cuda test-cuda_backward; do
  timeout 150 dev-out/$n --test-threads=1 > $OUT/$n.log 2>&1; echo "$n exit $?" >> $OUT/$n.log
  grep -E "test result|exit" $OUT/$n.log; grep -E "FAILED|panicked" -A8 $OUT/$n.log | head -30
done
S6_PDL=0 timeout 150 dev-out/test-cuda_decode --test-threads=1 2>&1 | grep -E "test result"
for b in s6-base s6 "s6 nopdl"; do
  echo "== $b"; set -- $b; bin=dev-out/$1; env=""; [ "$2" = nopdl ] && export S6_PDL=0 || unset S6_PDL
  timeout 40 $bin bench decode --device cuda --dtype bf16 --preset mamba-130m --batch 1,16,128 --tokens 128 --repeats 3 | grep graph
  timeout 60 $bin bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 1,128 --tokens 64 --repeats 2 | grep graph
  timeout 60 $bin bench train --device cuda --dtype bf16 --preset mamba-130m --batch 16 --seqlen 2048 --repeats 2 | grep train
  [ "$2" = nopdl ] && continue
  timeout 90 $bin bench train --device cuda --dtype bf16 --preset mamba-1.4b --batch 8 --seqlen 2048 --repeats 2 | grep train
  timeout 90 $bin bench prefill --device cuda --dtype bf16 --preset mamba-1.4b --batch 128 --seqlen 2048 --repeats 2 | grep prefill
done
unset S6_PDL
timeout 120 dev-out/s6 bench train --device cuda --dtype bf16 --preset mamba-130m --batch 16 --seqlen 2048 --repeats 2 --profile > $OUT/profile-train-130m.log 2>&1
grep -A24 "^profile" $OUT/profile-train-130m.log
date -u
