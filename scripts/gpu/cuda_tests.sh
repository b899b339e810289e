# Sourced by the GPU run scripts: the NVIDIA libraries of the GPU machine's torch install on the
# library path; `run_cuda_tests`, which runs the four CUDA test binaries in dev-out/ (built
# with `cargo test -p s6 --features cuda --no-run`), logging each into $OUT and printing results
# and failures; `t`, which runs one of them the same way under a label, with one environment
# assignment (or -) and a test filter; `train_bench` and `scan_bwd_bench`, the training and
# scan-backward benchmarks' result lines; and `ncu_scan`, Nsight Compute on one kernel of `s6
# bench scan`. Binaries may come packed (carry limit 64 MiB): a dev-pack/bins.tar.xz of dev-out/
# (`tar cf - dev-out | xz -T2 > dev-pack/bins.tar.xz`) is unpacked.
if [ -f dev-pack/bins.tar.xz ]; then
  python3 -c "import tarfile as t; t.open('dev-pack/bins.tar.xz').extractall(**({'filter': 'fully_trusted'} if hasattr(t, 'fully_trusted_filter') else {}))"
fi
NV=/opt/torch/.venv/lib/python3.12/site-packages/nvidia
export LD_LIBRARY_PATH=$(ls -d $NV/*/lib 2>/dev/null | tr '\n' ':')$LD_LIBRARY_PATH
run_cuda_tests() {
  for n in test-cuda_decode test-cuda test-cuda_backward test-cuda_train; do
    timeout 150 dev-out/$n --test-threads=1 > $OUT/$n.log 2>&1; echo "$n exit $?" >> $OUT/$n.log
    grep -E "test result|exit" $OUT/$n.log; grep -E "FAILED|panicked" -A8 $OUT/$n.log | head -30
  done
}
t() {  # label, env assignment or -, binary, filter...
  local label=$1 env=$2 bin=$3; shift 3
  [ "$env" = - ] && env=X=1
  env $env timeout 150 dev-out/$bin --test-threads=1 "$@" > $OUT/$label.log 2>&1; echo "$label exit $?"
  grep -E "test result" $OUT/$label.log; grep -E "FAILED|panicked" -A8 $OUT/$label.log | head -20
}
train_bench() {  # binary in dev-out/, bench train args...: bf16 training at L = 2048, the result line
  local bin=$1; shift
  timeout 100 dev-out/$bin bench train --device cuda --dtype bf16 --seqlen 2048 --repeats 2 "$@" 2>&1 | grep -E "^train|rror"
}
scan_bwd_bench() {  # bench scan args...: the scan backward at L = 2048, the result lines
  timeout 60 dev-out/s6 bench scan --device cuda --backward --repeats 3 --scan-seqlen 2048 "$@" 2>&1 | grep -E "^scan backward|rror"
}
ncu_scan() {  # name, kernel regex, bench scan args...: the profile into $OUT/ncu-<name>.txt, a summary printed
  local name=$1 k=$2; shift 2
  local ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
  local sections="--section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats --section Occupancy --section SchedulerStats --section InstructionStats"
  timeout 80 $ncu --clock-control none -k regex:$k -s 1 -c 1 $sections dev-out/s6 bench scan --device cuda --repeats 1 "$@" > $OUT/ncu-$name.txt 2>&1
  echo "== $name: $(grep -E 'Duration|Executed Ipc Active|Issue Slots Busy|Achieved Occupancy|Registers Per|Executed Instructions  ' $OUT/ncu-$name.txt | tr -s ' ' | tr '\n' ';')"
  grep -E "Stall|stall" $OUT/ncu-$name.txt | head -12
}
