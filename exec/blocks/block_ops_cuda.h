// DeviceStageBlocks: exec/blocks/block_ops.h on the device — the sub-steps of the blocks of ONE
// pipeline stage as ONE rank holds it, cut exactly as the Program's tasks cut them (read
// block_ops.h first: same sub-steps, same order of additions, same hand-offs). The CUDA rank
// runner (device_backend.h) calls these where the CPU rank runner calls block_ops.
//
// Built on the device twins in exec/ops: MlaDevice (attention_cuda.h), DeviceFfn (linear_cuda.h),
// DeviceMoeLayer (moe_layer_cuda.h), DeviceHead (head_cuda.h), DeviceMtpProj (mtp_cuda.h), the
// RMSNorm kernels (rmsnorm_cuda.h), embedding / cross-entropy (embedding_cuda.h, loss_cuda.h), the
// balance loss (balance_cuda.h), and the backend's exact adds (elementwise.h). The weights and
// gradient accumulators are views into DeviceStageParams / DeviceStageGrads (block_params_cuda.h) by Hugging Face name; the router's selection bias and an MTP block's copy of
// the embedding table (not flattened) are device buffers of their own here.
//
// Streams and threads. Every sub-step enqueues its compute work on rank.compute (the DeviceLinear's
// stream) and its all_to_all_v on rank.comm_stream with event hand-offs (moe_layer.h), and
// returns without waiting for the device, except where noted (attn_f of a MoE block: the routing
// ids come to the host; loss_f: the loss value). The object is NOT thread-safe, and neither is
// the DeviceLinear it shares with the rank's other stages: the caller (the rank runner) holds one
// mutex per rank around every call.
//
// Numerics as the pieces' headers state (exact / bf16 / fp8 as the run's ModelSetup::numerics).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "common/signed_index.h"
#include "exec/ops/attention/attention_cuda.h"
#include "exec/backends/cuda/infra/blas.h"
#include "exec/backends/cuda/infra/cuda_check.h"
#include "exec/backends/cuda/comm/device_comm.h"
#include "exec/ops/head/head_cuda.h"
#include "exec/ops/linear/linear_cuda.h"
#include "exec/backends/cuda/infra/lt_gemm.h"
#include "exec/ops/moe_layer/moe_layer_cuda.h"
#include "exec/ops/mtp/mtp_cuda.h"
#include "exec/blocks/block_params_cuda.h"
#include "exec/blocks/block_ops.h"

namespace tandem::cuda {

// An activation [rows, cols], FP32 row-major on the device. Shared and write-once: the runtime's
// hand-offs (a block's input = the previous block's output, a stage's output gradient = the next
// stage's dx, a received pp message) alias one buffer instead of copying it, so nothing writes
// into a tensor after the sub-step that produced it. Freed when the last holder lets go
// (cudaFree: synchronises the device).
class DeviceTensor {
 public:
  DeviceTensor() = default;
  static DeviceTensor make(int64_t rows, int64_t cols);  // uninitialised; (0, c) gives an empty tensor
  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  int64_t size() const { return rows_ * cols_; }
  std::size_t bytes() const { return idx(size()) * sizeof(float); }
  float* data() const { return buf_ ? buf_->get() : nullptr; }

 private:
  std::shared_ptr<DeviceBuffer<float>> buf_;
  int64_t rows_ = 0, cols_ = 0;
};


// One micro-batch's token ids on the device (runtime::MicroBatchData, uploaded once per step).
struct DeviceMicroBatch {
  int rows = 0;
  DeviceBuffer<int32_t> tokens, targets, mtp_targets;  // mtp_targets empty without MTP
};
// Synchronous upload (the host data may go away afterwards).
DeviceMicroBatch upload_micro_batch(const runtime::MicroBatchData& d);

// What every stage of one rank shares: the device, its two streams, the compute stream's BLAS
// handles and DeviceLinear (in the run's numerics), the communicator and the EP group.
struct DeviceRankKit {
  int device = 0;
  cudaStream_t compute = nullptr;      // = blas.stream() = linear.stream()
  cudaStream_t comm_stream = nullptr;  // all_to_all_v, pp messages, ZeRO-1
  Blas* blas = nullptr;
  LtFp8Gemm* lt = nullptr;
  DeviceLinear* linear = nullptr;
  DeviceCommunicator* comm = nullptr;
  std::vector<int> ep_group;  // world ranks, member index = EP rank
};

// Everything one block keeps for one micro-batch between its tasks (runtime::BlockState's twin).
// The first members are what the rank runner reads and hands over; the rest is the sub-steps'.
struct DeviceBlockState {
  DeviceTensor x;      // block input (layers, head; MTP: h, the head's input, before attn_f)
  DeviceTensor out;    // block output (head: the logits until loss_f)
  DeviceTensor d_out;  // gradient at the output (set by the caller before the first backward task)
  DeviceTensor dx;     // gradient at the input (the MTP block: at h)
  double loss = 0;          // loss_f: the micro-batch's (scaled) loss, on the host
  double balance_loss = 0;  // attn_f of a MoE block with balance_alpha > 0: its loss · balance_scale
  std::vector<int32_t> routing;  // attn_f of a MoE block: the expert ids [tokens · top_k] on the host

  // ---- the sub-steps' own state (exec/blocks/block_ops.h's BlockState) ----
  DeviceTensor h, xn, d_h, d_xn;
  DeviceBuffer<float> xn1, inv_rms1, inv_rms2;  // input RMSNorm output and the two norms' inverse RMS
  MlaDeviceSaved mla;
  MlaDeviceInputGrad mla_g;
  DeviceFfnSaved ffn;
  DeviceFfnInputGrad ffn_g;
  std::unique_ptr<DeviceMoeTokenState> tok;
  std::unique_ptr<DeviceMoeExpertState> exp;
  DeviceTensor logits;       // head / MTP
  DeviceBuffer<float> dlogits;
  DeviceHeadSaved head;
  DeviceHeadInputGrad head_g;
  DeviceBuffer<float> balance_f, d_scores;  // balance loss: per-sequence f_i, the scores' gradient
  DeviceMtpSaved mtp;
  DeviceMtpInputGrad mtp_g;
  DeviceTensor emb, d_proj_out;  // MTP: the embedded next tokens; gradient at the projection's output
  DeviceBuffer<double> scalar;   // one device double (loss read-back)
};

class DeviceStageBlocks {
 public:
  // blocks: the stage's host parameters, built by runtime::make_block_params for ctx.member (an
  // MTP block's shared_lm_head linked by runtime::link_shared_head), uploaded here (synchronous).
  // ctx and kit must outlive this object. std::invalid_argument on a block kind it cannot run.
  DeviceStageBlocks(const runtime::BlockContext& ctx, std::vector<runtime::BlockParams>& blocks,
                    DeviceRankKit& kit);
  ~DeviceStageBlocks();
  DeviceStageBlocks(const DeviceStageBlocks&) = delete;
  DeviceStageBlocks& operator=(const DeviceStageBlocks&) = delete;

  std::size_t size() const;  // blocks
  DeviceStageParams& params();
  DeviceStageGrads& grads();

  // Once per step, before its first sub-step: zero every gradient accumulator (the stage's and the
  // MTP contributions below); fp8: quantise the weights once for the step (prepare_weights /
  // quantize_weights), since the optimizer changed them.
  void begin_step();

  // The sub-steps of block i (index within the stage), as runtime::attn_f ... runtime::attn_w.
  // The caller sets s.x before the first forward task and s.d_out before the first backward task
  // (block_ops.h), except where block_ops sets them itself (the MTP block's loss_f sets d_out).
  void attn_f(std::size_t i, DeviceBlockState& s, const DeviceMicroBatch& data);
  void dispatch_f(std::size_t i, DeviceBlockState& s, const std::string& label);
  void mlp_f(std::size_t i, DeviceBlockState& s);
  void combine_f(std::size_t i, DeviceBlockState& s, const std::string& label);
  void loss_f(std::size_t i, DeviceBlockState& s, const DeviceMicroBatch& data);
  void combine_b(std::size_t i, DeviceBlockState& s, const std::string& label);
  void mlp_b(std::size_t i, DeviceBlockState& s);
  void dispatch_b(std::size_t i, DeviceBlockState& s, const std::string& label);
  void attn_b(std::size_t i, DeviceBlockState& s);
  void mlp_w(std::size_t i, DeviceBlockState& s);  // into grads() (experts per source member)
  void attn_w(std::size_t i, DeviceBlockState& s, const DeviceMicroBatch& data);
  // Frees what backward no longer needs once both weight passes ran (out and dx stay, as in
  // runtime::release; they are not written at all, so another thread may read them meanwhile; the
  // loss values stay too).
  // Enqueue-safe: buffers still read by queued work are freed by cudaFree, which waits for the device.
  void release(DeviceBlockState& s);

  // MTP block i (kind mtp): its contributions to the shared tensors (BlockGrads::mtp_embed /
  // mtp_lm_head: [vocab, hidden], zeroed by begin_step) and its copy of the embedding table.
  float* mtp_embed_grad(std::size_t i);
  float* mtp_lm_head_grad(std::size_t i);
  float* mtp_embed_table(std::size_t i);
  // MoE block i: the router's selection bias [n_routed] from the host (after the balancing update;
  // enqueued on kit.compute).
  void set_router_bias(std::size_t i, std::span<const float> bias);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tandem::cuda
