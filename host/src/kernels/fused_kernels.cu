// CUDA kernels behind the host's fused operators; see fused_kernels.hpp.
// Arithmetic follows ATen's: values load as float, every intermediate that
// ATen's operator chain stores in the tensor's dtype is rounded to it here
// too (round-to-nearest-even, as c10::BFloat16 and c10::Half do).
#include "kernels/fused_kernels.hpp"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>

namespace mango::kernels {
namespace {

__device__ __forceinline__ float load(float v) { return v; }
__device__ __forceinline__ float load(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float load(__half v) { return __half2float(v); }

template <class T>
__device__ __forceinline__ T store(float v);
template <>
__device__ __forceinline__ float store<float>(float v) {
    return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 store<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ __half store<__half>(float v) {
    return __float2half_rn(v);
}
// v rounded to T and back: what an intermediate tensor of dtype T holds.
template <class T>
__device__ __forceinline__ float round_to(float v) {
    return load(store<T>(v));
}

void check_launch(const char *what) {
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": CUDA kernel launch failed: " + cudaGetErrorString(e));
}

// Programmatic dependent launch (sm_90 on): each kernel lets the next one in
// its stream start as soon as all of its own blocks are running, and waits
// for the previous kernel's results before it reads its inputs or writes
// anything — so a kernel's launch overlaps the previous kernel's last wave,
// and so do the first weight loads of a GEMV and the gain's of an RMSNorm
// where the host says the tensor is a checkpoint weight (fused_ops.cpp's
// is_weight: no kernel writes it while a model runs). Both instructions are
// no-ops for a kernel launched without the attribute (older GPUs, kernels
// built for them, MANGO_PDL=0).
__device__ __forceinline__ void let_next_kernel_start() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void wait_for_previous_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Whether `kernel` launches with programmatic stream serialisation on the
// current device: compute capability 9.0 or later and the kernel's code
// built for sm_90 or later (a kernel JIT-compiled from older PTX has no
// griddepcontrol.wait in it and must not start early), unless MANGO_PDL=0.
// A failed query answers false and clears the error it set.
bool programmatic_launch(const void *kernel) {
    static const bool off = [] {
        const char *e = std::getenv("MANGO_PDL");
        return e && std::string(e) == "0";
    }();
    if (off) return false;
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess) return (void)cudaGetLastError(), false;
    static std::mutex mutex;
    static std::map<std::pair<const void *, int>, bool> answers;
    const std::lock_guard<std::mutex> lock(mutex);
    const auto key = std::make_pair(kernel, device);
    if (auto it = answers.find(key); it != answers.end()) return it->second;
    int major = 0;
    cudaFuncAttributes attributes{};
    bool ok = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
              cudaFuncGetAttributes(&attributes, kernel) == cudaSuccess;
    if (!ok) (void)cudaGetLastError();
    ok = ok && major >= 9 && attributes.ptxVersion >= 90;
    answers.emplace(key, ok);
    return ok;
}

// kernel<<<grid, block, shared, stream>>>(args...), with the programmatic
// launch attribute where programmatic_launch() says; a failure is left for
// check_launch (cudaGetLastError), as with <<< >>>.
template <class... Params, class... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared, Stream stream, Args... args) {
#if CUDART_VERSION >= 11080  // cudaLaunchKernelEx and the attribute
    bool early = programmatic_launch(reinterpret_cast<const void *>(kernel));
#if CUDART_VERSION < 12030  // graphs take programmatic edges from CUDA 12.3 on
    cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
    if (early && (cudaStreamIsCapturing(stream, &capturing) != cudaSuccess || capturing != cudaStreamCaptureStatusNone))
        early = false, (void)cudaGetLastError();
#endif
    cudaLaunchConfig_t config = {};
    config.gridDim = grid, config.blockDim = block, config.dynamicSmemBytes = shared, config.stream = stream;
    cudaLaunchAttribute attribute[1];
    attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute[0].val.programmaticStreamSerializationAllowed = 1;
    config.attrs = attribute, config.numAttrs = early ? 1 : 0;
    (void)cudaLaunchKernelEx(&config, kernel, static_cast<Params>(args)...);
#else
    kernel<<<grid, block, shared, stream>>>(static_cast<Params>(args)...);
#endif
}

unsigned blocks_for(int64_t n, unsigned threads) { return static_cast<unsigned>((n + threads - 1) / threads); }

template <class F>
void by_dtype(Dtype dtype, F &&f) {
    switch (dtype) {
    case Dtype::f32: f(float{}); break;
    case Dtype::bf16: f(__nv_bfloat16{}); break;
    case Dtype::f16: f(__half{}); break;
    }
}

// ---- RMSNorm: one block per row -------------------------------------------------
constexpr unsigned kNormThreads = 256;

__device__ __forceinline__ float block_sum(float sum) {
    __shared__ float warp_sums[kNormThreads / 32];
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = sum;
    __syncthreads();
    if (threadIdx.x < 32) {
        sum = threadIdx.x < blockDim.x / 32 ? warp_sums[threadIdx.x] : 0.f;
        for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
        if (threadIdx.x == 0) warp_sums[0] = sum;
    }
    __syncthreads();
    return warp_sums[0];
}

template <class T>
__global__ void rms_norm_kernel(const T *x, const T *w, T *out, int64_t n, float eps) {
    let_next_kernel_start();
    wait_for_previous_kernel();
    const T *row = x + blockIdx.x * n;
    T *o = out + blockIdx.x * n;
    float sum = 0.f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = load(row[i]);
        sum += v * v;
    }
    const float inv = rsqrtf(block_sum(sum) / static_cast<float>(n) + eps);
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) o[i] = store<T>(load(w[i]) * round_to<T>(load(row[i]) * inv));
}

// The same over 16-byte vectors (n a multiple of 16 / sizeof(T), rows 16-byte aligned): a row of a few
// thousand elements is one load per thread, not a chain of dependent ones. With `res`, the row is first
// x + res (rounded to T, as ATen's add), written to sum_out and normalised: the residual stream's add and
// the next norm in one pass.
template <class T>
__global__ void rms_norm_vec_kernel(const T *x, const T *res, const T *w, T *sum_out, T *out, int64_t n, float eps, bool gain_early) {
    let_next_kernel_start();
    constexpr int V = 16 / sizeof(T);
    const int64_t base = blockIdx.x * n;
    const uint4 *xr = reinterpret_cast<const uint4 *>(x + base), *rr = res ? reinterpret_cast<const uint4 *>(res + base) : nullptr;
    uint4 *sr = res ? reinterpret_cast<uint4 *>(sum_out + base) : nullptr, *o = reinterpret_cast<uint4 *>(out + base);
    const uint4 *wv = reinterpret_cast<const uint4 *>(w);
    const int64_t chunks = n / V, mine = threadIdx.x;  // `mine`: the thread's first vector, kept in registers
    const uint4 zero = make_uint4(0, 0, 0, 0);
    if (!gain_early) wait_for_previous_kernel();
    const uint4 g_mine = mine < chunks ? wv[mine] : zero;  // a checkpoint's gain: loaded before the wait
    if (gain_early) wait_for_previous_kernel();
    uint4 p_mine = zero;
    float sq = 0.f;
#pragma unroll 4
    for (int64_t c = mine; c < chunks; c += blockDim.x) {
        uint4 p = xr[c];
        T *pt = reinterpret_cast<T *>(&p);
        if (rr) {
            const uint4 b = rr[c];
            const T *bt = reinterpret_cast<const T *>(&b);
#pragma unroll
            for (int i = 0; i < V; ++i) pt[i] = store<T>(load(pt[i]) + load(bt[i]));
            sr[c] = p;
        }
#pragma unroll
        for (int i = 0; i < V; ++i) {
            const float v = load(pt[i]);
            sq += v * v;
        }
        if (c == mine) p_mine = p;
    }
    const float inv = rsqrtf(block_sum(sq) / static_cast<float>(n) + eps);  // block_sum's barrier also orders the sums' writes
    const uint4 *src = rr ? sr : xr;
#pragma unroll 4
    for (int64_t c = mine; c < chunks; c += blockDim.x) {  // a row of up to blockDim vectors: no load after the sum
        const uint4 p = c == mine ? p_mine : src[c], g = c == mine ? g_mine : wv[c];
        const T *pt = reinterpret_cast<const T *>(&p), *gt = reinterpret_cast<const T *>(&g);
        uint4 r;
        T *rt = reinterpret_cast<T *>(&r);
#pragma unroll
        for (int i = 0; i < V; ++i) rt[i] = store<T>(load(gt[i]) * round_to<T>(load(pt[i]) * inv));
        o[c] = r;
    }
}

struct CacheWrites {
    CacheEntry entry[2];
    int64_t first_end = 0;  // threads [0, first_end) write entry 0, the rest entry 1
};

template <class E>
__global__ void cache_write_kernel(CacheWrites w, int64_t n, const int64_t *at) {
    let_next_kernel_start();
    wait_for_previous_kernel();
    int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (i >= n) return;
    const bool second = i >= w.first_end;
    const CacheEntry &c = w.entry[second ? 1 : 0];
    if (second) i -= w.first_end;
    const int64_t d = i % c.D, h = (i / c.D) % c.H, b = i / (c.D * c.H);
    static_cast<E *>(c.slot)[b * c.slot_stride[0] + h * c.slot_stride[1] + *at * c.slot_stride[2] + d * c.slot_stride[3]] =
        static_cast<const E *>(c.value)[b * c.value_stride[0] + h * c.value_stride[1] + d * c.value_stride[3]];
}

// ---- silu(g) * u ----------------------------------------------------------------
// silu(g) rounded to T (ATen's silu), times u, rounded (ATen's mul).
template <class T>
__device__ __forceinline__ T silu_times(float g, float u) {
    return store<T>(round_to<T>(g / (1.f + expf(-g))) * u);
}

template <class T>
__global__ void silu_mul_kernel(const T *g, int64_t g_row, const T *u, int64_t u_row, T *out, int64_t rows, int64_t n) {
    let_next_kernel_start();
    wait_for_previous_kernel();
    const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (i >= rows * n) return;
    const int64_t r = i / n, c = i % n;
    out[i] = silu_times<T>(load(g[r * g_row + c]), load(u[r * u_row + c]));
}

// ---- rotary embedding of q and k -------------------------------------------------
// cos and sin of `angle` times `factor`, each rounded to T, as transformers' rotary tables hold them.
template <class T>
__device__ __forceinline__ void rope_cos_sin(float angle, float factor, float &c, float &s) {
    c = round_to<T>(__fmul_rn(cosf(angle), factor));
    s = round_to<T>(__fmul_rn(sinf(angle), factor));
}

// x * c + partner * s with each product rounded to T, as ATen's mul and add
// do (__fmul_rn / __fadd_rn: no fused multiply-add).
template <class T>
__device__ __forceinline__ T rotate_one(float x, float partner, float c, float s) {
    return store<T>(__fadd_rn(round_to<T>(__fmul_rn(x, c)), round_to<T>(__fmul_rn(partner, s))));
}

template <class T>
__device__ void rope_one(const Strided4 &t, int64_t idx, const int64_t *pos, int64_t psb, int64_t pst, const float *inv_freq, float factor) {
    const int64_t D = t.size[3], T_ = t.size[2], H = t.size[1];
    const int64_t d = idx % D, tt = (idx / D) % T_, h = (idx / (D * T_)) % H, b = idx / (D * T_ * H);
    const int64_t half = D / 2, j = d % half;
    const float angle = static_cast<float>(pos[b * psb + tt * pst]) * inv_freq[j];
    float c, s;
    rope_cos_sin<T>(angle, factor, c, s);
    const T *x = static_cast<const T *>(t.x);
    const int64_t base = b * t.stride[0] + h * t.stride[1] + tt * t.stride[2];
    const float v = load(x[base + d * t.stride[3]]);
    const float partner = d < half ? -load(x[base + (d + half) * t.stride[3]]) : load(x[base + (d - half) * t.stride[3]]);
    static_cast<T *>(t.out)[idx] = rotate_one<T>(v, partner, c, s);
}

template <class T>
__global__ void rope_kernel(Strided4 q, Strided4 k, int64_t nq, int64_t nk, const int64_t *pos, int64_t psb, int64_t pst,
                            const float *inv_freq, float factor) {
    let_next_kernel_start();
    wait_for_previous_kernel();
    const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (i < nq)
        rope_one<T>(q, i, pos, psb, pst, inv_freq, factor);
    else if (i < nq + nk)
        rope_one<T>(k, i - nq, pos, psb, pst, inv_freq, factor);
}

// ---- attention mask bias ---------------------------------------------------------
template <class T>
__global__ void mask_bias_kernel(const int64_t *padding, int64_t psb, int64_t pss, int64_t B, int64_t T_, int64_t S, int64_t window,
                                 float lowest, T *out) {
    let_next_kernel_start();
    wait_for_previous_kernel();
    const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (i >= B * T_ * S) return;
    const int64_t s = i % S, t = (i / S) % T_, b = i / (S * T_);
    const int64_t q = S - T_ + t;
    const bool allowed = s <= q && (window <= 0 || s > q - window) && padding[b * psb + s * pss] != 0;
    out[i] = store<T>(allowed ? 0.f : lowest);
}

// ---- matrix-vector products for decoding ------------------------------------------
constexpr unsigned kGemvWarps = 4;

// The dot product of the 8 values of T (bf16 or f16) in each of two 16-byte loads.
template <class T>
__device__ __forceinline__ float dot8(const uint4 &a, const uint4 &b) {
    static_assert(sizeof(T) == 2, "dot8 reads 8 two-byte values per 16 bytes");
    const T *x = reinterpret_cast<const T *>(&a), *y = reinterpret_cast<const T *>(&b);
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i) s += load(x[i]) * load(y[i]);
    return s;
}

// The per-thread partial sums of R weight rows (two 16-byte loads of each
// row at a time, the next two issued before their products) against M input
// rows, summed over the block into out[r][m] (every thread gets them). For
// R = 1 the order of the sums is the plain product's. early: the first
// weight loads go out before the wait for the previous kernel.
template <class T, int M, int R>
__device__ __forceinline__ void gemv_dots(const uint4 *const (&wrow)[R], const T *x, int64_t K, bool early, float (&out)[R][M]) {
    constexpr int64_t kT = kGemvWarps * 32;
    const int64_t chunks = K / 8;
    float acc[R][M];
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int m = 0; m < M; ++m) acc[r][m] = 0.f;
    int64_t c = threadIdx.x;
    uint4 w0[R], w1[R];  // weights stream through once: evict-first loads
    if (!early) wait_for_previous_kernel();
    if (c + kT < chunks) {
#pragma unroll
        for (int r = 0; r < R; ++r) w0[r] = __ldcs(wrow[r] + c), w1[r] = __ldcs(wrow[r] + c + kT);
    }
    if (early) wait_for_previous_kernel();  // x is the previous kernel's output, checkpoint weights are not
    for (; c + kT < chunks; c += 2 * kT) {
        const int64_t next = c + 2 * kT;
        uint4 n0[R], n1[R];  // the next pair's loads go out before this pair's products
        if (next + kT < chunks) {
#pragma unroll
            for (int r = 0; r < R; ++r) n0[r] = __ldcs(wrow[r] + next), n1[r] = __ldcs(wrow[r] + next + kT);
        }
#pragma unroll
        for (int m = 0; m < M; ++m) {
            const uint4 *xr = reinterpret_cast<const uint4 *>(x + m * K);
            const uint4 x0 = __ldg(xr + c), x1 = __ldg(xr + c + kT);
#pragma unroll
            for (int r = 0; r < R; ++r) acc[r][m] += dot8<T>(w0[r], x0) + dot8<T>(w1[r], x1);
        }
        if (next + kT < chunks) {
#pragma unroll
            for (int r = 0; r < R; ++r) w0[r] = n0[r], w1[r] = n1[r];
        }
    }
    if (c < chunks) {
        uint4 w0[R];
#pragma unroll
        for (int r = 0; r < R; ++r) w0[r] = __ldcs(wrow[r] + c);
#pragma unroll
        for (int m = 0; m < M; ++m) {
            const uint4 x0 = __ldg(reinterpret_cast<const uint4 *>(x + m * K) + c);
#pragma unroll
            for (int r = 0; r < R; ++r) acc[r][m] += dot8<T>(w0[r], x0);
        }
    }
    __shared__ float partial[kGemvWarps][R * M];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int m = 0; m < M; ++m) {
            float v = acc[r][m];
            for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
            if (lane == 0) partial[warp][r * M + m] = v;
        }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int m = 0; m < M; ++m) {
            float v = 0.f;
#pragma unroll
            for (int i = 0; i < static_cast<int>(kGemvWarps); ++i) v += partial[i][r * M + m];
            out[r][m] = v;
        }
}

// What a GEMV launch computes after its products (fused_kernels.hpp's Gemv* comments).
enum class Epilogue { plain, residual, silu_mul, rope };

struct GemvLaunch {
    const void *x;
    int64_t K;
    GemvWeight w[kGemvMaxWeights];
    const void *residual;  // Epilogue::residual: [rows, N] contiguous
    GemvRope rope;         // Epilogue::rope
    bool weights_early;    // the weights' first loads go out before the wait (checkpoint weights)
};

template <class T>
__device__ __forceinline__ float with_bias(float v, const void *bias, int64_t n) {
    return bias ? v + load(static_cast<const T *>(bias)[n]) : v;
}

// One block per output column (the columns of all weights in a row), or per
// pair of columns where the epilogue needs two (gate and up; a rotary pair):
// its 128 threads split K, each with two 16-byte loads per weight row at a
// time (the best of tools/bench/gemv_variants.cu's layouts on an H100: 73%
// of copy bandwidth over a decode step's products) and the next two issued
// before their products, then the block sums.
template <class T, int M, Epilogue E>
__global__ void __launch_bounds__(kGemvWarps * 32) gemv_kernel(GemvLaunch a) {
    let_next_kernel_start();  // gemv_dots waits for x (after the first weight loads when a.weights_early)
    const T *x = static_cast<const T *>(a.x);
    const int64_t K = a.K;
    int64_t n = blockIdx.x;
    if constexpr (E == Epilogue::silu_mul) {  // column n of gate (w[0]) and of up (w[1]) -> w[0].out
        const uint4 *const rows[2] = {reinterpret_cast<const uint4 *>(static_cast<const T *>(a.w[0].w) + n * K),
                                      reinterpret_cast<const uint4 *>(static_cast<const T *>(a.w[1].w) + n * K)};
        float v[2][M];
        gemv_dots<T, M, 2>(rows, x, K, a.weights_early, v);
        if (threadIdx.x < M) {
            const int m = threadIdx.x;
            const float g = round_to<T>(with_bias<T>(v[0][m], a.w[0].bias, n)), u = round_to<T>(with_bias<T>(v[1][m], a.w[1].bias, n));
            static_cast<T *>(a.w[0].out)[m * a.w[0].N + n] = silu_times<T>(g, u);
        }
        return;
    }
    // which weight: the blocks of w[0] come first, then w[1]'s, then w[2]'s; rotated weights (the first rope.rotated) take a block per pair
    const int64_t per0 = E == Epilogue::rope && a.rope.rotated > 0 ? a.w[0].N / 2 : a.w[0].N;
    const int64_t per1 = E == Epilogue::rope && a.rope.rotated > 1 ? a.w[1].N / 2 : a.w[1].N;
    int which = 0;
    if (n >= per0) {
        n -= per0, which = 1;
        if (n >= per1) n -= per1, which = 2;
    }
    GemvWeight g = a.w[0];  // by value, field by field: no dynamic indexing into the parameters
    if (which == 1) g.w = a.w[1].w, g.bias = a.w[1].bias, g.out = a.w[1].out, g.N = a.w[1].N;
    if (which == 2) g.w = a.w[2].w, g.bias = a.w[2].bias, g.out = a.w[2].out, g.N = a.w[2].N;
    if constexpr (E == Epilogue::rope) {
        if (which < a.rope.rotated) {  // pair n: head h, rotary index j: columns h D + j and h D + j + D / 2
            const int64_t D = a.rope.head_dim, half = D / 2, j = n % half, lo = (n / half) * D + j, hi = lo + half;
            const uint4 *const rows[2] = {reinterpret_cast<const uint4 *>(static_cast<const T *>(g.w) + lo * K),
                                          reinterpret_cast<const uint4 *>(static_cast<const T *>(g.w) + hi * K)};
            float v[2][M];
            gemv_dots<T, M, 2>(rows, x, K, a.weights_early, v);
            if (threadIdx.x < M) {
                const int m = threadIdx.x;
                const int64_t b = m / a.rope.T, t = m % a.rope.T;
                const float angle = static_cast<float>(a.rope.positions[b * a.rope.pos_stride_b + t * a.rope.pos_stride_t]) * a.rope.inv_freq[j];
                float c, s;
                rope_cos_sin<T>(angle, a.rope.factor, c, s);
                const float x_lo = round_to<T>(with_bias<T>(v[0][m], g.bias, lo)), x_hi = round_to<T>(with_bias<T>(v[1][m], g.bias, hi));
                T *out = static_cast<T *>(g.out) + m * g.N;
                out[lo] = rotate_one<T>(x_lo, -x_hi, c, s);
                out[hi] = rotate_one<T>(x_hi, x_lo, c, s);
            }
            return;
        }
    }
    const uint4 *const rows[1] = {reinterpret_cast<const uint4 *>(static_cast<const T *>(g.w) + n * K)};
    float v[1][M];
    gemv_dots<T, M, 1>(rows, x, K, a.weights_early, v);
    if (threadIdx.x < M) {
        const int m = threadIdx.x;
        const float y = with_bias<T>(v[0][m], g.bias, n);
        T *out = static_cast<T *>(g.out) + m * g.N + n;
        if constexpr (E == Epilogue::residual)  // the product rounds to T, then ATen's add
            *out = store<T>(load(static_cast<const T *>(a.residual)[m * g.N + n]) + round_to<T>(y));
        else
            *out = store<T>(y);
    }
}

template <class T, Epilogue E>
void gemv_rows(int64_t rows, const GemvLaunch &a, unsigned blocks, Stream stream) {
    switch (rows) {
    case 1: launch(gemv_kernel<T, 1, E>, blocks, kGemvWarps * 32, 0, stream, a); break;
    case 2: launch(gemv_kernel<T, 2, E>, blocks, kGemvWarps * 32, 0, stream, a); break;
    case 3: launch(gemv_kernel<T, 3, E>, blocks, kGemvWarps * 32, 0, stream, a); break;
    case 4: launch(gemv_kernel<T, 4, E>, blocks, kGemvWarps * 32, 0, stream, a); break;
    default: throw std::invalid_argument("mango::linear: gemv takes 1 to 4 rows, got " + std::to_string(rows));
    }
}

template <Epilogue E>
void gemv_launch(Dtype dtype, int64_t rows, const GemvLaunch &a, int64_t blocks, const char *what, Stream stream) {
    if (rows == 0 || blocks == 0) return;
    if (dtype == Dtype::bf16)
        gemv_rows<__nv_bfloat16, E>(rows, a, static_cast<unsigned>(blocks), stream);
    else if (dtype == Dtype::f16)
        gemv_rows<__half, E>(rows, a, static_cast<unsigned>(blocks), stream);
    else
        throw std::invalid_argument(std::string(what) + ": gemv is for bfloat16 and float16");
    check_launch(what);
}

// ---- attention of a few queries over a KV cache -----------------------------------
constexpr unsigned kAttnThreads = 128;
constexpr int64_t kAttnSharedBytes = 48 * 1024;  // without opting in to more

// The max or sum of v over a block of kThreadsHere threads, in every thread; scratch holds a float a warp.
template <unsigned kThreadsHere>
__device__ __forceinline__ float block_reduce(float v, float *scratch, bool is_max) {
    for (int offset = 16; offset > 0; offset /= 2) {
        const float o = __shfl_xor_sync(0xffffffffu, v, offset);
        v = is_max ? fmaxf(v, o) : v + o;
    }
    __syncthreads();  // scratch may still be read from a previous reduction
    if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
    __syncthreads();
    v = scratch[0];
    for (unsigned w = 1; w < kThreadsHere / 32; ++w) v = is_max ? fmaxf(v, scratch[w]) : v + scratch[w];
    return v;
}

// kFixedD: the head size as a compile-time constant (the common 64 and 128: loops over it unroll, a key's
// loads all go out at once), or 0 for a.D.
template <class T, int kFixedD>
__global__ void __launch_bounds__(kAttnThreads) decode_attention_kernel(AttentionArgs a) {
    let_next_kernel_start();
    wait_for_previous_kernel();
    extern __shared__ float smem[];
    const int64_t D = kFixedD ? kFixedD : a.D, S = a.S;
    float *qf = smem;              // [D]
    float *scores = smem + D;      // [S]
    float *scratch = scores + S;   // [kAttnThreads] (warp partials, then output partials)
    const int64_t bh = blockIdx.x, t = blockIdx.y;
    const int64_t b = bh / a.H, h = bh % a.H, kvh = h / (a.H / a.KV);
    const T *q = static_cast<const T *>(a.q) + b * a.q_stride[0] + h * a.q_stride[1] + t * a.q_stride[2];
    const T *k = static_cast<const T *>(a.k) + b * a.k_stride[0] + kvh * a.k_stride[1];
    const T *v = static_cast<const T *>(a.v) + b * a.v_stride[0] + kvh * a.v_stride[1];
    for (int64_t d = threadIdx.x; d < D; d += kAttnThreads) qf[d] = load(q[d]);
    __syncthreads();

    // scores: one key per thread at a time
    const int64_t qpos = S - a.T + t;
    float local_max = -INFINITY;
    for (int64_t s = threadIdx.x; s < S; s += kAttnThreads) {
        const bool visible = s <= qpos && (a.window <= 0 || s > qpos - a.window) && a.padding[b * a.pad_stride_b + s * a.pad_stride_s] != 0;
        constexpr int V = 16 / sizeof(T);  // elements per 16-byte load
        const uint4 *kr = reinterpret_cast<const uint4 *>(k + s * a.k_stride[2]);
        float dot = 0.f;
#pragma unroll 16
        for (int64_t c = 0; c < D / V; ++c) {
            const uint4 chunk = kr[c];
            const T *e = reinterpret_cast<const T *>(&chunk);
#pragma unroll
            for (int i = 0; i < V; ++i) dot += qf[c * V + i] * load(e[i]);
        }
        const float score = dot * a.scale + (visible ? 0.f : a.lowest);
        scores[s] = score;
        local_max = fmaxf(local_max, score);
    }
    const float max = block_reduce<kAttnThreads>(local_max, scratch, true);
    float local_sum = 0.f;
    for (int64_t s = threadIdx.x; s < S; s += kAttnThreads) {
        const float p = expf(scores[s] - max);
        scores[s] = p;
        local_sum += p;
    }
    const float inv_sum = 1.f / block_reduce<kAttnThreads>(local_sum, scratch, false);  // also orders the writes to scores before the reads below

    // out = p v: thread (group g, pair j) sums channels 2j, 2j+1 over keys g, g + G, ...
    const int64_t P = D / 2, G = kAttnThreads / P;
    const int64_t j = threadIdx.x % P, g = threadIdx.x / P;
    float o0 = 0.f, o1 = 0.f;
    if (g < G) {
#pragma unroll 8
        for (int64_t s = g; s < S; s += G) {
            const T *vr = v + s * a.v_stride[2] + 2 * j;
            const float p = scores[s];
            o0 += p * load(vr[0]);
            o1 += p * load(vr[1]);
        }
    }
    __syncthreads();  // scratch is reused for the partial outputs
    float *part = scratch;  // [G][D]: G * D <= 2 * kAttnThreads floats
    if (g < G) part[g * D + 2 * j] = o0, part[g * D + 2 * j + 1] = o1;
    __syncthreads();
    T *out = static_cast<T *>(a.out) + ((b * a.H + h) * a.T + t) * D;
    for (int64_t d = threadIdx.x; d < D; d += kAttnThreads) {
        float sum = 0.f;
        for (int64_t gg = 0; gg < G; ++gg) sum += part[gg * D + d];
        out[d] = store<T>(sum * inv_sum);
    }
}

// ---- a fusion layer's mix of its experts' outputs ---------------------------------
template <class T>
__global__ void mix_experts_kernel(MixArgs a) {
    let_next_kernel_start();
    wait_for_previous_kernel();
    const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (i >= a.B * a.T * a.H) return;
    const int64_t b = i / (a.T * a.H), t = (i / a.H) % a.T;
    const float *w = a.weights + b * a.w_stride[0] + t * a.w_stride[1];
    // __fmul_rn / __fadd_rn: each product and sum rounds as ATen's mul and add do, in this order
    float h = __fmul_rn(load(static_cast<const T *>(a.outs[0])[i]), w[0]);
    for (int e = 1; e < a.experts; ++e) h = __fadd_rn(h, __fmul_rn(load(static_cast<const T *>(a.outs[e])[i]), w[e * a.w_stride[2]]));
    a.out[i] = h;
    if (a.out_as) static_cast<T *>(a.out_as)[i] = store<T>(h);
}

// ---- a router's gate over pooled tokens --------------------------------------------
// A decode step's few tokens (T <= 4, H <= 8192): one block of 1024 threads per sequence, a thread
// taking up to 8 columns, every load of a phase in flight at once (a decode step is latency-bound).
// Otherwise a block takes 128 columns of up to 64 tokens of one sequence, and the sequence's last
// block to finish adds the blocks' shares of the logits (partials, counters) in block order.
constexpr unsigned kGateSingleThreads = 1024, kGateThreads = 128;
constexpr int kGateSingleColumns = 8;
constexpr int64_t kGateSingleTokens = 4, kGateTokensPerBlock = 64;

__device__ __forceinline__ float mask_value(const GateArgs &a, int64_t b, int64_t t) {
    if (!a.mask) return 1.f;
    const int64_t i = b * a.mask_stride[0] + t * a.mask_stride[1];
    switch (a.mask_bytes) {
    case 1:
        return static_cast<float>(static_cast<const unsigned char *>(a.mask)[i]);
    case 4:
        return a.mask_float ? static_cast<const float *>(a.mask)[i] : static_cast<float>(static_cast<const int32_t *>(a.mask)[i]);
    default:
        return static_cast<float>(static_cast<const long long *>(a.mask)[i]);
    }
}

template <bool kSingle>
__global__ void __launch_bounds__(kSingle ? kGateSingleThreads : kGateThreads) mean_pool_gate_kernel(GateArgs a) {
    let_next_kernel_start();
    wait_for_previous_kernel();
    constexpr unsigned kThreadsHere = kSingle ? kGateSingleThreads : kGateThreads, kWarps = kThreadsHere / 32;
    constexpr int kColumns = kSingle ? kGateSingleColumns : 1;
    __shared__ float scratch[kWarps];
    __shared__ float part[kWarps][kGateMaxExperts];  // each warp's share of each logit
    __shared__ bool last;
    const unsigned warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t b = blockIdx.y, column_blocks = kSingle ? 1 : (a.H + kThreadsHere - 1) / kThreadsHere;
    const int64_t first = (blockIdx.x % column_blocks) * kThreadsHere + threadIdx.x;
    const int64_t t0 = kSingle ? 0 : (blockIdx.x / column_blocks) * kGateTokensPerBlock;
    const int64_t t1 = kSingle || t0 + kGateTokensPerBlock > a.T ? a.T : t0 + kGateTokensPerBlock;

    float count = 0.f;  // the sequence's kept tokens
    for (int64_t t = threadIdx.x; t < a.T; t += kThreadsHere) count += mask_value(a, b, t);
    const float denominator = fmaxf(block_reduce<kThreadsHere>(count, scratch, false), 1.f);

    float p[kColumns];  // this thread's columns of the pooled vector (one token: h k / max(k, 1), as ATen rounds it)
#pragma unroll
    for (int k = 0; k < kColumns; ++k) {
        const int64_t c = first + k * kThreadsHere;
        p[k] = 0.f;
        if (c >= a.H) continue;
        const float *h = a.hidden + b * a.T * a.H + c;
        float sum = __fmul_rn(h[t0 * a.H], mask_value(a, b, t0));
#pragma unroll 8
        for (int64_t t = t0 + 1; t < t1; ++t) sum = __fadd_rn(sum, __fmul_rn(h[t * a.H], mask_value(a, b, t)));
        p[k] = __fdiv_rn(sum, denominator);
    }
#pragma unroll 4
    for (int64_t e = 0; e < a.E; ++e) {
        float dot = 0.f;
#pragma unroll
        for (int k = 0; k < kColumns; ++k) {
            const int64_t c = first + k * kThreadsHere;
            if (c < a.H) dot += p[k] * a.weight[e * a.H + c];
        }
        for (int offset = 16; offset > 0; offset /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, offset);
        if (lane == 0) part[warp][e] = dot;
    }
    __syncthreads();
    // thread e < E: logit e, the warps' shares added (over several blocks, by the sequence's last block)
    float dot = 0.f;
    if (threadIdx.x < a.E)
        for (unsigned w = 0; w < kWarps; ++w) dot += part[w][threadIdx.x];
    if constexpr (!kSingle) {
        const int64_t blocks = gridDim.x;
        if (threadIdx.x < a.E) {
            a.partials[(b * blocks + blockIdx.x) * a.E + threadIdx.x] = dot;
            __threadfence();  // the share is visible before this block counts itself done
        }
        __syncthreads();
        if (threadIdx.x == 0) last = atomicAdd(a.counters + b, 1) == static_cast<int>(blocks - 1);
        __syncthreads();
        if (!last) return;
        __threadfence();  // the sequence's last block: every share is in
        dot = 0.f;
        if (threadIdx.x < a.E)
            for (int64_t k = 0; k < blocks; ++k) dot += __ldcg(a.partials + (b * blocks + k) * a.E + threadIdx.x);
    }
    float *logits = part[0];  // thread e read only column e of part
    if (threadIdx.x < a.E) logits[threadIdx.x] = (dot + (a.bias ? a.bias[threadIdx.x] : 0.f)) * a.scale;
    __syncthreads();
    if (threadIdx.x == 0) {  // softmax over the E logits
        float top = logits[0];
        for (int64_t e = 1; e < a.E; ++e) top = fmaxf(top, logits[e]);
        float total = 0.f;
        for (int64_t e = 0; e < a.E; ++e) total += (logits[e] = expf(logits[e] - top));
        for (int64_t e = 0; e < a.E; ++e) a.out[b * a.E + e] = logits[e] / total;
    }
}

// ---- the greedy pick: argmax over each row --------------------------------------
constexpr unsigned kArgmaxThreads = 1024;

// Whether (v, i) goes before (bv, bi) as ATen's argmax orders them: NaN above
// everything, then the larger value, ties to the smaller index; bi < 0: none yet.
__device__ __forceinline__ bool argmax_before(float v, int64_t i, float bv, int64_t bi) {
    if (bi < 0) return true;
    const bool vn = isnan(v), bn = isnan(bv);
    if (vn || bn) return vn && (!bn || i < bi);
    return v > bv || (v == bv && i < bi);
}

template <class T>
__global__ void __launch_bounds__(kArgmaxThreads) argmax_kernel(const T *x, int64_t row_stride, int64_t n, int64_t *out) {
    let_next_kernel_start();
    wait_for_previous_kernel();
    const T *row = x + blockIdx.x * row_stride;
    float best = 0.f;
    int64_t at = -1;
#pragma unroll 8
    for (int64_t i = threadIdx.x; i < n; i += kArgmaxThreads) {
        const float v = load(row[i]);
        if (argmax_before(v, i, best, at)) best = v, at = i;
    }
    for (int offset = 16; offset > 0; offset /= 2) {
        const float v = __shfl_xor_sync(0xffffffffu, best, offset);
        const int64_t i = __shfl_xor_sync(0xffffffffu, static_cast<long long>(at), offset);
        if (i >= 0 && argmax_before(v, i, best, at)) best = v, at = i;
    }
    __shared__ float values[kArgmaxThreads / 32];
    __shared__ int64_t indices[kArgmaxThreads / 32];
    if (threadIdx.x % 32 == 0) values[threadIdx.x / 32] = best, indices[threadIdx.x / 32] = at;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (unsigned w = 1; w < kArgmaxThreads / 32; ++w)
            if (indices[w] >= 0 && argmax_before(values[w], indices[w], best, at)) best = values[w], at = indices[w];
        out[blockIdx.x] = at;
    }
}

constexpr unsigned kThreads = 256;

}  // namespace

int64_t decode_attention_max_keys(int64_t D) { return kAttnSharedBytes / 4 - D - 2 * kAttnThreads; }

void decode_attention(Dtype dtype, const AttentionArgs &a, Stream stream) {
    if (a.B * a.H * a.T == 0) return;
    if (a.D % 8 || a.D > 2 * static_cast<int64_t>(kAttnThreads) || a.S > decode_attention_max_keys(a.D) || a.KV <= 0 || a.H % a.KV)
        throw std::invalid_argument("mango::decode_attention: unsupported shape");
    const size_t shared = static_cast<size_t>(a.D + a.S + 2 * kAttnThreads) * sizeof(float);
    const dim3 grid(static_cast<unsigned>(a.B * a.H), static_cast<unsigned>(a.T));
    by_dtype(dtype, [&](auto zero) {
        using T_ = decltype(zero);
        if (a.D == 64)
            launch(decode_attention_kernel<T_, 64>, grid, kAttnThreads, shared, stream, a);
        else if (a.D == 128)
            launch(decode_attention_kernel<T_, 128>, grid, kAttnThreads, shared, stream, a);
        else
            launch(decode_attention_kernel<T_, 0>, grid, kAttnThreads, shared, stream, a);
    });
    check_launch("mango::decode_attention");
}

void gemv(Dtype dtype, const void *x, int64_t rows, int64_t K, const GemvWeight *weights, int n_weights, bool weights_early, Stream stream) {
    if (n_weights < 1 || n_weights > kGemvMaxWeights) throw std::invalid_argument("mango::linear: gemv takes 1 to 3 weights");
    GemvLaunch a{x, K, {}, nullptr, {}, weights_early};
    int64_t blocks = 0;
    for (int i = 0; i < n_weights; ++i) a.w[i] = weights[i], blocks += weights[i].N;
    gemv_launch<Epilogue::plain>(dtype, rows, a, blocks, "mango::linear", stream);
}

void gemv_residual(Dtype dtype, const void *x, int64_t rows, int64_t K, const GemvWeight &weight, const void *residual, bool weights_early,
                   Stream stream) {
    GemvLaunch a{x, K, {weight}, residual, {}, weights_early};
    gemv_launch<Epilogue::residual>(dtype, rows, a, weight.N, "mango::linear_residual", stream);
}

void gemv_silu_mul(Dtype dtype, const void *x, int64_t rows, int64_t K, const GemvWeight &gate, const GemvWeight &up, bool weights_early,
                   Stream stream) {
    if (gate.N != up.N) throw std::invalid_argument("mango::swiglu: gate and up widths differ");
    GemvLaunch a{x, K, {gate, up}, nullptr, {}, weights_early};
    gemv_launch<Epilogue::silu_mul>(dtype, rows, a, gate.N, "mango::swiglu", stream);
}

void gemv_rope(Dtype dtype, const void *x, int64_t rows, int64_t K, const GemvWeight *weights, int n_weights, const GemvRope &rope,
               bool weights_early, Stream stream) {
    if (n_weights < 1 || n_weights > kGemvMaxWeights || rope.rotated < 0 || rope.rotated > n_weights || rope.head_dim <= 0 ||
        rope.head_dim % 2 || rope.T <= 0 || rows % rope.T)
        throw std::invalid_argument("mango::linears_rope: unsupported arguments");
    GemvLaunch a{x, K, {}, nullptr, rope, weights_early};
    int64_t blocks = 0;
    for (int i = 0; i < n_weights; ++i) {
        if (i < rope.rotated && weights[i].N % rope.head_dim)
            throw std::invalid_argument("mango::linears_rope: a rotated width is not a multiple of the head size");
        a.w[i] = weights[i], blocks += i < rope.rotated ? weights[i].N / 2 : weights[i].N;
    }
    gemv_launch<Epilogue::rope>(dtype, rows, a, blocks, "mango::linears_rope", stream);
}

void mix_experts(Dtype dtype, const MixArgs &a, Stream stream) {
    const int64_t n = a.B * a.T * a.H;
    if (n == 0) return;
    if (a.experts < 1 || a.experts > kMixMaxExperts) throw std::invalid_argument("mango: mix_experts takes 1 to 8 experts");
    by_dtype(dtype, [&](auto zero) {
        using T = decltype(zero);
        launch(mix_experts_kernel<T>, blocks_for(n, kThreads), kThreads, 0, stream, a);
    });
    check_launch("fusion layer mix");
}

int64_t mean_pool_gate_blocks(int64_t T, int64_t H) {
    if (T <= kGateSingleTokens && H <= kGateSingleColumns * static_cast<int64_t>(kGateSingleThreads)) return 1;
    return ((H + kGateThreads - 1) / kGateThreads) * ((T + kGateTokensPerBlock - 1) / kGateTokensPerBlock);
}

void mean_pool_gate(const GateArgs &a, Stream stream) {
    if (a.B == 0) return;
    const int64_t blocks = mean_pool_gate_blocks(a.T, a.H);
    if (a.T < 1 || a.H < 1 || a.E < 1 || a.E > kGateMaxExperts || a.B > 65535 || blocks > (int64_t{1} << 30) ||
        (a.mask && a.mask_bytes != 1 && a.mask_bytes != 4 && a.mask_bytes != 8) || (blocks > 1 && (!a.partials || !a.counters)))
        throw std::invalid_argument("mango::mean_pool_gate: unsupported arguments");
    const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(a.B));
    if (blocks == 1)
        launch(mean_pool_gate_kernel<true>, grid, kGateSingleThreads, 0, stream, a);
    else
        launch(mean_pool_gate_kernel<false>, grid, kGateThreads, 0, stream, a);
    check_launch("mango::mean_pool_gate");
}

void argmax_rows(Dtype dtype, const void *x, int64_t row_stride, int64_t rows, int64_t n, int64_t *out, Stream stream) {
    if (rows == 0 || n == 0) return;
    by_dtype(dtype, [&](auto zero) {
        using T = decltype(zero);
        launch(argmax_kernel<T>, static_cast<unsigned>(rows), kArgmaxThreads, 0, stream, static_cast<const T *>(x), row_stride, n, out);
    });
    check_launch("greedy pick (argmax)");
}

void rms_norm(Dtype dtype, const void *x, const void *w, void *out, int64_t rows, int64_t n, float eps, bool gain_early, Stream stream) {
    if (rows == 0 || n == 0) return;
    by_dtype(dtype, [&](auto zero) {
        using T = decltype(zero);
        const bool vec = n % (16 / sizeof(T)) == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0 &&
                         reinterpret_cast<uintptr_t>(out) % 16 == 0;
        if (vec)
            launch(rms_norm_vec_kernel<T>, static_cast<unsigned>(rows), kNormThreads, 0, stream, static_cast<const T *>(x), nullptr,
                   static_cast<const T *>(w), nullptr, static_cast<T *>(out), n, eps, gain_early);
        else
            launch(rms_norm_kernel<T>, static_cast<unsigned>(rows), kNormThreads, 0, stream, static_cast<const T *>(x),
                   static_cast<const T *>(w), static_cast<T *>(out), n, eps);
    });
    check_launch("mango::rms_norm");
}

void add_rms_norm(Dtype dtype, const void *x, const void *residual, const void *w, void *sum, void *out, int64_t rows, int64_t n, float eps,
                  bool gain_early, Stream stream) {
    if (rows == 0 || n == 0) return;
    by_dtype(dtype, [&](auto zero) {
        using T = decltype(zero);
        launch(rms_norm_vec_kernel<T>, static_cast<unsigned>(rows), kNormThreads, 0, stream, static_cast<const T *>(x),
               static_cast<const T *>(residual), static_cast<const T *>(w), static_cast<T *>(sum), static_cast<T *>(out), n, eps, gain_early);
    });
    check_launch("mango::add_rms_norm");
}

void cache_write(int bytes, const CacheEntry *entries, int count, const int64_t *at, Stream stream) {
    if (count < 1 || count > 2) throw std::invalid_argument("cache_write: one or two entries");
    CacheWrites w;
    int64_t n = 0;
    for (int e = 0; e < count; ++e) {
        w.entry[e] = entries[e];
        n += entries[e].B * entries[e].H * entries[e].D;
        if (e == 0) w.first_end = n;
    }
    if (n == 0) return;
    if (bytes == 2)
        launch(cache_write_kernel<uint16_t>, blocks_for(n, kThreads), kThreads, 0, stream, w, n, at);
    else if (bytes == 4)
        launch(cache_write_kernel<uint32_t>, blocks_for(n, kThreads), kThreads, 0, stream, w, n, at);
    else
        throw std::invalid_argument("cache_write: elements of 2 or 4 bytes");
    check_launch("static KV cache write");
}

void silu_mul(Dtype dtype, const void *g, int64_t g_row, const void *u, int64_t u_row, void *out, int64_t rows, int64_t n, Stream stream) {
    if (rows * n == 0) return;
    by_dtype(dtype, [&](auto zero) {
        using T = decltype(zero);
        launch(silu_mul_kernel<T>, blocks_for(rows * n, kThreads), kThreads, 0, stream, static_cast<const T *>(g), g_row,
               static_cast<const T *>(u), u_row, static_cast<T *>(out), rows, n);
    });
    check_launch("mango::silu_mul");
}

void rope(Dtype dtype, const Strided4 &q, const Strided4 &k, const int64_t *positions, int64_t pos_stride_b, int64_t pos_stride_t,
          const float *inv_freq, float factor, Stream stream) {
    const int64_t nq = q.size[0] * q.size[1] * q.size[2] * q.size[3], nk = k.size[0] * k.size[1] * k.size[2] * k.size[3];
    if (nq + nk == 0) return;
    by_dtype(dtype, [&](auto zero) {
        using T = decltype(zero);
        launch(rope_kernel<T>, blocks_for(nq + nk, kThreads), kThreads, 0, stream, q, k, nq, nk, positions, pos_stride_b, pos_stride_t,
               inv_freq, factor);
    });
    check_launch("mango::rope");
}

void mask_bias(Dtype dtype, const int64_t *padding, int64_t pad_stride_b, int64_t pad_stride_s, int64_t B, int64_t T, int64_t S,
               int64_t window, float lowest, void *out, Stream stream) {
    const int64_t n = B * T * S;
    if (n == 0) return;
    by_dtype(dtype, [&](auto zero) {
        using T_ = decltype(zero);
        launch(mask_bias_kernel<T_>, blocks_for(n, kThreads), kThreads, 0, stream, padding, pad_stride_b, pad_stride_s, B, T, S, window,
               lowest, static_cast<T_ *>(out));
    });
    check_launch("mango::attention_mask_bias");
}

}  // namespace mango::kernels
