#!/bin/bash
# GPU run 20 (session 5): every CUDA test after the RMSNorm-backward launch fix (its dynamic shared
# memory left room for the static one); training side by side: s6-base (c873413), new, new S6_PDL=0.
NV=/opt/torch/.venv/lib/python3.12/site-packages/nvidia
export LD_LIBRARY_PATH=$(ls -d $NV/*/lib 2>/dev/null | tr '\n' ':')$LD_LIBRARY_PATH
date -u
for n in test-cuda_train test-cuda_decode test-cuda test-cuda_backward; do
  timeout 150 dev-out/$n --test-threads=1 > $OUT/$n.log 2>&1; echo "$n exit $?" >> $OUT/$n.log
  grep -E "test result|exit" $OUT/$n.log; grep -E "FAILED|panicked" -A8 $OUT/$n.log | head -30
done
for b in s6-base s6 "s6 nopdl"; do
  echo "== $b"; set -- $b; bin=dev-out/$1; [ "$2" = nopdl ] && export S6_PDL=0 || unset S6_PDL
  timeout 60 $bin bench train --device cuda --dtype bf16 --preset mamba-130m --batch 16 --seqlen 2048 --repeats 3 | grep train
  timeout 90 $bin bench train --device cuda --dtype bf16 --preset mamba-1.4b --batch 8 --seqlen 2048 --repeats 2 | grep train
done
unset S6_PDL
timeout 90 dev-out/s6 bench train --device cuda --dtype bf16 --recompute full --preset mamba-1.4b --batch 8 --seqlen 2048 --repeats 2 | grep train
date -u
