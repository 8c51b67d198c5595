#include "exec/ops/moe_layer/moe_layer_cuda.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>

#include "common/signed_index.h"
#include "exec/backends/cuda/infra/fp8_kernels.h"
#include "exec/backends/cuda/infra/elementwise.h"
#include "exec/ops/moe_layer/moe_cuda_kernels.h"

namespace tandem::cuda {

namespace {

void require(bool ok, const char* where, const std::string& what) {
  if (!ok) throw std::invalid_argument(std::string(where) + ": " + what);
}

std::size_t count_of(int64_t rows, int64_t cols) {
  return idx(rows) * idx(cols);
}

template <class T>
void upload(DeviceBuffer<T>& d, const std::vector<T>& h, cudaStream_t stream) {
  d = DeviceBuffer<T>(h.size());
  // Pageable H2D: the source is staged before the call returns, so h may die afterwards.
  if (!h.empty())
    check(cudaMemcpyAsync(d.get(), h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice, stream),
          "DeviceMoeLayer: index upload");
}


std::vector<comm::ConstBytes> blocks_of(const float* base, const std::vector<std::size_t>& offset, int cols) {
  std::vector<comm::ConstBytes> out(offset.size() - 1);
  for (std::size_t i = 0; i + 1 < offset.size(); ++i)
    out[i] = {base ? base + offset[i] * idx(cols) : nullptr,
              (offset[i + 1] - offset[i]) * idx(cols) * sizeof(float)};
  return out;
}
std::vector<comm::MutableBytes> blocks_of(float* base, const std::vector<std::size_t>& offset, int cols) {
  std::vector<comm::MutableBytes> out(offset.size() - 1);
  for (std::size_t i = 0; i + 1 < offset.size(); ++i)
    out[i] = {base ? base + offset[i] * idx(cols) : nullptr,
              (offset[i + 1] - offset[i]) * idx(cols) * sizeof(float)};
  return out;
}

std::vector<std::size_t> prefix(const std::vector<std::size_t>& sizes) {
  std::vector<std::size_t> o(sizes.size() + 1, 0);
  for (std::size_t i = 0; i < sizes.size(); ++i) o[i + 1] = o[i] + sizes[i];
  return o;
}

std::size_t align16(std::size_t n) { return (n + 15) / 16 * 16; }

// Where the peers' blocks lie in a transfer's wire buffer (moe_layer.h, "Wire bytes").
struct WireBlocks {
  std::vector<std::size_t> offset;  // [peers + 1]
  std::vector<std::size_t> bytes;   // [peers], what all_to_all_v moves
};
WireBlocks wire_blocks(Wire wire, const std::vector<std::size_t>& row_offset, int cols) {
  const std::size_t peers = row_offset.size() - 1;
  WireBlocks b;
  b.offset.assign(peers + 1, 0);
  b.bytes.assign(peers, 0);
  for (std::size_t i = 0; i < peers; ++i) {
    b.bytes[i] = moe_wire_block_bytes(wire, row_offset[i + 1] - row_offset[i], cols);
    b.offset[i + 1] = b.offset[i] + (wire == Wire::fp8 ? align16(b.bytes[i]) : b.bytes[i]);
  }
  return b;
}

}  // namespace

std::size_t moe_wire_block_bytes(Wire wire, std::size_t rows, int cols) {
  const std::size_t n = rows * idx(cols);
  switch (wire) {
    case Wire::exact: return n * sizeof(float);
    case Wire::bf16: return n * sizeof(uint16_t);
    case Wire::fp8: return align16(n) + idx(k_blocks(cols)) * rows * sizeof(float);
  }
  throw std::invalid_argument("moe_wire_block_bytes: unknown wire");
}

// ---- the layer ----

DeviceMoeLayer::DeviceMoeLayer(const MoeConfig& cfg, Blas& blas, DeviceLinear& linear, DeviceCommunicator& comm,
                               std::vector<int> group, cudaStream_t comm_stream)
    : cfg_(cfg),
      blas_(blas),
      lin_(linear),
      comm_(comm),
      group_(std::move(group)),
      comm_stream_(comm_stream),
      expert_ffn_(linear, cfg.hidden > 0 ? cfg.hidden : 1, cfg.moe_inter > 0 ? cfg.moe_inter : 1),
      shared_ffn_(linear, cfg.hidden > 0 ? cfg.hidden : 1,
                  cfg.n_shared > 0 && cfg.moe_inter > 0 ? cfg.n_shared * cfg.moe_inter : 1) {
  cfg_.validate();
  check_device_router(cfg_.router);
  require(blas.stream() == linear.stream(), "DeviceMoeLayer", "blas must run on the DeviceLinear's stream");
  require(static_cast<int>(group_.size()) == cfg_.ep.ep, "DeviceMoeLayer", "group must hold cfg.ep ranks");
  const auto it = std::find(group_.begin(), group_.end(), comm.rank());
  require(it != group_.end(), "DeviceMoeLayer", "group must contain this rank");
  ep_rank_ = static_cast<int>(it - group_.begin());
  check(cudaEventCreateWithFlags(&to_comm_, cudaEventDisableTiming), "DeviceMoeLayer: cudaEventCreate");
  check(cudaEventCreateWithFlags(&to_compute_, cudaEventDisableTiming), "DeviceMoeLayer: cudaEventCreate");
}

DeviceMoeLayer::~DeviceMoeLayer() {
  if (to_comm_) cudaEventDestroy(to_comm_);
  if (to_compute_) cudaEventDestroy(to_compute_);
}

void DeviceMoeLayer::comm_after_compute() {
  check(cudaEventRecord(to_comm_, stream()), "DeviceMoeLayer: cudaEventRecord");
  check(cudaStreamWaitEvent(comm_stream_, to_comm_, 0), "DeviceMoeLayer: cudaStreamWaitEvent");
}

void DeviceMoeLayer::compute_after_comm() {
  check(cudaEventRecord(to_compute_, comm_stream_), "DeviceMoeLayer: cudaEventRecord");
  check(cudaStreamWaitEvent(stream(), to_compute_, 0), "DeviceMoeLayer: cudaStreamWaitEvent");
}

void DeviceMoeLayer::encode_wire(const float* rows, const std::vector<std::size_t>& row_offset, Wire wire,
                                 DeviceBuffer<uint8_t>& buf) {
  const int H = cfg_.hidden;
  if (wire == Wire::exact) {  // the FP32 rows travel as they are
    buf = DeviceBuffer<uint8_t>();
    return;
  }
  const WireBlocks b = wire_blocks(wire, row_offset, H);
  buf = DeviceBuffer<uint8_t>(b.offset.back());
  const std::size_t n = row_offset.back();
  if (n == 0) return;
  if (wire == Wire::bf16) {  // blocks back to back: one kernel for every peer
    pack_bf16(rows, static_cast<int>(n), H, reinterpret_cast<uint16_t*>(buf.get()), stream());
    return;
  }
  // fp8: each peer's rows quantised as one [n_d, H] matrix (rows are independent: each row gets
  // the codes and scales exec/fp8 gives it), codes then scales inside the peer's block.
  for (std::size_t d = 0; d + 1 < row_offset.size(); ++d) {
    const std::size_t nd = row_offset[d + 1] - row_offset[d];
    if (nd == 0) continue;
    uint8_t* block = buf.get() + b.offset[d];
    quantize_rowwise(rows + count_of(static_cast<int64_t>(row_offset[d]), H), static_cast<int>(nd), H, block,
                     reinterpret_cast<float*>(block + align16(count_of(static_cast<int64_t>(nd), H))),
                     /*pow2_scales=*/true, stream());
  }
}

void DeviceMoeLayer::decode_wire(const DeviceBuffer<uint8_t>& buf, const std::vector<std::size_t>& row_offset,
                                 Wire wire, float* rows) {
  const int H = cfg_.hidden;
  const std::size_t n = row_offset.back();
  if (wire == Wire::exact || n == 0) return;
  if (wire == Wire::bf16) {
    unpack_bf16(reinterpret_cast<const uint16_t*>(buf.get()), static_cast<int>(n), H, rows, stream());
    return;
  }
  const WireBlocks b = wire_blocks(wire, row_offset, H);
  for (std::size_t s = 0; s + 1 < row_offset.size(); ++s) {
    const std::size_t ns = row_offset[s + 1] - row_offset[s];
    if (ns == 0) continue;
    const uint8_t* block = buf.get() + b.offset[s];
    dequantize_rowwise(block, reinterpret_cast<const float*>(block + align16(count_of(static_cast<int64_t>(ns), H))),
                       static_cast<int>(ns), H, rows + count_of(static_cast<int64_t>(row_offset[s]), H), stream());
  }
}

void DeviceMoeLayer::transfer(const float* send_rows, const DeviceBuffer<uint8_t>& send_wire,
                              const std::vector<std::size_t>& send_offset, float* recv_rows,
                              DeviceBuffer<uint8_t>& recv_wire, const std::vector<std::size_t>& recv_offset,
                              Wire wire, const char* label) {
  const int H = cfg_.hidden;
  std::vector<comm::ConstBytes> send;
  std::vector<comm::MutableBytes> recv;
  if (wire == Wire::exact) {
    recv_wire = DeviceBuffer<uint8_t>();
    send = blocks_of(send_rows, send_offset, H);
    recv = blocks_of(recv_rows, recv_offset, H);
  } else {
    const WireBlocks sb = wire_blocks(wire, send_offset, H), rb = wire_blocks(wire, recv_offset, H);
    require(send_wire.size() == sb.offset.back(), "DeviceMoeLayer", std::string(label) + ": send wire not packed");
    recv_wire = DeviceBuffer<uint8_t>(rb.offset.back());
    send.resize(sb.bytes.size());
    recv.resize(rb.bytes.size());
    for (std::size_t i = 0; i < sb.bytes.size(); ++i)
      send[i] = {send_wire.get() ? send_wire.get() + sb.offset[i] : nullptr, sb.bytes[i]};
    for (std::size_t i = 0; i < rb.bytes.size(); ++i)
      recv[i] = {recv_wire.get() ? recv_wire.get() + rb.offset[i] : nullptr, rb.bytes[i]};
  }
  comm_after_compute();
  comm_.all_to_all_v(group_, send, recv, label, comm_stream_);
  compute_after_comm();
  decode_wire(recv_wire, recv_offset, wire, recv_rows);
}

// ---- forward ----

void DeviceMoeLayer::route(const DeviceMoeWeights& w, const float* x, int tokens, DeviceMoeTokenState& ts) {
  require(tokens >= 0, "DeviceMoeLayer::route", "negative tokens");
  const int E = cfg_.router.n_routed, K = cfg_.router.top_k, H = cfg_.hidden;
  ts.tokens = tokens;
  ts.x = x;
  ts.scores = DeviceBuffer<float>(count_of(tokens, E));
  ts.expert = DeviceBuffer<int32_t>(count_of(tokens, K));
  ts.gate = DeviceBuffer<float>(count_of(tokens, K));
  ts.expert_host.assign(count_of(tokens, K), 0);
  if (tokens > 0) {
    router_forward(blas_, x, w.router, tokens, H, w.bias, cfg_.router, ts.scores.get(), ts.expert.get(),
                   ts.gate.get());
    check(cudaMemcpyAsync(ts.expert_host.data(), ts.expert.get(), ts.expert_host.size() * sizeof(int32_t),
                          cudaMemcpyDeviceToHost, stream()),
          "DeviceMoeLayer::route: routing D2H");
    check(cudaStreamSynchronize(stream()), "DeviceMoeLayer::route: synchronise");
  }
  ts.plan = spec::make_dispatch_plan(cfg_.ep, tokens, K, ts.expert_host);
  ts.rows_to.assign(idx(cfg_.ep.ep), 0);
  for (int d = 0; d < cfg_.ep.ep; ++d) ts.rows_to[idx(d)] = ts.plan.to[idx(d)].size();
  ts.row_offset = prefix(ts.rows_to);
  const std::size_t n = ts.row_offset.back();
  std::vector<int32_t> send_token(n), send_slot(n), slot_row(count_of(tokens, K), -1);
  for (int d = 0; d < cfg_.ep.ep; ++d) {
    const auto& rows = ts.plan.to[idx(d)];
    for (std::size_t i = 0; i < rows.size(); ++i) {
      const std::size_t at = ts.row_offset[idx(d)] + i;
      const int32_t slot = rows[i].token * K + rows[i].slot;
      send_token[at] = rows[i].token;
      send_slot[at] = slot;
      slot_row[idx(slot)] = static_cast<int32_t>(at);
    }
  }
  upload(ts.send_token, send_token, stream());
  upload(ts.send_slot, send_slot, stream());
  upload(ts.slot_row, slot_row, stream());
  upload(ts.ones, std::vector<float>(count_of(tokens, K), 1.0f), stream());
}

void DeviceMoeLayer::dispatch_pack(DeviceMoeTokenState& ts) {
  const int H = cfg_.hidden;
  const std::size_t n = ts.row_offset.empty() ? 0 : ts.row_offset.back();
  ts.send = DeviceBuffer<float>(count_of(static_cast<int64_t>(n), H));
  gather_rows(ts.x, ts.send_token.get(), static_cast<int>(n), H, ts.send.get(), stream());
  encode_wire(ts.send.get(), ts.row_offset, cfg_.dispatch_wire, ts.send_wire);
}

void DeviceMoeLayer::dispatch(DeviceMoeTokenState& ts, DeviceMoeExpertState& es) {
  const int H = cfg_.hidden, ep = cfg_.ep.ep;
  require(ts.row_offset.size() == idx(ep) + 1, "DeviceMoeLayer::dispatch", "route first");
  // The expert ids travel on the host (they are host data on both sides; their sizes are the counts).
  std::vector<std::vector<int32_t>> ids_to(idx(ep));
  std::vector<comm::ConstBytes> id_send(idx(ep));
  for (int d = 0; d < ep; ++d) {
    auto& ids = ids_to[idx(d)];
    for (const DispatchRow& r : ts.plan.to[idx(d)]) ids.push_back(r.expert);
    id_send[idx(d)] = {ids.empty() ? nullptr : ids.data(), ids.size() * sizeof(int32_t)};
  }
  std::vector<std::vector<std::byte>> id_recv;
  comm_.host().all_to_all_v(group_, id_send, id_recv, "moe dispatch ids");
  require(id_recv.size() == idx(ep), "DeviceMoeLayer::dispatch", "one id list per member");
  std::vector<std::vector<int32_t>> ids_from(idx(ep));
  for (int s = 0; s < ep; ++s) {
    const auto& b = id_recv[idx(s)];
    require(b.size() % sizeof(int32_t) == 0, "DeviceMoeLayer::dispatch", "id list of a partial int32");
    auto& ids = ids_from[idx(s)];
    ids.resize(b.size() / sizeof(int32_t));
    if (!b.empty()) std::memcpy(ids.data(), b.data(), b.size());
  }
  es.layout = spec::make_segment_layout(cfg_.ep, ep_rank_, cfg_.align, ids_from);
  es.rows_from.assign(idx(ep), 0);
  for (int s = 0; s < ep; ++s) es.rows_from[idx(s)] = ids_from[idx(s)].size();
  es.row_offset = prefix(es.rows_from);
  const std::size_t nrecv = es.row_offset.back();
  const int64_t total = es.layout.total_rows();
  require(total <= std::numeric_limits<int32_t>::max(), "DeviceMoeLayer::dispatch", "too many segment rows");
  std::vector<int32_t> seg_src(idx(total), -1), back_row(nrecv);
  for (int s = 0; s < ep; ++s) {
    const auto& places = es.layout.from[idx(s)];
    for (std::size_t i = 0; i < places.size(); ++i) {
      const int64_t seg_row = es.layout.offset[idx(places[i].expert)] + places[i].row;
      const std::size_t at = es.row_offset[idx(s)] + i;
      seg_src[idx(seg_row)] = static_cast<int32_t>(at);
      back_row[at] = static_cast<int32_t>(seg_row);
    }
  }
  upload(es.seg_src, seg_src, stream());
  upload(es.back_row, back_row, stream());
  es.recv = DeviceBuffer<float>(count_of(static_cast<int64_t>(nrecv), H));

  transfer(ts.send.get(), ts.send_wire, ts.row_offset, es.recv.get(), es.recv_wire, es.row_offset, cfg_.dispatch_wire,
           "moe dispatch");

  es.x = DeviceBuffer<float>(count_of(total, H));
  gather_rows(es.recv.get(), es.seg_src.get(), static_cast<int>(total), H, es.x.get(), stream());
}

void DeviceMoeLayer::experts_forward(const DeviceMoeWeights& w, DeviceMoeExpertState& es) {
  const int H = cfg_.hidden, n = es.layout.n_local;
  require(static_cast<int>(w.experts.size()) == n, "DeviceMoeLayer::experts_forward",
          "w.experts must hold the member's local experts");
  es.saved.clear();
  es.saved.resize(idx(n));
  es.y = DeviceBuffer<float>(count_of(es.layout.total_rows(), H));
  for (int e = 0; e < n; ++e) {
    const auto i = idx(e);
    const int64_t rows = es.layout.padded[i];
    if (rows == 0) continue;  // zero-row experts are skipped, as on the CPU
    const std::size_t off = count_of(es.layout.offset[i], H);
    expert_ffn_.forward(w.experts[i], es.x.get() + off, static_cast<int>(rows), es.y.get() + off, &es.saved[i]);
  }
}

void DeviceMoeLayer::combine_pack(DeviceMoeExpertState& es) {
  const int H = cfg_.hidden;
  const std::size_t nrecv = es.row_offset.empty() ? 0 : es.row_offset.back();
  es.send = DeviceBuffer<float>(count_of(static_cast<int64_t>(nrecv), H));
  gather_rows(es.y.get(), es.back_row.get(), static_cast<int>(nrecv), H, es.send.get(), stream());
  encode_wire(es.send.get(), es.row_offset, cfg_.combine_wire, es.send_wire);
}

void DeviceMoeLayer::shared_forward(const DeviceMoeWeights& w, DeviceMoeTokenState& ts) {
  if (cfg_.n_shared == 0) return;
  ts.shared_out = DeviceBuffer<float>(count_of(ts.tokens, cfg_.hidden));
  shared_ffn_.forward(w.shared, ts.x, ts.tokens, ts.shared_out.get(), &ts.shared_saved);
}

void DeviceMoeLayer::combine(DeviceMoeExpertState& es, DeviceMoeTokenState& ts, float* out) {
  const int H = cfg_.hidden, K = cfg_.router.top_k;
  const std::size_t n = ts.row_offset.back();
  ts.recv = DeviceBuffer<float>(count_of(static_cast<int64_t>(n), H));
  transfer(es.send.get(), es.send_wire, es.row_offset, ts.recv.get(), ts.recv_wire, ts.row_offset, cfg_.combine_wire,
           "moe combine");
  const std::size_t tn = count_of(ts.tokens, H);
  ts.routed = DeviceBuffer<float>(tn);
  combine_rows(ts.recv.get(), ts.slot_row.get(), ts.gate.get(), ts.tokens, K, H, ts.routed.get(), stream());
  if (cfg_.n_shared > 0) {
    require(ts.shared_out.size() == tn, "DeviceMoeLayer::combine", "run shared_forward first");
    add(ts.routed.get(), ts.shared_out.get(), tn, out, stream());
  } else if (tn > 0) {
    check(cudaMemcpyAsync(out, ts.routed.get(), tn * sizeof(float), cudaMemcpyDeviceToDevice, stream()),
          "DeviceMoeLayer::combine: copy");
  }
}

// ---- backward ----

void DeviceMoeLayer::combine_backward(DeviceMoeTokenState& ts, DeviceMoeExpertState& es, const float* dout) {
  const int H = cfg_.hidden, K = cfg_.router.top_k;
  const int tokens = ts.tokens;
  const std::size_t n = ts.row_offset.back();
  require(ts.recv.size() == count_of(static_cast<int64_t>(n), H), "DeviceMoeLayer::combine_backward",
          "run combine first");
  // d_gate(t, k) = <y_{t,k}, dout_t>, from the y the forward combine received (after its wire).
  ts.y_slots = DeviceBuffer<float>(count_of(static_cast<int64_t>(tokens) * K, H));
  gather_rows(ts.recv.get(), ts.slot_row.get(), tokens * K, H, ts.y_slots.get(), stream());
  ts.d_gate = DeviceBuffer<float>(count_of(tokens, K));
  if (tokens > 0)
    blas_.gemm_strided_batched(false, true, 1, K, H, 1.0f, dout, H, H, ts.y_slots.get(), H,
                               static_cast<long long>(K) * H, 0.0f, ts.d_gate.get(), K, K, tokens);
  // Rows gate(t,k) · dout_t in the dispatch order (combine_rows with k = 1: 0 + g·dout, exact).
  ts.gate_send = DeviceBuffer<float>(n);
  gather_rows(ts.gate.get(), ts.send_slot.get(), static_cast<int>(n), 1, ts.gate_send.get(), stream());
  ts.send_b = DeviceBuffer<float>(count_of(static_cast<int64_t>(n), H));
  combine_rows(dout, ts.send_token.get(), ts.gate_send.get(), static_cast<int>(n), 1, H, ts.send_b.get(), stream());
  encode_wire(ts.send_b.get(), ts.row_offset, cfg_.combine_grad_wire, ts.send_b_wire);

  const std::size_t nrecv = es.row_offset.back();
  es.recv_b = DeviceBuffer<float>(count_of(static_cast<int64_t>(nrecv), H));
  transfer(ts.send_b.get(), ts.send_b_wire, ts.row_offset, es.recv_b.get(), es.recv_b_wire, es.row_offset,
           cfg_.combine_grad_wire, "moe combine_b");
  const int64_t total = es.layout.total_rows();
  es.dy = DeviceBuffer<float>(count_of(total, H));
  gather_rows(es.recv_b.get(), es.seg_src.get(), static_cast<int>(total), H, es.dy.get(), stream());
}

void DeviceMoeLayer::experts_backward_input(const DeviceMoeWeights& w, DeviceMoeExpertState& es) {
  const int H = cfg_.hidden, n = es.layout.n_local;
  require(static_cast<int>(w.experts.size()) == n, "DeviceMoeLayer::experts_backward_input",
          "w.experts must hold the member's local experts");
  require(static_cast<int>(es.saved.size()) == n, "DeviceMoeLayer::experts_backward_input", "run experts_forward first");
  es.in_grad.clear();
  es.in_grad.resize(idx(n));
  es.dx = DeviceBuffer<float>(count_of(es.layout.total_rows(), H));
  for (int e = 0; e < n; ++e) {
    const auto i = idx(e);
    if (es.layout.padded[i] == 0) continue;
    const std::size_t off = count_of(es.layout.offset[i], H);
    expert_ffn_.backward_input(w.experts[i], es.saved[i], es.dy.get() + off, es.dx.get() + off, es.in_grad[i]);
  }
  const std::size_t nrecv = es.row_offset.back();
  es.send_b = DeviceBuffer<float>(count_of(static_cast<int64_t>(nrecv), H));
  gather_rows(es.dx.get(), es.back_row.get(), static_cast<int>(nrecv), H, es.send_b.get(), stream());
  encode_wire(es.send_b.get(), es.row_offset, cfg_.dispatch_grad_wire, es.send_b_wire);
}

void DeviceMoeLayer::shared_backward_input(const DeviceMoeWeights& w, DeviceMoeTokenState& ts, const float* dout) {
  if (cfg_.n_shared == 0) return;
  ts.shared_dx = DeviceBuffer<float>(count_of(ts.tokens, cfg_.hidden));
  shared_ffn_.backward_input(w.shared, ts.shared_saved, dout, ts.shared_dx.get(), ts.shared_grad);
}

void DeviceMoeLayer::dispatch_backward(DeviceMoeExpertState& es, DeviceMoeTokenState& ts) {
  const int H = cfg_.hidden, K = cfg_.router.top_k;
  const std::size_t n = ts.row_offset.back();
  ts.recv_b = DeviceBuffer<float>(count_of(static_cast<int64_t>(n), H));
  transfer(es.send_b.get(), es.send_b_wire, es.row_offset, ts.recv_b.get(), ts.recv_b_wire, ts.row_offset,
           cfg_.dispatch_grad_wire, "moe dispatch_b");
  ts.dx_routed = DeviceBuffer<float>(count_of(ts.tokens, H));
  combine_rows(ts.recv_b.get(), ts.slot_row.get(), ts.ones.get(), ts.tokens, K, H, ts.dx_routed.get(), stream());
}

void DeviceMoeLayer::router_backward_input(const DeviceMoeWeights& w, DeviceMoeTokenState& ts, const float* d_scores,
                                           float* dx) {
  const int E = cfg_.router.n_routed, H = cfg_.hidden, tokens = ts.tokens;
  require(ts.d_gate.size() == count_of(tokens, cfg_.router.top_k), "DeviceMoeLayer::router_backward_input",
          "run combine_backward first");
  ts.d_logits = DeviceBuffer<float>(count_of(tokens, E));
  ts.dx_router = DeviceBuffer<float>(count_of(tokens, H));
  if (tokens == 0) return;
  router_backward_logits(ts.scores.get(), ts.expert.get(), ts.d_gate.get(), d_scores, tokens, cfg_.router,
                         ts.d_logits.get(), stream());
  blas_.gemm(false, false, tokens, H, E, 1.0f, ts.d_logits.get(), E, w.router, H, 0.0f, ts.dx_router.get(), H);
  const std::size_t tn = count_of(tokens, H);
  require(ts.dx_routed.size() == tn, "DeviceMoeLayer::router_backward_input", "run dispatch_backward first");
  require(cfg_.n_shared == 0 || ts.shared_dx.size() == tn, "DeviceMoeLayer::router_backward_input",
          "run shared_backward_input first");
  add(ts.dx_routed.get(), ts.dx_router.get(), tn, dx, stream());
  if (cfg_.n_shared > 0) add(dx, ts.shared_dx.get(), tn, dx, stream());
}

// ---- weight passes ----

void DeviceMoeLayer::experts_backward_weight(DeviceMoeExpertState& es,
                                             const std::vector<std::vector<DeviceFfnGrads>>& grads_by_src) {
  const int H = cfg_.hidden, I = cfg_.moe_inter, n = es.layout.n_local, ep = cfg_.ep.ep;
  require(static_cast<int>(grads_by_src.size()) == ep, "DeviceMoeLayer::experts_backward_weight",
          "grads_by_src must hold one entry per source member");
  for (const auto& g : grads_by_src)
    require(static_cast<int>(g.size()) == n, "DeviceMoeLayer::experts_backward_weight",
            "grads_by_src[s] must hold the member's local experts");
  require(static_cast<int>(es.in_grad.size()) == n, "DeviceMoeLayer::experts_backward_weight",
          "run experts_backward_input first");
  // DeviceFfn::backward_weight on the rows of one source: they are contiguous in the segment
  // (segments are ordered by source), so each source's gradient sees exactly its rows, in order.
  for (int e = 0; e < n; ++e) {
    const auto i = idx(e);
    if (es.layout.padded[i] == 0) continue;
    const float* dy = es.dy.get() + count_of(es.layout.offset[i], H);
    for (int s = 0; s < ep; ++s) {
      const int64_t first = es.layout.src_first[i][idx(s)];
      const int count = static_cast<int>(es.layout.src_count[i][idx(s)]);
      if (count == 0) continue;
      const DeviceFfnGrads& g = grads_by_src[idx(s)][i];
      lin_.backward_weight(ConstDeviceMat(dy + count_of(first, H), count, H),
                           ConstDeviceMat(es.in_grad[i].swiglu_out.get() + count_of(first, I), count, I),
                           DeviceMat(g.down, H, I));
      const DeviceMat parts[2] = {DeviceMat(g.gate, I, H), DeviceMat(g.up, I, H)};
      lin_.backward_weight_split(ConstDeviceMat(es.in_grad[i].d_gate_up.get() + count_of(first, 2 * I), count, 2 * I),
                                 ConstDeviceMat(es.saved[i].x + count_of(first, H), count, H), parts, 2);
    }
  }
}

void DeviceMoeLayer::shared_backward_weight(DeviceMoeTokenState& ts, const float* dout, const DeviceFfnGrads& grads) {
  if (cfg_.n_shared == 0) return;
  shared_ffn_.backward_weight(ts.shared_saved, ts.shared_grad, dout, grads);
}

void DeviceMoeLayer::router_backward_weight(DeviceMoeTokenState& ts, float* d_router) {
  const int E = cfg_.router.n_routed, H = cfg_.hidden;
  if (ts.tokens == 0) return;
  require(ts.d_logits.size() == count_of(ts.tokens, E), "DeviceMoeLayer::router_backward_weight",
          "run router_backward_input first");
  blas_.gemm(true, false, E, H, ts.tokens, 1.0f, ts.d_logits.get(), E, ts.x, H, 1.0f, d_router, H);
}

}  // namespace tandem::cuda
