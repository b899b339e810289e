#!/bin/bash
# GPU run 29 (session 9): the decoding tests of this build; the L2 prefetch rule
# (S6_PREFETCH=0 | small | 1, session 8's run 28) at batch 1 and 8; then Nsight Compute's
# duration and DRAM traffic of every decoding kernel of a few tokens at batch 1 (130M and
# 1.4B, bf16), aggregated per kernel into $OUT/ncu-*.txt. Binary: dev-out/s6.
. "$(dirname "$0")/cuda_tests.sh"
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
timeout 150 dev-out/test-cuda_decode --test-threads=1 2>&1 | grep -E "test result|FAILED|panicked"
for p in 0 small 1; do
  echo "== S6_PREFETCH=$p"
  S6_PREFETCH=$p dev-out/s6 bench decode --device cuda --dtype bf16 --preset mamba-130m --batch 1,8 --tokens 128 --repeats 3 2>&1 | grep graph
  S6_PREFETCH=$p dev-out/s6 bench decode --device cuda --dtype bf16 --preset mamba-1.4b --batch 1,8 --tokens 64 --repeats 2 2>&1 | grep graph
done
date -u
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
echo "ncu: $NCU"
for m in 130m 1.4b; do
  timeout 200 $NCU --clock-control none --graph-profiling node --csv --page raw \
    -k regex:'s6_' --launch-skip 300 --launch-count 400 \
    --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum \
    dev-out/s6 bench decode --device cuda --dtype bf16 --preset mamba-$m --batch 1 --tokens 16 --repeats 1 \
    > $OUT/ncu-$m.csv 2> $OUT/ncu-$m.err
  python3 - $OUT/ncu-$m.csv > $OUT/ncu-$m.txt <<'PY'
import csv, sys, collections
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 5]
h = rows[0]; data = rows[2:]
ki = h.index("Kernel Name"); ti = h.index("gpu__time_duration.sum")
ri = h.index("dram__bytes_read.sum"); wi = h.index("dram__bytes_write.sum")
g = collections.defaultdict(lambda: [0, 0.0, 0.0, 0.0])
def num(s):
    try: return float(s.replace(",", ""))
    except ValueError: return 0.0
for r in data:
    a = g[r[ki]]; a[0] += 1; a[1] += num(r[ti]); a[2] += num(r[ri]); a[3] += num(r[wi])
print("units:", rows[1][ti], rows[1][ri])
tot = sum(a[1] for a in g.values())
for k, a in sorted(g.items(), key=lambda kv: -kv[1][1]):
    print(f"{k:40s} n={a[0]:4d} mean_time={a[1]/a[0]:10.2f} mean_read={a[2]/a[0]:12.1f} mean_write={a[3]/a[0]:10.1f} share={a[1]/tot:.3f}")
PY
  cat $OUT/ncu-$m.txt; tail -3 $OUT/ncu-$m.err
done
date -u
