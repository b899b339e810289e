#!/usr/bin/env python3
"""Compile s6's CUDA kernel module with NVRTC for sm_90, no GPU needed, and check that every
kernel name the backend loads (crates/s6/src/backend/cuda/mod.rs: KERNELS, GEMV_KERNELS,
GEMV_NORM_KERNELS) is an entry of the PTX. For catching kernel compile errors before a device call.

Setup once: python3 -m venv /tmp/venv && /tmp/venv/bin/pip install "nvidia-cuda-nvrtc==13.0.*"
Run: /tmp/venv/bin/python scripts/nvrtc_check.py [--ptx FILE] [-DNAME=VALUE ...]   (sets the library path itself;
--ptx also writes the PTX, to read what a kernel compiles to)
"""
import ctypes, glob, os, re, sys

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
libdir = glob.glob(os.path.join(sys.prefix, "lib", "python3*", "site-packages", "nvidia", "cu13", "lib"))
if not libdir:
    sys.exit("libnvrtc not found: install nvidia-cuda-nvrtc==13.0.* into this Python's environment")
if libdir[0] not in os.environ.get("LD_LIBRARY_PATH", ""):
    # libnvrtc loads its builtins library through the loader's search path.
    os.environ["LD_LIBRARY_PATH"] = libdir[0] + ":" + os.environ.get("LD_LIBRARY_PATH", "")
    os.execv(sys.executable, [sys.executable] + sys.argv)
lib = ctypes.CDLL(os.path.join(libdir[0], "libnvrtc.so.13"))

mod_rs = open(os.path.join(root, "crates/s6/src/backend/cuda/mod.rs")).read()
sources = mod_rs[mod_rs.index("const KERNEL_SOURCES"):]
sources = sources[: sources.index("];")]
files = ["prelude.cu"] + re.findall(r'include_str!\("kernels/([a-z_0-9]+\.cu)"\)', sources)
kdir = os.path.join(root, "crates/s6/src/backend/cuda/kernels")
src = "\n".join(open(os.path.join(kdir, f)).read() for f in files).encode()

prog = ctypes.c_void_p()
assert lib.nvrtcCreateProgram(ctypes.byref(prog), src, b"s6.cu", 0, None, None) == 0
# -DNAME=VALUE arguments pass through (the backend defines some from the environment).
flags = [b"--gpu-architecture=sm_90"] + [a.encode() for a in sys.argv[1:] if a.startswith("-D")]
opts = (ctypes.c_char_p * len(flags))(*flags)
rc = lib.nvrtcCompileProgram(prog, len(flags), opts)
n = ctypes.c_size_t()
lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
log = ctypes.create_string_buffer(n.value)
lib.nvrtcGetProgramLog(prog, log)
if log.value.strip():
    print(log.value.decode())
if rc != 0:
    sys.exit(f"NVRTC failed (code {rc}) on {', '.join(files)}")
lib.nvrtcGetPTXSize(prog, ctypes.byref(n))
ptx = ctypes.create_string_buffer(n.value)
lib.nvrtcGetPTX(prog, ptx)
entries = set(re.findall(r"\.entry (\w+)\(", ptx.value.decode()))
if "--ptx" in sys.argv:
    open(sys.argv[sys.argv.index("--ptx") + 1], "wb").write(ptx.value)

names = []
for table in ["const KERNELS", "const GEMV_KERNELS", "const GEMV_NORM_KERNELS"]:
    i = mod_rs.index(table)
    names += re.findall(r'"(s6_[a-z0-9_]+)"', mod_rs[i : mod_rs.index("];", i)])
missing = [k for k in names if k not in entries]
if missing:
    sys.exit(f"kernels the backend loads but the module does not define: {missing}")
print(f"ok: {len(files)} sources, {len(entries)} kernels, all {len(names)} names the backend loads present")
