// This process's place in a distributed run: LibTorch's c10d process group
// (NCCL on GPUs, Gloo on CPUs) joined through a TCPStore rendezvous on the
// variables torchrun and Slurm scripts set (MASTER_ADDR, MASTER_PORT, RANK,
// WORLD_SIZE, LOCAL_RANK). Without WORLD_SIZE > 1 the process is alone and
// every call is a no-op. Only rank 0 writes (formats::set_writes_enabled).
#pragma once

#include <ATen/ATen.h>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace mango::dist {

class Group {
public:
    int rank() const { return rank_; }
    int world() const { return world_; }
    int local_rank() const { return local_rank_; }
    bool distributed() const { return world_ > 1; }
    bool writer() const { return rank_ == 0; }
    // "rank 1/2: " in a distributed run, "" alone: the prefix for messages.
    std::string tag() const;
    // "nccl" or "gloo" once joined.
    std::string backend() const;
    // The GPU this rank drives under NCCL (LOCAL_RANK modulo the GPUs it sees):
    // where a pipeline's `device = "cuda"` puts this rank's models.
    std::optional<at::Device> device() const;
    // `d` as this rank places it: a bare "cuda" becomes device() under NCCL.
    at::Device place(at::Device d) const {
        const std::optional<at::Device> gpu = device();
        return gpu && d.is_cuda() && !d.has_index() ? *gpu : d;
    }

    // Where collectives take their tensors: this rank's GPU under NCCL, else the CPU.
    at::Device collective_device() const;
    // Starts an element-wise sum over the ranks of `flat` (contiguous, on
    // collective_device()) in place; the returned function waits for it.
    // Every rank must start the same sums in the same order.
    std::function<void()> start_sum(at::Tensor flat);
    // all_to_all exchanges made so far: collectives that run inside a
    // model's forward and backward passes (expert parallelism), which other
    // collectives must not interleave with.
    int64_t exchanges() const { return exchanges_; }
    // Rows of `input` (dim 0) scattered to the ranks: the first send_rows[0]
    // to rank 0, the next send_rows[1] to rank 1, ...; returns the rows the
    // ranks sent here, in rank order (recv_rows[r] from rank r), on the
    // input's device. Alone: a copy of the input.
    at::Tensor all_to_all(const at::Tensor &input, const std::vector<int64_t> &send_rows, const std::vector<int64_t> &recv_rows);
    // Waits for every rank (collective timeout applies).
    void barrier();

    struct Impl;
    std::shared_ptr<Impl> impl_;
    int rank_ = 0, world_ = 1, local_rank_ = 0;
    int64_t exchanges_ = 0;
    std::string backend_;
};

// The group of this process (alone until init_from_env succeeds).
Group &current();

// Ends a distributed rank that used NCCL with `code` at once (after flushing
// its output), else returns: a NCCL group torn down by static destructors
// can abort the process, or hang when a peer died. Everything a run writes is
// already committed by then (atomic writes), so nothing is lost.
void end_nccl_rank(int code);

// Joins the group the environment describes when WORLD_SIZE > 1 (else does
// nothing); `timeout` bounds the rendezvous and every collective, so a rank
// that dies makes the others fail instead of hang. `backend` is "auto" (NCCL
// where the build has it and a GPU is present, else Gloo), "nccl" or "gloo".
// Ranks other than 0 stop writing files. Throws HostError naming the
// variable or peer at fault.
void init_from_env(std::chrono::seconds timeout, const std::string &backend = "auto");

}  // namespace mango::dist
