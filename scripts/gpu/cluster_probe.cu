// Probe (session 25, for batch-1 decoding): is a decoding step run by one thread-block cluster
// (all of a layer's grid-wide dependencies — in_proj on the residual, x_proj on u, out_proj on y
// — met by cluster barriers and distributed shared memory instead of kernel boundaries) fast
// enough? It needs (1) the DRAM read bandwidth of 8 or 16 SMs, streaming weights they read once
// (130M: ~7.4 MB per layer, 178 MB per token without the LM head), with plain 16-byte loads and
// with bulk copies into shared memory (cp.async.bulk, mbarrier), against the whole GPU's, and
// (1b) the same from L2 (weights another part of the GPU would prefetch ahead of the cluster);
// (2) the cost of a cluster barrier, and of a reduction of one 768-float row over the cluster through
// distributed shared memory (what each grid-wide dependency would cost); (3) against that, what a
// kernel boundary costs in a CUDA graph, with and without programmatic dependent launch.
// Build and run on the GPU machine:
//   nvcc -O3 -arch=sm_90 -o /tmp/cluster_probe scripts/gpu/cluster_probe.cu && /tmp/cluster_probe
#include <cuda_runtime.h>

#include "../../crates/s6/src/backend/cuda/kernels/prelude.cu"

#include <algorithm>
#include <functional>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CK(x)                                                                                    \
    do {                                                                                         \
        cudaError_t e_ = (x);                                                                    \
        if (e_ != cudaSuccess) {                                                                 \
            std::printf("error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__);       \
            std::exit(1);                                                                        \
        }                                                                                        \
    } while (0)

// ---- (1) streaming reads -------------------------------------------------------------------

// Block b reads its contiguous share of n16 16-byte vectors, U loads per thread in flight.
template <int U>
__global__ void read_plain(const uint4* __restrict__ p, size_t n16, unsigned int* out) {
    const size_t per = (n16 + gridDim.x - 1) / gridDim.x;
    const size_t lo = blockIdx.x * per, hi = n16 < lo + per ? n16 : lo + per;
    unsigned int acc = 0;
    for (size_t i = lo + threadIdx.x; i < hi; i += (size_t)blockDim.x * U) {
        uint4 v[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const size_t j = i + (size_t)u * blockDim.x;
            v[u] = j < hi ? __ldcs(p + j) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < U; u++) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
    }
    if (acc == 0x9e3779b9u) out[blockIdx.x] = acc;  // keeps the loads
}

__device__ __forceinline__ unsigned int smem_addr(const void* p) {
    return (unsigned int)__cvta_generic_to_shared(p);
}
__device__ __forceinline__ void mbar_wait(unsigned int bar, unsigned int phase) {
    asm volatile(
        "{\n .reg .pred p;\n"
        "WAIT%=:\n mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n @!p bra WAIT%=;\n}\n" ::"r"(bar),
        "r"(phase)
        : "memory");
}

// Block b reads its share (whole CHUNKs) by bulk copies into STAGES shared buffers, thread 0
// issuing, every thread reading each chunk from shared memory once it has landed.
template <int STAGES, int CHUNK>
__global__ void read_bulk(const unsigned char* __restrict__ p, size_t bytes, unsigned int* out) {
    extern __shared__ __align__(128) unsigned char sm[];
    __shared__ __align__(8) unsigned long long bar[STAGES];
    const size_t nch_all = bytes / CHUNK;
    const size_t per = (nch_all + gridDim.x - 1) / gridDim.x;
    const size_t c0 = blockIdx.x * per, c1 = nch_all < c0 + per ? nch_all : c0 + per;
    const int nch = c1 > c0 ? (int)(c1 - c0) : 0;
    if (threadIdx.x == 0) {
        for (int s = 0; s < STAGES; s++) asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_addr(&bar[s])));
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    auto issue = [&](int c) {
        const int s = c % STAGES;
        const unsigned int b = smem_addr(&bar[s]);
        asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(b), "r"(CHUNK) : "memory");
        asm volatile(
            "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                smem_addr(sm + (size_t)s * CHUNK)),
            "l"(p + (c0 + c) * (size_t)CHUNK), "r"(CHUNK), "r"(b)
            : "memory");
    };
    if (threadIdx.x == 0)
        for (int c = 0; c < STAGES && c < nch; c++) issue(c);
    unsigned int acc = 0;
    for (int c = 0; c < nch; c++) {
        const int s = c % STAGES;
        mbar_wait(smem_addr(&bar[s]), (unsigned int)(c / STAGES) & 1u);
        const uint4* v = reinterpret_cast<const uint4*>(sm + (size_t)s * CHUNK);
        for (int i = threadIdx.x; i < CHUNK / 16; i += blockDim.x) acc ^= v[i].x ^ v[i].y ^ v[i].z ^ v[i].w;
        __syncthreads();  // every thread done with stage s
        if (threadIdx.x == 0 && c + STAGES < nch) issue(c + STAGES);
    }
    if (acc == 0x9e3779b9u) out[blockIdx.x] = acc;
}

// ---- (2) cluster barriers and a row's reduction over the cluster --------------------------

// The number of blocks in this block's cluster (the other primitives are s6's, from prelude.cu).
__device__ __forceinline__ unsigned int cluster_blocks() {
    unsigned int r;
    asm volatile("mov.u32 %0, %%cluster_nctarank;" : "=r"(r));
    return r;
}
// A cluster barrier as s6's kernels take it: arrive with release semantics, wait with acquire.
// (The SIZE argument of prelude.cu's primitives only serves the CPU emulation.)
__device__ __forceinline__ void cluster_sync() {
    s6_cluster_arrive<16>();
    s6_cluster_wait();
}

// `rounds` cluster barriers (arrive.release + wait.acquire).
__global__ void cluster_barriers(int rounds, unsigned int* out) {
    for (int r = 0; r < rounds; r++) cluster_sync();
    if (threadIdx.x == 0 && rounds < 0) out[blockIdx.x] = s6_cluster_rank<16>();
}

// `rounds` all-reductions of a W-float row over the cluster: every block writes its partial row,
// barrier, block j sums columns [j·W/R, (j+1)·W/R) over the R ranks in rank order (distributed
// shared memory) into its `red`, barrier, every block gathers the whole sum from the ranks' `red`,
// barrier (as a decoding step would need before in_proj, x_proj or out_proj).
template <int W>
__global__ void cluster_allreduce(int rounds, unsigned int* out) {
    __shared__ float part[W], red[W], full[W];
    const unsigned int rank = s6_cluster_rank<16>(), R = cluster_blocks();
    const unsigned int per = (W + R - 1) / R;
    float carry = 0.0f;
    for (int r = 0; r < rounds; r++) {
        for (int i = threadIdx.x; i < W; i += blockDim.x) part[i] = carry + (float)(i ^ rank);
        cluster_sync();
        for (unsigned int i = rank * per + threadIdx.x; i < W && i < (rank + 1) * per; i += blockDim.x) {
            float s = 0.0f;
            for (unsigned int j = 0; j < R; j++) s += s6_cluster_map<16>(part, j)[i];
            red[i] = s;
        }
        cluster_sync();
        for (int i = threadIdx.x; i < W; i += blockDim.x) full[i] = s6_cluster_map<16>(red, i / per)[i];
        cluster_sync();
        carry = full[(r * 7 + threadIdx.x) % W] * 1e-30f;
    }
    if (threadIdx.x == 0 && carry == 12345.0f) out[blockIdx.x] = 1;
}

// ---- (3) kernel boundaries --------------------------------------------------------------

__global__ void tiny(unsigned int* out, int pdl) {
    if (pdl) asm volatile("griddepcontrol.launch_dependents;");
    if (pdl) asm volatile("griddepcontrol.wait;" ::: "memory");
    if (threadIdx.x == 0) out[blockIdx.x] += 1;
}

// ---- host ----------------------------------------------------------------------------------

static float time_ms(cudaStream_t st, const std::function<void()>& f, int reps) {
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    f();  // warm
    CK(cudaStreamSynchronize(st));
    std::vector<float> t;
    for (int i = 0; i < reps; i++) {
        CK(cudaEventRecord(a, st));
        f();
        CK(cudaEventRecord(b, st));
        CK(cudaEventSynchronize(b));
        float ms;
        CK(cudaEventElapsedTime(&ms, a, b));
        t.push_back(ms);
    }
    std::sort(t.begin(), t.end());
    CK(cudaEventDestroy(a));
    CK(cudaEventDestroy(b));
    return t[t.size() / 2];
}

template <typename K>
static void launch_cluster(K kernel, int blocks, int threads, int cluster, size_t shared, cudaStream_t st, int rounds,
                           unsigned int* out) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(blocks);
    cfg.blockDim = dim3(threads);
    cfg.dynamicSmemBytes = shared;
    cfg.stream = st;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = cluster;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    CK(cudaLaunchKernelEx(&cfg, kernel, rounds, out));
}

int main() {
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    std::printf("device %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);
    cudaStream_t st;
    CK(cudaStreamCreate(&st));
    unsigned int* out;
    CK(cudaMalloc(&out, 4096 * sizeof(unsigned int)));
    CK(cudaMemset(out, 0, 4096 * sizeof(unsigned int)));

    // (1) A 1 GiB buffer read in 128 MB windows, each window read once per measurement (cold:
    // the L2 holds 50-60 MB and the previous window was another).
    const size_t total = 1ull << 30, window = 128ull << 20;
    unsigned char* buf;
    CK(cudaMalloc(&buf, total));
    CK(cudaMemset(buf, 1, total));
    int next_window = 0;
    auto win = [&]() {
        unsigned char* p = buf + (size_t)(next_window % (int)(total / window)) * window;
        next_window++;
        return p;
    };
    constexpr int STAGES = 4, CHUNK = 32 << 10;
    CK(cudaFuncSetAttribute(read_bulk<STAGES, CHUNK>, cudaFuncAttributeMaxDynamicSharedMemorySize, STAGES * CHUNK));
    std::printf("\n(1) cold streaming reads of %zu MB, GB/s (median of 7)\n", window >> 20);
    std::printf("%8s %22s %22s %22s %22s\n", "blocks", "plain U=4, 256 thr", "plain U=8, 1024 thr", "plain U=16, 512 thr",
                "bulk 4 x 32 KB, 256 thr");
    for (int blocks : {8, 16, 32, 66, 132, 264}) {
        float ms[4];
        ms[0] = time_ms(st, [&] { read_plain<4><<<blocks, 256, 0, st>>>((const uint4*)win(), window / 16, out); }, 7);
        ms[1] = time_ms(st, [&] { read_plain<8><<<blocks, 1024, 0, st>>>((const uint4*)win(), window / 16, out); }, 7);
        ms[2] = time_ms(st, [&] { read_plain<16><<<blocks, 512, 0, st>>>((const uint4*)win(), window / 16, out); }, 7);
        ms[3] = time_ms(
            st, [&] { read_bulk<STAGES, CHUNK><<<blocks, 256, STAGES * CHUNK, st>>>(win(), window, out); }, 7);
        std::printf("%8d", blocks);
        for (float m : ms) std::printf(" %22.0f", window / (m * 1e-3) / 1e9);
        std::printf("\n");
    }
    CK(cudaGetLastError());

    // (1b) The same reads from L2: a 24 MB window read again and again (a layer's weights
    // prefetched into L2 by other blocks ahead of the cluster would be read this way).
    const size_t warm = 24ull << 20;
    std::printf("\n(1b) warm reads of %zu MB (in L2), GB/s (median of 7)\n", warm >> 20);
    for (int blocks : {8, 16, 32, 132}) {
        float ms[4];
        ms[0] = time_ms(st, [&] { read_plain<4><<<blocks, 256, 0, st>>>((const uint4*)buf, warm / 16, out); }, 7);
        ms[1] = time_ms(st, [&] { read_plain<8><<<blocks, 1024, 0, st>>>((const uint4*)buf, warm / 16, out); }, 7);
        ms[2] = time_ms(st, [&] { read_plain<16><<<blocks, 512, 0, st>>>((const uint4*)buf, warm / 16, out); }, 7);
        ms[3] = time_ms(st, [&] { read_bulk<STAGES, CHUNK><<<blocks, 256, STAGES * CHUNK, st>>>(buf, warm, out); }, 7);
        std::printf("%8d", blocks);
        for (float m : ms) std::printf(" %22.0f", warm / (m * 1e-3) / 1e9);
        std::printf("\n");
    }
    CK(cudaGetLastError());

    // (2) cluster barriers and a 768-float (130M's d_model) all-reduction over the cluster.
    std::printf("\n(2) per round, us (median of 7; 2,000 rounds less 0)\n");
    CK(cudaFuncSetAttribute(cluster_barriers, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
    CK(cudaFuncSetAttribute(cluster_allreduce<768>, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
    CK(cudaFuncSetAttribute(cluster_allreduce<2048>, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
    for (int cluster : {8, 16}) {
        for (int threads : {256, 1024}) {
            const int rounds = 2000;
            auto per_round = [&](auto kernel) {
                const float t1 = time_ms(st, [&] { launch_cluster(kernel, cluster, threads, cluster, 0, st, rounds, out); }, 7);
                const float t0 = time_ms(st, [&] { launch_cluster(kernel, cluster, threads, cluster, 0, st, 0, out); }, 7);
                return (t1 - t0) * 1e3f / rounds;
            };
            std::printf("cluster %2d, %4d threads: barrier %.3f, all-reduce of 768 floats (3 barriers) %.3f, of 2048 %.3f\n",
                        cluster, threads, per_round(cluster_barriers), per_round(cluster_allreduce<768>),
                        per_round(cluster_allreduce<2048>));
        }
    }
    CK(cudaGetLastError());

    // (3) a chain of 200 tiny kernels in a CUDA graph, with and without programmatic dependent
    // launch (the stream serialization attribute, as s6 launches its kernels).
    std::printf("\n(3) kernel boundaries in a graph of 200 launches, us per kernel (median of 7)\n");
    for (int blocks : {16, 132}) {
        for (int pdl = 0; pdl < 2; pdl++) {
            cudaGraph_t g;
            cudaGraphExec_t ge;
            CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
            for (int i = 0; i < 200; i++) {
                cudaLaunchConfig_t cfg = {};
                cfg.gridDim = dim3(blocks);
                cfg.blockDim = dim3(256);
                cfg.stream = st;
                cudaLaunchAttribute attr[1];
                attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
                attr[0].val.programmaticStreamSerializationAllowed = 1;
                cfg.attrs = attr;
                cfg.numAttrs = pdl;
                CK(cudaLaunchKernelEx(&cfg, tiny, out, pdl));
            }
            CK(cudaStreamEndCapture(st, &g));
            CK(cudaGraphInstantiate(&ge, g, 0));
            const float ms = time_ms(st, [&] { CK(cudaGraphLaunch(ge, st)); }, 7);
            std::printf("%3d blocks, PDL %d: %.3f\n", blocks, pdl, ms * 1e3f / 200);
            CK(cudaGraphExecDestroy(ge));
            CK(cudaGraphDestroy(g));
        }
    }
    CK(cudaDeviceSynchronize());
    std::printf("\ndone\n");
    return 0;
}
