// tools/bench/gemv_variants.cu — batch-1 decode's matrix-vector products
// (TinyLlama's shapes: 22 layers of q, k, v, o, gate, up, down and the
// 32000-row head, 2.2 GB of bf16) replayed as one CUDA graph per kernel
// variant: threads per output row (32, 64, 128) x 16-byte loads in flight per
// thread (1, 2, 4). Prints microseconds per step and GB/s against a
// device-to-device copy. Guides host/src/kernels/fused_kernels.cu's gemv.
//   nvcc -O3 -arch=sm_90 -o /tmp/gemv_variants tools/bench/gemv_variants.cu && /tmp/gemv_variants
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <vector>

#define CHECK(x)                                                                                                                          \
    do {                                                                                                                                  \
        cudaError_t e = (x);                                                                                                              \
        if (e != cudaSuccess) {                                                                                                           \
            std::printf("%s: %s\n", #x, cudaGetErrorString(e));                                                                          \
            return 1;                                                                                                                     \
        }                                                                                                                                 \
    } while (0)

__device__ __forceinline__ float dot8(const uint4 &a, const uint4 &b) {
    const __nv_bfloat162 *p = reinterpret_cast<const __nv_bfloat162 *>(&a), *q = reinterpret_cast<const __nv_bfloat162 *>(&b);
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float2 u = __bfloat1622float2(p[i]), v = __bfloat1622float2(q[i]);
        s += u.x * v.x + u.y * v.y;
    }
    return s;
}

template <int TPR, int U>
__global__ void __launch_bounds__(128) gemv(const __nv_bfloat16 *x, const __nv_bfloat16 *w, __nv_bfloat16 *out, int N, int K) {
    constexpr int RPB = 128 / TPR;
    const int r = blockIdx.x * RPB + threadIdx.x / TPR, t = threadIdx.x % TPR;
    float acc = 0.f;
    if (r < N) {
        const uint4 *wr = reinterpret_cast<const uint4 *>(w + static_cast<size_t>(r) * K), *xr = reinterpret_cast<const uint4 *>(x);
        const int chunks = K / 8;
        int c = t;
        for (; c + (U - 1) * TPR < chunks; c += U * TPR) {
            uint4 wv[U];
#pragma unroll
            for (int u = 0; u < U; ++u) wv[u] = __ldcs(wr + c + u * TPR);
#pragma unroll
            for (int u = 0; u < U; ++u) acc += dot8(wv[u], __ldg(xr + c + u * TPR));
        }
        for (; c < chunks; c += TPR) acc += dot8(__ldcs(wr + c), __ldg(xr + c));
    }
    for (int o = (TPR < 32 ? TPR : 32) / 2; o > 0; o /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if constexpr (TPR > 32) {
        __shared__ float part[4];
        if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = acc;
        __syncthreads();
        if (t == 0 && r < N) {
            float s = 0.f;
            for (int i = 0; i < TPR / 32; ++i) s += part[threadIdx.x / 32 + i];
            out[r] = __float2bfloat16_rn(s);
        }
    } else if (t == 0 && r < N) {
        out[r] = __float2bfloat16_rn(acc);
    }
}

struct Mat {
    __nv_bfloat16 *w;
    int N, K;
};

template <int TPR, int U>
int run(const std::vector<Mat> &mats, const __nv_bfloat16 *x, __nv_bfloat16 *out, double bytes, double copy_gbs) {
    cudaStream_t s;
    CHECK(cudaStreamCreate(&s));
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    constexpr int RPB = 128 / TPR;
    for (const Mat &m : mats) gemv<TPR, U><<<(m.N + RPB - 1) / RPB, 128, 0, s>>>(x, m.w, out, m.N, m.K);
    CHECK(cudaStreamEndCapture(s, &g));
    CHECK(cudaGraphInstantiate(&ge, g, 0));
    for (int i = 0; i < 5; ++i) CHECK(cudaGraphLaunch(ge, s));
    cudaEvent_t a, b;
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    cudaEventRecord(a, s);
    const int reps = 50;
    for (int i = 0; i < reps; ++i) CHECK(cudaGraphLaunch(ge, s));
    cudaEventRecord(b, s);
    CHECK(cudaEventSynchronize(b));
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    const double us = ms * 1000 / reps, gbs = bytes / (us * 1e3);
    std::printf("threads/row %3d, loads in flight %d: %7.0f us/step  %6.0f GB/s  (%.0f%% of copy)\n", TPR, U, us, gbs, 100 * gbs / copy_gbs);
    return 0;
}

int main() {
    const int L = 22, H = 2048, I = 5632, KV = 256, V = 32000;
    std::vector<Mat> mats;
    double bytes = 0;
    auto add = [&](int N, int K) {
        Mat m{nullptr, N, K};
        cudaMalloc(&m.w, size_t(N) * K * 2);
        cudaMemset(m.w, 0, size_t(N) * K * 2);
        mats.push_back(m);
        bytes += double(N) * K * 2;
    };
    for (int l = 0; l < L; ++l) add(H, H), add(KV, H), add(KV, H), add(H, H), add(I, H), add(I, H), add(H, I);
    add(V, H);
    __nv_bfloat16 *x, *out;
    CHECK(cudaMalloc(&x, I * 2));
    CHECK(cudaMemset(x, 0, I * 2));
    CHECK(cudaMalloc(&out, V * 2));
    // copy bandwidth (read + write) over 1 GiB
    void *src, *dst;
    const size_t n = size_t(1) << 30;
    CHECK(cudaMalloc(&src, n));
    CHECK(cudaMalloc(&dst, n));
    cudaEvent_t a, b;
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    cudaMemcpy(dst, src, n, cudaMemcpyDeviceToDevice);
    cudaEventRecord(a);
    for (int i = 0; i < 10; ++i) cudaMemcpy(dst, src, n, cudaMemcpyDeviceToDevice);
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float ms;
    cudaEventElapsedTime(&ms, a, b);
    const double copy_gbs = 2.0 * n * 10 / (ms * 1e6);
    cudaFree(src);
    cudaFree(dst);
    std::printf("%.2f GB of weights; copy %.0f GB/s; roofline %.0f us/step\n", bytes / 1e9, copy_gbs, bytes / copy_gbs / 1e3);
    int rc = 0;
    rc |= run<32, 1>(mats, x, out, bytes, copy_gbs);
    rc |= run<32, 2>(mats, x, out, bytes, copy_gbs);
    rc |= run<32, 4>(mats, x, out, bytes, copy_gbs);
    rc |= run<64, 1>(mats, x, out, bytes, copy_gbs);
    rc |= run<64, 2>(mats, x, out, bytes, copy_gbs);
    rc |= run<64, 4>(mats, x, out, bytes, copy_gbs);
    rc |= run<128, 1>(mats, x, out, bytes, copy_gbs);
    rc |= run<128, 2>(mats, x, out, bytes, copy_gbs);
    rc |= run<128, 4>(mats, x, out, bytes, copy_gbs);
    return rc;
}
