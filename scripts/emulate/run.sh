#!/bin/bash
# Builds and runs the CPU emulation of the scan kernels (scan_emu.cpp; needs g++ with C++20).
set -e
cd "$(dirname "$0")"
g++ -std=c++20 -O2 -pthread -Wno-unknown-pragmas -Wno-attributes -o /tmp/s6_scan_emu scan_emu.cpp
/tmp/s6_scan_emu
