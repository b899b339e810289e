"""Sums an Nsight Compute CSV (`ncu --csv --page raw --metrics gpu__time_duration.sum,
dram__bytes_read.sum,dram__bytes_write.sum`) per kernel name and grid: calls, registers per
thread, mean duration (µs), mean DRAM bytes read and written (MB), the DRAM rate (GB/s) and
the share of the total time. Used by the GPU run scripts."""
import collections
import csv
import sys

rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 5]
h, data = rows[0], rows[2:]
col = {name: h.index(name) for name in h}


def num(s):
    try:
        return float(s.replace(",", ""))
    except ValueError:
        return 0.0


g = collections.defaultdict(lambda: [0, 0.0, 0.0, 0.0, ""])
for r in data:
    a = g[(r[col["Kernel Name"]], r[col["Grid Size"]])]
    a[0] += 1
    a[1] += num(r[col["gpu__time_duration.sum"]])
    a[2] += num(r[col["dram__bytes_read.sum"]])
    a[3] += num(r[col["dram__bytes_write.sum"]])
    a[4] = r[col["launch__registers_per_thread"]] if "launch__registers_per_thread" in col else "?"
tot = sum(a[1] for a in g.values())
print(f"{'kernel':28s} {'grid':>14s} {'calls':>5s} {'regs':>4s} {'µs':>8s} {'MB read':>8s} {'MB wr':>7s} {'GB/s':>6s} share")
for (k, grid), a in sorted(g.items(), key=lambda kv: -kv[1][1]):
    n, t, rd, wr = a[0], a[1] / a[0], a[2] / a[0], a[3] / a[0]
    print(f"{k:28s} {grid:>14s} {n:5d} {a[4]:>4s} {t / 1e3:8.2f} {rd / 1e6:8.2f} {wr / 1e6:7.3f} "
          f"{(rd + wr) / t if t else 0:6.0f} {a[1] / tot:.3f}")
