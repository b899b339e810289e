// Included first in every kernel module. S6_PDL_ENTRY() opens every kernel: with programmatic
// dependent launch (Hopper and newer; crates/s6/src/backend/cuda/mod.rs, `launch!`) a kernel may
// be scheduled while the previous one in the stream is still running, hiding the launch latency
// that bounds small-batch decoding. It first lets the next kernel be scheduled too, then waits
// until the previous kernel has finished and its writes are visible: nothing of a kernel reads
// or writes global memory before that wait. Without the launch attribute both are no-ops.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define S6_PDL_ENTRY()                                          \
    do {                                                        \
        asm volatile("griddepcontrol.launch_dependents;");      \
        asm volatile("griddepcontrol.wait;" ::: "memory");      \
    } while (0)
#else
#define S6_PDL_ENTRY() \
    do {               \
    } while (0)
#endif
