// The MoE MLP of one layer on ONE EP member, on the device: the twin of exec/ops/moe_layer/moe_layer.h, cut
// into the sub-steps exec/blocks/block_ops.h schedules (read the CPU header first: same order,
// same layouts, same wire rounding). FP32 row-major device activations, experts' GEMMs in the
// DeviceLinear's numerics (exact / bf16 / fp8), the router always exact FP32 (cuBLAS, router.h).
//
//   attn_f     route(w, x, tokens, ts)              router on device; ids → host (ONE synchronised
//                                                   D2H copy); host plan; index arrays uploaded
//              dispatch_pack(ts)                    x rows per destination, wire-rounded
//   dispatch_f dispatch(ts, es)                     expert ids through host(); payload all_to_all_v;
//                                                   rows placed into 128-padded expert segments
//   mlp_f      experts_forward(w, es)               DeviceFfn per non-empty local expert segment
//              combine_pack(es)                     outputs back in the order each source sent them
//              shared_forward(w, ts)                shared expert on the member's tokens
//   combine_f  combine(es, ts, out)                 all_to_all_v; out = Σ_k gate·y (k order) + shared
//   combine_b  combine_backward(ts, es, dout)       d_gate = <y, dout>; rows gate·dout → experts
//   mlp_b      experts_backward_input(w, es)        per segment; dx rows packed back
//              shared_backward_input(w, ts, dout)
//   dispatch_b dispatch_backward(es, ts)            all_to_all_v; dx_routed = Σ_k (k order)
//   attn_b     router_backward_input(w, ts, d_scores, dx)   dx = (dx_routed + dx_router) + dx_shared
//   mlp_w      experts_backward_weight(es, grads_by_src)    per SOURCE member over exactly its rows
//              shared_backward_weight(ts, dout, grads)
//   attn_w     router_backward_weight(ts, dWg)
//
// Host plan: exec/spec/dispatch_plan.h's, the CPU reference's own (make_dispatch_plan for the
// token side, make_segment_layout for the segments: rows of every source placed per local expert
// in (source, t, k) order, each segment padded to a multiple of `align`, 0 stays 0).
//
// Streams. compute = linear.stream() (= blas.stream(); the Blas must be the DeviceLinear's).
// `comm_stream` (the caller's, one per rank) carries every all_to_all_v. Before each all_to_all_v
// the comm stream waits on an event recorded on compute after the pack; after it, compute waits on
// an event recorded on comm. So every method enqueues on compute only what may run after what came
// before it on compute, and the caller may chain the methods without synchronising. Host blocking:
// route() synchronises compute once (the routing ids), dispatch() blocks in the host exchange of
// expert ids (every member must call it); the all_to_all_v calls block as device_comm.h says;
// nothing else waits for the device (the wires are packed and unpacked by kernels on compute).
// Buffers in the states are owned by them and kept until the state is destroyed or reused by the
// next micro-batch (freeing synchronises the device: cudaFree; destroy a state only after its work
// is done). Each transfer has its own buffers (FP32 rows and wire bytes), so nothing is
// reallocated while a transfer may still read it. x (route) and dout (combine_backward / weight
// passes) are the caller's and must stay valid until the weight passes are enqueued and done.
//
// Wires (exec/ops/moe_layer/dispatch_plan.h): each transfer moves its wire's bytes, packed by kernels on
// compute before the all_to_all_v and unpacked by kernels on compute after it into FP32 rows
// (ts.recv, es.recv, ...); the VALUES unpacked are the CPU wire's bit for bit —
//   exact: FP32 as is (the FP32 rows themselves are sent and received; no wire buffer);
//   bf16:  pack_bf16 / unpack_bf16 (moe_cuda_kernels.h: exec/fp8's float_to_bf16 / bf16_to_float);
//   fp8:   quantize_rowwise with pow2 scales (fp8_kernels.h, bit-identical to exec/fp8), then on the
//          receiver dequantize_rowwise (moe_cuda_kernels.h: decode_e4m3(code) · scale as exec/fp8).
// Rows are independent on every wire (a row's codes and scales depend on that row only), so
// quantising each peer's rows as one matrix gives each row the CPU's codes, and EP and EP 1 round
// the same rows the same way.
//
// Wire bytes. A transfer's buffer (ts.send_wire, es.recv_wire, ...; uint8) holds one block per
// peer, in member order; block d carries the n_d rows for / from member d (n_d·H elements, in the
// order of the FP32 rows they encode), moe_wire_block_bytes(wire, n_d, H) bytes:
//   bf16   n_d·H BF16 bit patterns (uint16, row-major); blocks back to back (one kernel packs all);
//   fp8    n_d·H E4M3 codes (row-major), 0..15 unused bytes up to a multiple of 16, then
//          k_blocks(H)·n_d FP32 scales, VEC128 over the block's rows (scales[kb·n_d + r]); each
//          block starts at a multiple of 16 bytes (the bytes between blocks are not sent; the
//          unused bytes inside a block are sent and never read). One quantise / dequantise launch
//          per non-empty peer.
// Both sides compute the same block sizes from the row counts (the receiver's rows_from[s] is the
// sender's rows_to[d]). No header: unlike exec/ops's CPU buffers, the sizes and the wire are known
// on both sides.
//
// Numerics against exec/ops<float> (given the same routing; the CPU is -ffp-contract=off):
//   bit-identical given equal inputs: the segment placement and every copy, the wire rounding,
//     combine's Σ_k gate·y (combine_rows: k order, __fadd_rn/__fmul_rn, from +0), g·dout, and
//     dispatch_b's Σ_k dx (weight 1·dx is exact), the final adds (elementwise.h add).
//   within a tolerance: router logits (cuBLAS FP32), the expert / shared FFNs (DeviceFfn, linear.h),
//     d_gate (a cuBLAS batched dot, not the CPU's sequential sum), the router GEMMs.
//   EP vs EP 1 on the device: an expert's segment holds the same rows in the same order with the
//     same padded length for any ep (when the members' token blocks are the EP-1 batch cut in
//     order), so each expert's forward / backward-input GEMMs get the same shapes and data: the
//     routed output and dx_routed are bit-identical to EP 1 provided the routing and gates are (the
//     router GEMM has M = tokens, which differs, so cuBLAS may pick another kernel). Per-source
//     expert gradients, the shared expert and the router grads depend on M: not bit-identical.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include <cuda_runtime_api.h>

#include "exec/backends/cuda/infra/blas.h"
#include "exec/backends/cuda/infra/cuda_check.h"
#include "exec/backends/cuda/comm/device_comm.h"
#include "exec/ops/linear/linear_cuda.h"
#include "exec/ops/router/router_cuda.h"
#include "exec/spec/dispatch_plan.h"
#include "exec/spec/moe_config.h"

namespace tandem::cuda {

// exec/spec: the CPU reference's types, its host index plan included (the layer validates the
// config and checks the router against the device router's limits, check_device_router).
using spec::DispatchPlan;
using spec::DispatchRow;
using spec::MoeConfig;
using spec::SegmentLayout;
using spec::Wire;

// Bytes of one peer's block of `rows` rows of `cols` elements on `wire` (see "Wire bytes"):
// exact 4·rows·cols, bf16 2·rows·cols, fp8 roundup(rows·cols, 16) + 4·k_blocks(cols)·rows.
std::size_t moe_wire_block_bytes(Wire wire, std::size_t rows, int cols);

// ---- weights, gradients, states -----------------------------------------------------------------

struct DeviceMoeWeights {
  const float* router = nullptr;  // [E, hidden]
  const float* bias = nullptr;    // [E]
  std::vector<DeviceFfnWeights> experts;  // the member's E/ep local experts
  DeviceFfnWeights shared;                // n_shared · moe_inter wide (unused when n_shared = 0)
};

// Token side of one micro-batch.
struct DeviceMoeTokenState {
  int tokens = 0;
  const float* x = nullptr;              // [tokens, hidden], the caller's
  DeviceBuffer<float> scores;            // [tokens, E]
  DeviceBuffer<int32_t> expert;          // [tokens · K]
  DeviceBuffer<float> gate;              // [tokens · K]
  std::vector<int32_t> expert_host;      // the routing on the host
  DispatchPlan plan;
  std::vector<std::size_t> rows_to;      // [ep] rows for member d (= rows coming back from d)
  std::vector<std::size_t> row_offset;   // [ep + 1] prefix sums
  DeviceBuffer<int32_t> send_token;      // [n] token of the i-th packed row
  DeviceBuffer<int32_t> send_slot;       // [n] slot t·K + k of the i-th packed row
  DeviceBuffer<int32_t> slot_row;        // [tokens · K] packed row of slot s
  DeviceBuffer<float> ones;              // [tokens · K] 1.0f (dispatch_b's plain Σ_k)
  DeviceBuffer<float> send;              // [n, hidden] dispatch rows (FP32, before the wire)
  DeviceBuffer<float> recv;              // [n, hidden] combine rows (y as received, unpacked)
  DeviceBuffer<float> gate_send;         // [n] gate of the i-th packed row (combine_b)
  DeviceBuffer<float> send_b;            // [n, hidden] combine_b rows (FP32, before the wire)
  DeviceBuffer<float> recv_b;            // [n, hidden] dispatch_b rows (unpacked)
  DeviceBuffer<uint8_t> send_wire, recv_wire, send_b_wire, recv_b_wire;  // wire bytes (empty: exact)
  DeviceBuffer<float> routed;            // [tokens, hidden] Σ_k gate · y
  DeviceBuffer<float> shared_out;        // [tokens, hidden]
  DeviceFfnSaved shared_saved;
  DeviceFfnInputGrad shared_grad;
  DeviceBuffer<float> shared_dx;         // [tokens, hidden]
  DeviceBuffer<float> y_slots;           // [tokens · K, hidden] (combine_backward, for d_gate)
  DeviceBuffer<float> d_gate;            // [tokens · K]
  DeviceBuffer<float> d_logits;          // [tokens, E]
  DeviceBuffer<float> dx_routed;         // [tokens, hidden]
  DeviceBuffer<float> dx_router;         // [tokens, hidden]
};

// Expert side of one micro-batch.
struct DeviceMoeExpertState {
  SegmentLayout layout;
  std::vector<std::size_t> rows_from;    // [ep] rows received from member s
  std::vector<std::size_t> row_offset;   // [ep + 1]
  DeviceBuffer<int32_t> seg_src;         // [total_rows] received row of a segment row, −1 padding
  DeviceBuffer<int32_t> back_row;        // [n] segment row of the i-th received row
  DeviceBuffer<float> recv;              // [n, hidden] dispatch rows (unpacked)
  DeviceBuffer<float> recv_b;            // [n, hidden] combine_b rows (unpacked)
  DeviceBuffer<float> x;                 // [total_rows, hidden] padded segments
  DeviceBuffer<float> y;                 // [total_rows, hidden]
  DeviceBuffer<float> dy;                // [total_rows, hidden]
  DeviceBuffer<float> dx;                // [total_rows, hidden]
  DeviceBuffer<float> send;              // [n, hidden] combine rows (FP32, before the wire)
  DeviceBuffer<float> send_b;            // [n, hidden] dispatch_b rows (FP32, before the wire)
  DeviceBuffer<uint8_t> recv_wire, send_wire, recv_b_wire, send_b_wire;  // wire bytes (empty: exact)
  std::vector<DeviceFfnSaved> saved;     // [n_local]
  std::vector<DeviceFfnInputGrad> in_grad;  // [n_local]
};

class DeviceMoeLayer {
 public:
  // blas must be linear's (blas.stream() == linear.stream()); group: the EP group's world ranks
  // (size cfg.ep, containing comm.rank(); member index = EP rank). All must outlive the layer.
  DeviceMoeLayer(const MoeConfig& cfg, Blas& blas, DeviceLinear& linear, DeviceCommunicator& comm,
                 std::vector<int> group, cudaStream_t comm_stream);
  DeviceMoeLayer(const DeviceMoeLayer&) = delete;
  DeviceMoeLayer& operator=(const DeviceMoeLayer&) = delete;
  ~DeviceMoeLayer();

  const MoeConfig& config() const { return cfg_; }
  int ep_rank() const { return ep_rank_; }
  int first_expert() const { return ep_rank_ * cfg_.experts_per_rank(); }
  cudaStream_t stream() const { return lin_.stream(); }

  // ---- forward ----
  void route(const DeviceMoeWeights& w, const float* x, int tokens, DeviceMoeTokenState& ts);
  void dispatch_pack(DeviceMoeTokenState& ts);
  void dispatch(DeviceMoeTokenState& ts, DeviceMoeExpertState& es);
  void experts_forward(const DeviceMoeWeights& w, DeviceMoeExpertState& es);
  void combine_pack(DeviceMoeExpertState& es);
  void shared_forward(const DeviceMoeWeights& w, DeviceMoeTokenState& ts);
  // out [tokens, hidden] = routed + shared (n_shared = 0: routed).
  void combine(DeviceMoeExpertState& es, DeviceMoeTokenState& ts, float* out);

  // ---- backward ----
  void combine_backward(DeviceMoeTokenState& ts, DeviceMoeExpertState& es, const float* dout);
  void experts_backward_input(const DeviceMoeWeights& w, DeviceMoeExpertState& es);
  void shared_backward_input(const DeviceMoeWeights& w, DeviceMoeTokenState& ts, const float* dout);
  void dispatch_backward(DeviceMoeExpertState& es, DeviceMoeTokenState& ts);
  // dx [tokens, hidden] = (dx_routed + dx_router) + dx_shared; d_scores [tokens, E] or null.
  void router_backward_input(const DeviceMoeWeights& w, DeviceMoeTokenState& ts, const float* d_scores, float* dx);

  // ---- weight passes (accumulate) ----
  // grads_by_src[s][e]: local expert e's accumulators for the rows from source member s.
  void experts_backward_weight(DeviceMoeExpertState& es, const std::vector<std::vector<DeviceFfnGrads>>& grads_by_src);
  void shared_backward_weight(DeviceMoeTokenState& ts, const float* dout, const DeviceFfnGrads& grads);
  void router_backward_weight(DeviceMoeTokenState& ts, float* d_router);

 private:
  // rows [row_offset.back(), hidden] FP32, peer d's from row row_offset[d] → buf (wire bytes; left
  // empty for exact), on compute.
  void encode_wire(const float* rows, const std::vector<std::size_t>& row_offset, Wire wire,
                   DeviceBuffer<uint8_t>& buf);
  // The inverse on compute: buf → FP32 rows (nothing for exact: the rows were received as they are).
  void decode_wire(const DeviceBuffer<uint8_t>& buf, const std::vector<std::size_t>& row_offset, Wire wire,
                   float* rows);
  // One all_to_all_v on the comm stream between the compute-side encode and decode (event
  // handoffs both ways); recv_wire is (re)allocated here.
  void transfer(const float* send_rows, const DeviceBuffer<uint8_t>& send_wire,
                const std::vector<std::size_t>& send_offset, float* recv_rows, DeviceBuffer<uint8_t>& recv_wire,
                const std::vector<std::size_t>& recv_offset, Wire wire, const char* label);
  void comm_after_compute();
  void compute_after_comm();

  MoeConfig cfg_;
  Blas& blas_;
  DeviceLinear& lin_;
  DeviceCommunicator& comm_;
  std::vector<int> group_;
  int ep_rank_ = 0;
  cudaStream_t comm_stream_;
  DeviceFfn expert_ffn_;
  DeviceFfn shared_ffn_;
  cudaEvent_t to_comm_ = nullptr, to_compute_ = nullptr;
};

}  // namespace tandem::cuda
