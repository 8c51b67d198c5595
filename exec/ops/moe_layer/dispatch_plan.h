// Expert parallelism on the CPU reference: the EP layout, the dispatch plan of a micro-batch, and
// the byte buffers of the four all-to-all-v transfers of an MoE layer (deepseek-v3.md §5):
//
//   forward   dispatch     token side → expert side   rows x_t, one per (token, slot)
//             combine      expert side → token side   rows y_{t,k} (expert outputs, unweighted)
//   backward  combine_b    token side → expert side   rows g_{t,k} · dy_t (grad of y_{t,k})
//             dispatch_b   expert side → token side   rows dx_{t,k} (grad of the expert input)
//
// Layout and order (everything is deterministic and independent of ep):
//   * EP layout: expert e lives on member e / (E/ep); member r owns experts [r·E/ep, (r+1)·E/ep).
//   * Token side: one row per (token t, slot k) whose expert lives on member d, listed in the
//     buffer for d in (t, k) order (DispatchPlan). Slot s = t·K + k.
//   * Expert side: the rows received from every source are placed in per-local-expert contiguous
//     segments ordered by (source member, t, k); each segment is zero-padded to a multiple of 128
//     rows (DeepGEMM's contiguous layout; cuBLASLt wants M a multiple of 4). The contiguous
//     offsets are SegmentLayout::offset; the CPU keeps one padded matrix per local expert.
//   * Transfers back (combine, dispatch_b) send, to each source, its rows in the order it sent
//     them; the token side scatters them to slot order [tokens·K, cols].
//   * The weighted sum over k runs in k order 0..K-1 on the token side (combine).
// Hence an expert sees the same rows in the same order whatever ep is, when the ep members' token
// blocks are the single-rank batch cut in order (member 0's tokens first): EP runs and the
// single-rank reference agree bit for bit (tests/exec/ops).
//
// Buffers: std::vector<std::byte>, one per peer, for a communicator's all_to_all_v (the
// communicator only moves bytes). Each starts with a 24-byte header (six little-endian uint32:
// magic "TMOE", transfer kind, wire format, bytes per element, rows, cols); a dispatch buffer then
// carries the rows' global expert ids (int32 each) so the receiver can build its segments; then
// the payload in the wire format:
//   Wire::exact  rows·cols elements of T (FP32 for float, FP64 for double): lossless;
//   Wire::bf16   rows·cols BF16 (round to nearest even; a double goes through float);
//   Wire::fp8    rows·cols E4M3 codes, then ceil(cols/128)·rows FP32 scales in the VEC128 layout
//                (scales[kb·rows + r]); every row quantised 1x128 with power-of-two scales
//                (exec/fp8 quantize_rowwise), as DeepSeek-V3 sends its dispatch (§5.1, §6.1).
//                A row's codes and scales depend on that row only, so EP and reference agree.
// DeepSeek-V3's choice: dispatch and combine_b in FP8, combine and dispatch_b in BF16.
// The receiver dequantises into T; dispatch_unpack can also hand the FP8 segments over as they
// came (per-segment RowwiseFp8, what a GPU backend feeds to its FP8 grouped GEMM).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "exec/fp8/quantize.h"
#include "exec/ops/router/router.h"
#include "exec/spec/dispatch_plan.h"
#include "exec/spec/moe_config.h"

namespace tandem::moe {

using Buffer = std::vector<std::byte>;

// exec/spec: one definition of each for every backend, the index plans included.
using spec::DispatchPlan;
using spec::DispatchRow;
using spec::EpLayout;
using spec::kSegmentAlign;
using spec::SegmentLayout;
using spec::Wire;

// Groups and nodes (router.h): group g = experts [g·E/G, (g+1)·E/G); with ranks numbered
// node-major, gpus_per_node to a node, node n = ranks [n·gpn, (n+1)·gpn).
int group_of_expert(const RouterConfig& cfg, int expert);
int node_of_expert(const EpLayout& layout, int expert, int gpus_per_node);
// True when group g is exactly the experts of node g for every g (ep == n_group · gpus_per_node),
// i.e. when the group limit is the node limit.
bool groups_are_nodes(const RouterConfig& cfg, const EpLayout& layout, int gpus_per_node);

// ---- token side ---------------------------------------------------------------------------------

// The plan of a micro-batch's routing (spec::make_dispatch_plan on its expert ids).
inline DispatchPlan make_dispatch_plan(const EpLayout& layout, const Routing& routing) {
  return spec::make_dispatch_plan(layout, routing.tokens, routing.top_k, routing.expert);
}

// Dispatch: x [tokens, hidden] → one buffer per destination member.
template <class T>
std::vector<Buffer> pack_dispatch(const DispatchPlan& plan, const Mat<T>& x, Wire wire);
// Combine (receive): buffers from every member → y_slots [tokens·K, cols], row t·K + k = y_{t,k}.
template <class T>
Mat<T> unpack_combine(const DispatchPlan& plan, const std::vector<Buffer>& recv);
// combine_b (send): rows [tokens·K, cols] in slot order → one buffer per destination member.
template <class T>
std::vector<Buffer> pack_combine_grad(const DispatchPlan& plan, const Mat<T>& dy_slots, Wire wire);
// dispatch_b (receive): buffers from every member → dx_slots [tokens·K, cols].
template <class T>
Mat<T> unpack_dispatch_grad(const DispatchPlan& plan, const std::vector<Buffer>& recv);

// out_t = Σ_{k=0..K-1} gate(t,k) · y_slots(t·K + k), accumulated in k order, in T.
template <class T>
Mat<T> weighted_sum_slots(const Mat<T>& y_slots, const Mat<T>& gate);
template <class T>
struct SlotGrad {
  Mat<T> d_gate;    // [tokens, K]: d_gate(t,k) = Σ_c y_{t,k}[c] · dout_t[c], c in order
  Mat<T> dy_slots;  // [tokens·K, cols]: gate(t,k) · dout_t
};
template <class T>
SlotGrad<T> weighted_sum_slots_backward(const Mat<T>& y_slots, const Mat<T>& gate, const Mat<T>& dout);
// dx_t = Σ_{k=0..K-1} dx_slots(t·K + k), in k order.
template <class T>
Mat<T> sum_slots(const Mat<T>& dx_slots, int top_k);

// ---- expert side --------------------------------------------------------------------------------

// The rows an expert member received: where each lives (spec::SegmentLayout, built from the
// dispatch buffers' expert ids by spec::make_segment_layout) and the padded segments.
template <class T>
struct ExpertRows {
  SegmentLayout layout;
  std::vector<Mat<T>> x;  // [n_local] padded segments [padded[e], cols], padding rows zero
};

// Dispatch (receive) on member `rank`: recv[s] = the buffer member s sent here. With Wire::fp8
// and fp8_segments != nullptr, also the received FP8 rows per segment as they came (padding rows:
// code 0, scale 1 — what quantising a zero row gives), scales per segment [kb·padded + r].
template <class T>
ExpertRows<T> unpack_dispatch(const EpLayout& layout, int rank, const std::vector<Buffer>& recv,
                              int align = kSegmentAlign,
                              std::vector<fp8::RowwiseFp8>* fp8_segments = nullptr);
// Combine (send): expert outputs per local expert (padded segments) → one buffer per source.
template <class T>
std::vector<Buffer> pack_combine(const SegmentLayout& seg, const std::vector<Mat<T>>& y, Wire wire);
// combine_b (receive): buffers from every source → grads per local expert, padded like forward.
template <class T>
std::vector<Mat<T>> unpack_combine_grad(const SegmentLayout& seg, const std::vector<Buffer>& recv);
// dispatch_b (send): input grads per local expert → one buffer per source.
template <class T>
std::vector<Buffer> pack_dispatch_grad(const SegmentLayout& seg, const std::vector<Mat<T>>& dx, Wire wire);

}  // namespace tandem::moe
