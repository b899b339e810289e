// Probe (GPU run 43): for the products of decoding at large batches (bf16 inputs, fp32 output and
// accumulation, as `Cuda::gemm_bf16`), time cublasGemmEx's default choice against every algorithm
// cuBLASLt's heuristic offers, with cold weights (a ring of weight copies larger than the L2).
// Build and run on the GPU machine:
//   nvcc -O2 -arch=sm_90 -o /tmp/lt_probe scripts/gpu/lt_probe.cu -lcublasLt -lcublas && /tmp/lt_probe
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cstdio>
#include <vector>

#define CK(x)                                                                          \
    do {                                                                               \
        auto e_ = (x);                                                                 \
        if ((int)e_ != 0) {                                                            \
            printf("error %d at %s:%d\n", (int)e_, __FILE__, __LINE__);                \
            exit(1);                                                                   \
        }                                                                              \
    } while (0)

struct Shape {
    const char* name;
    int n, rows, k;  // out [rows, n] = x [rows, k] · W[n, k]ᵀ
};

int main() {
    const Shape shapes[] = {
        {"1.4B in_proj b128", 8192, 128, 2048}, {"1.4B out_proj b128", 2048, 128, 4096},
        {"1.4B x_proj b128", 160, 128, 4096},   {"1.4B dt_proj b128", 4096, 128, 128},
        {"1.4B head b128", 50280, 128, 2048},   {"130M in_proj b128", 3072, 128, 768},
        {"130M out_proj b128", 768, 128, 1536}, {"130M x_proj b128", 80, 128, 1536},
        {"1.4B in_proj b64", 8192, 64, 2048},   {"1.4B out_proj b64", 2048, 64, 4096},
        {"1.4B in_proj b16", 8192, 16, 2048},   {"1.4B out_proj b16", 2048, 16, 4096},
    };
    cublasHandle_t blas;
    cublasLtHandle_t lt;
    CK(cublasCreate(&blas));
    CK(cublasLtCreate(&lt));
    size_t ws_bytes = 32 << 20;
    void* ws;
    CK(cudaMalloc(&ws, ws_bytes));
    CK(cublasSetWorkspace(blas, ws, ws_bytes));
    cudaStream_t stream;
    CK(cudaStreamCreate(&stream));
    CK(cublasSetStream(blas, stream));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    const int RING = 8, REPS = 40;
    for (const Shape& s : shapes) {
        size_t wcount = (size_t)s.n * s.k;
        // enough copies of W that the ring exceeds 2 x 50 MB of L2
        int ring = (int)((200ull << 20) / (wcount * 2)) + 1;
        if (ring > 64) ring = 64;
        if (ring < RING) ring = RING;
        std::vector<void*> w(ring);
        for (auto& p : w) {
            CK(cudaMalloc(&p, wcount * 2));
            CK(cudaMemset(p, 0x3c, wcount * 2));
        }
        void *x, *out;
        CK(cudaMalloc(&x, (size_t)s.rows * s.k * 2));
        CK(cudaMemset(x, 0x3c, (size_t)s.rows * s.k * 2));
        CK(cudaMalloc(&out, (size_t)s.rows * s.n * 4));
        float alpha = 1.0f, beta = 0.0f;
        auto time = [&](auto&& fn) {
            for (int i = 0; i < 3; i++) fn(i % ring);
            CK(cudaEventRecord(e0, stream));
            for (int i = 0; i < REPS; i++) fn(i % ring);
            CK(cudaEventRecord(e1, stream));
            CK(cudaEventSynchronize(e1));
            float ms;
            CK(cudaEventElapsedTime(&ms, e0, e1));
            return ms * 1000.0f / REPS;
        };
        // cublasGemmEx as s6 calls it: outᵀ [n × rows] = W (op T, k × n) · xᵀ (k × rows).
        float t_def = time([&](int i) {
            CK(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, s.n, s.rows, s.k, &alpha, w[i], CUDA_R_16BF, s.k, x,
                            CUDA_R_16BF, s.k, &beta, out, CUDA_R_32F, s.n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        });
        double bytes = wcount * 2.0 + s.rows * s.k * 2.0 + s.rows * s.n * 4.0;
        printf("%-20s GemmEx default %8.2f us %7.0f GB/s\n", s.name, t_def, bytes / t_def / 1e3);
        cublasLtMatmulDesc_t desc;
        CK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
        cublasOperation_t opT = CUBLAS_OP_T, opN = CUBLAS_OP_N;
        CK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &opT, sizeof(opT)));
        CK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &opN, sizeof(opN)));
        cublasLtMatrixLayout_t la, lb, lc;
        CK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, s.k, s.n, s.k));
        CK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, s.k, s.rows, s.k));
        CK(cublasLtMatrixLayoutCreate(&lc, CUDA_R_32F, s.n, s.rows, s.n));
        cublasLtMatmulPreference_t pref;
        CK(cublasLtMatmulPreferenceCreate(&pref));
        CK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes,
                                                sizeof(ws_bytes)));
        cublasLtMatmulHeuristicResult_t res[32];
        int found = 0;
        CK(cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lb, lc, lc, pref, 32, res, &found));
        float best = 1e30f;
        int best_i = -1;
        for (int a = 0; a < found; a++) {
            float t = time([&](int i) {
                CK(cublasLtMatmul(lt, desc, &alpha, w[i], la, x, lb, &beta, out, lc, out, lc, &res[a].algo, ws,
                                  ws_bytes, stream));
            });
            int algo_id = 0, tile = 0, splitk = 0, stages = 0;
            size_t sz;
            cublasLtMatmulAlgoConfigGetAttribute(&res[a].algo, CUBLASLT_ALGO_CONFIG_ID, &algo_id, sizeof(int), &sz);
            cublasLtMatmulAlgoConfigGetAttribute(&res[a].algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof(int), &sz);
            cublasLtMatmulAlgoConfigGetAttribute(&res[a].algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitk, sizeof(int),
                                                 &sz);
            cublasLtMatmulAlgoConfigGetAttribute(&res[a].algo, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages, sizeof(int),
                                                 &sz);
            printf("  lt[%2d] algo %3d tile %3d splitK %2d stages %3d ws %8zu: %8.2f us %7.0f GB/s\n", a, algo_id, tile,
                   splitk, stages, res[a].workspaceSize, t, bytes / t / 1e3);
            if (t < best) {
                best = t;
                best_i = a;
            }
        }
        printf("%-20s best lt[%d] %.2f us = %.2fx GemmEx default\n", s.name, best_i, best, t_def / best);
        cublasLtMatmulPreferenceDestroy(pref);
        cublasLtMatrixLayoutDestroy(la);
        cublasLtMatrixLayoutDestroy(lb);
        cublasLtMatrixLayoutDestroy(lc);
        cublasLtMatmulDescDestroy(desc);
        for (auto p : w) cudaFree(p);
        cudaFree(x);
        cudaFree(out);
    }
    return 0;
}
