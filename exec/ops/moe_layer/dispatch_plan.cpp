#include "exec/ops/moe_layer/dispatch_plan.h"

#include <climits>
#include <cstring>
#include <stdexcept>
#include <string>

#include "common/signed_index.h"
#include "exec/fp8/bf16.h"

namespace tandem::moe {

int group_of_expert(const RouterConfig& cfg, int expert) { return expert / cfg.experts_per_group(); }

int node_of_expert(const EpLayout& layout, int expert, int gpus_per_node) {
  return layout.owner(expert) / gpus_per_node;
}

bool groups_are_nodes(const RouterConfig& cfg, const EpLayout& layout, int gpus_per_node) {
  return gpus_per_node > 0 && cfg.n_routed == layout.n_routed &&
         layout.ep == cfg.n_group * gpus_per_node;
}

namespace {

enum class Kind : uint32_t { dispatch = 1, combine = 2, combine_grad = 3, dispatch_grad = 4 };
constexpr uint32_t kMagic = 0x454f4d54u;  // "TMOE" little-endian
constexpr size_t kHeaderBytes = 6 * sizeof(uint32_t);

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::dispatch: return "dispatch";
    case Kind::combine: return "combine";
    case Kind::combine_grad: return "combine_b";
    case Kind::dispatch_grad: return "dispatch_b";
  }
  return "?";
}

template <class T>
uint32_t elem_bytes(Wire w) {
  switch (w) {
    case Wire::exact: return sizeof(T);
    case Wire::bf16: return 2;
    case Wire::fp8: return 1;
  }
  throw std::invalid_argument("moe wire: unknown format");
}

void put(Buffer& b, const void* p, size_t n) {
  const size_t at = b.size();
  b.resize(at + n);
  if (n) std::memcpy(b.data() + at, p, n);
}

struct Header {
  Kind kind;
  Wire wire;
  uint32_t elem, rows, cols;
};

struct Reader {
  const Buffer& b;
  size_t at = 0;
  void get(void* p, size_t n) {
    if (at + n > b.size()) throw std::runtime_error("moe wire: buffer too short");
    if (n) std::memcpy(p, b.data() + at, n);
    at += n;
  }
};

// Header, then (dispatch only) the expert ids; the buffer is reserved for the whole payload.
template <class T>
Buffer start(Kind kind, Wire wire, int64_t rows, int64_t cols) {
  if (rows > INT32_MAX || cols > INT32_MAX) throw std::invalid_argument("moe wire: too many rows or columns");
  const uint32_t h[6] = {kMagic, static_cast<uint32_t>(kind), static_cast<uint32_t>(wire),
                         elem_bytes<T>(wire), static_cast<uint32_t>(rows), static_cast<uint32_t>(cols)};
  size_t payload = idx(rows * cols) * elem_bytes<T>(wire);
  if (wire == Wire::fp8) payload += idx(rows * ((cols + fp8::kBlock - 1) / fp8::kBlock)) * sizeof(float);
  Buffer b;
  b.reserve(kHeaderBytes + (kind == Kind::dispatch ? idx(rows) * sizeof(int32_t) : 0) + payload);
  put(b, h, sizeof h);
  return b;
}

template <class T>
Header read_header(Reader& r, Kind expect) {
  uint32_t h[6];
  r.get(h, sizeof h);
  if (h[0] != kMagic) throw std::runtime_error("moe wire: bad magic");
  Header hd{static_cast<Kind>(h[1]), static_cast<Wire>(h[2]), h[3], h[4], h[5]};
  if (hd.kind != expect)
    throw std::runtime_error(std::string("moe wire: expected a ") + kind_name(expect) + " buffer");
  if (hd.wire != Wire::exact && hd.wire != Wire::bf16 && hd.wire != Wire::fp8)
    throw std::runtime_error("moe wire: unknown format");
  if (hd.elem != elem_bytes<T>(hd.wire))
    throw std::runtime_error("moe wire: element size differs (sender and receiver disagree on T)");
  return hd;
}

// Payload of n rows of `cols` elements; row(i) -> const T*.
template <class T, class RowFn>
void put_payload(Buffer& b, int64_t n, int64_t cols, Wire wire, RowFn row) {
  if (n == 0 || cols == 0) return;
  switch (wire) {
    case Wire::exact:
      for (int64_t i = 0; i < n; ++i) put(b, row(i), idx(cols) * sizeof(T));
      return;
    case Wire::bf16: {
      std::vector<uint16_t> tmp(idx(cols));
      for (int64_t i = 0; i < n; ++i) {
        const T* src = row(i);
        for (int64_t c = 0; c < cols; ++c) tmp[c] = fp8::float_to_bf16(static_cast<float>(src[c]));
        put(b, tmp.data(), tmp.size() * sizeof(uint16_t));
      }
      return;
    }
    case Wire::fp8: {
      std::vector<float> tmp(idx(n * cols));
      for (int64_t i = 0; i < n; ++i) {
        const T* src = row(i);
        for (int64_t c = 0; c < cols; ++c) tmp[idx(i * cols + c)] = static_cast<float>(src[c]);
      }
      fp8::QuantOptions opts;
      opts.pow2_scales = true;
      const fp8::RowwiseFp8 q = fp8::quantize_rowwise(tmp.data(), static_cast<int>(n), static_cast<int>(cols), opts);
      put(b, q.data.data(), q.data.size());
      put(b, q.scales.data(), q.scales.size() * sizeof(float));
      return;
    }
  }
}

// Reads the payload; dst(i) -> T* of the destination row. q_out (fp8 only): the raw codes/scales.
template <class T, class RowFn>
void get_payload(Reader& r, const Header& h, RowFn dst, fp8::RowwiseFp8* q_out = nullptr) {
  const int64_t n = h.rows, cols = h.cols;
  if (n == 0 || cols == 0) return;
  switch (h.wire) {
    case Wire::exact:
      for (int64_t i = 0; i < n; ++i) r.get(dst(i), idx(cols) * sizeof(T));
      return;
    case Wire::bf16: {
      std::vector<uint16_t> tmp(idx(cols));
      for (int64_t i = 0; i < n; ++i) {
        r.get(tmp.data(), tmp.size() * sizeof(uint16_t));
        T* out = dst(i);
        for (int64_t c = 0; c < cols; ++c) out[c] = static_cast<T>(fp8::bf16_to_float(tmp[c]));
      }
      return;
    }
    case Wire::fp8: {
      fp8::RowwiseFp8 q;
      q.rows = static_cast<int>(n);
      q.cols = static_cast<int>(cols);
      q.data.resize(idx(n * cols));
      q.scales.resize(idx(q.k_blocks()) * q.rows);
      r.get(q.data.data(), q.data.size());
      r.get(q.scales.data(), q.scales.size() * sizeof(float));
      const std::vector<float> deq = fp8::dequantize(q);
      for (int64_t i = 0; i < n; ++i) {
        T* out = dst(i);
        for (int64_t c = 0; c < cols; ++c) out[c] = static_cast<T>(deq[idx(i * cols + c)]);
      }
      if (q_out) *q_out = std::move(q);
      return;
    }
  }
}

void check_end(const Reader& r) {
  if (r.at != r.b.size()) throw std::runtime_error("moe wire: trailing bytes in buffer");
}

void check_sources(size_t got, int ep, const char* what) {
  if (got != idx(ep))
    throw std::invalid_argument(std::string(what) + ": need one buffer per EP member");
}

// Token side: slot-ordered rows → one buffer per destination (dispatch, combine_b).
template <class T>
std::vector<Buffer> pack_token_side(const DispatchPlan& plan, const Mat<T>& src, bool by_token, Kind kind,
                                    Wire wire) {
  const int64_t need = by_token ? plan.tokens : static_cast<int64_t>(plan.tokens) * plan.top_k;
  if (src.rows() != need) throw std::invalid_argument(std::string(kind_name(kind)) + ": wrong row count");
  std::vector<Buffer> out(idx(plan.ep));
  for (int d = 0; d < plan.ep; ++d) {
    const auto& rows = plan.to[idx(d)];
    Buffer& b = out[idx(d)];
    b = start<T>(kind, wire, static_cast<int64_t>(rows.size()), src.cols());
    if (kind == Kind::dispatch)
      for (const DispatchRow& row : rows) put(b, &row.expert, sizeof(int32_t));
    put_payload<T>(b, static_cast<int64_t>(rows.size()), src.cols(), wire, [&](int64_t i) {
      const DispatchRow& row = rows[idx(i)];
      const Eigen::Index at = by_token ? row.token : static_cast<Eigen::Index>(row.token) * plan.top_k + row.slot;
      return src.row(at).data();
    });
  }
  return out;
}

// Token side: buffers from every member → slot-ordered rows (combine, dispatch_b).
template <class T>
Mat<T> unpack_token_side(const DispatchPlan& plan, const std::vector<Buffer>& recv, Kind kind) {
  check_sources(recv.size(), plan.ep, kind_name(kind));
  Mat<T> out;
  bool shaped = false;
  for (int d = 0; d < plan.ep; ++d) {
    Reader r{recv[idx(d)]};
    const Header h = read_header<T>(r, kind);
    const auto& rows = plan.to[idx(d)];
    if (h.rows != rows.size())
      throw std::runtime_error(std::string(kind_name(kind)) + ": row count differs from the plan");
    if (!shaped) {
      out = Mat<T>::Zero(static_cast<Eigen::Index>(plan.tokens) * plan.top_k, h.cols);
      shaped = true;
    } else if (h.cols != out.cols()) {
      throw std::runtime_error(std::string(kind_name(kind)) + ": buffers differ in width");
    }
    get_payload<T>(r, h, [&](int64_t i) {
      const DispatchRow& row = rows[idx(i)];
      return out.row(static_cast<Eigen::Index>(row.token) * plan.top_k + row.slot).data();
    });
    check_end(r);
  }
  return out;
}

// Expert side: padded segments → one buffer per source, rows in the order it sent them.
template <class T>
std::vector<Buffer> pack_expert_side(const SegmentLayout& seg, const std::vector<Mat<T>>& segs, Kind kind,
                                     Wire wire) {
  if (segs.size() != idx(seg.n_local))
    throw std::invalid_argument(std::string(kind_name(kind)) + ": one matrix per local expert");
  const int64_t cols = segs.empty() ? seg.cols : segs[0].cols();
  for (int e = 0; e < seg.n_local; ++e) {
    const Mat<T>& m = segs[idx(e)];
    if (m.rows() != seg.padded[idx(e)])
      throw std::invalid_argument(std::string(kind_name(kind)) + ": segment rows differ from the layout");
    if (m.cols() != cols) throw std::invalid_argument(std::string(kind_name(kind)) + ": segments differ in width");
  }
  std::vector<Buffer> out(idx(seg.ep));
  for (int s = 0; s < seg.ep; ++s) {
    const auto& places = seg.from[idx(s)];
    Buffer& b = out[idx(s)];
    b = start<T>(kind, wire, static_cast<int64_t>(places.size()), cols);
    put_payload<T>(b, static_cast<int64_t>(places.size()), cols, wire, [&](int64_t i) {
      const SegmentLayout::Place& p = places[idx(i)];
      return segs[idx(p.expert)].row(p.row).data();
    });
  }
  return out;
}

template <class T>
std::vector<Mat<T>> zero_segments(const SegmentLayout& seg, int64_t cols) {
  std::vector<Mat<T>> out(idx(seg.n_local));
  for (int e = 0; e < seg.n_local; ++e) out[idx(e)] = Mat<T>::Zero(seg.padded[idx(e)], cols);
  return out;
}

}  // namespace

template <class T>
std::vector<Buffer> pack_dispatch(const DispatchPlan& plan, const Mat<T>& x, Wire wire) {
  return pack_token_side<T>(plan, x, /*by_token=*/true, Kind::dispatch, wire);
}

template <class T>
Mat<T> unpack_combine(const DispatchPlan& plan, const std::vector<Buffer>& recv) {
  return unpack_token_side<T>(plan, recv, Kind::combine);
}

template <class T>
std::vector<Buffer> pack_combine_grad(const DispatchPlan& plan, const Mat<T>& dy_slots, Wire wire) {
  return pack_token_side<T>(plan, dy_slots, /*by_token=*/false, Kind::combine_grad, wire);
}

template <class T>
Mat<T> unpack_dispatch_grad(const DispatchPlan& plan, const std::vector<Buffer>& recv) {
  return unpack_token_side<T>(plan, recv, Kind::dispatch_grad);
}

template <class T>
Mat<T> weighted_sum_slots(const Mat<T>& y_slots, const Mat<T>& gate) {
  const Eigen::Index tokens = gate.rows(), K = gate.cols(), cols = y_slots.cols();
  if (y_slots.rows() != tokens * K) throw std::invalid_argument("weighted_sum_slots: y_slots rows != tokens·K");
  Mat<T> out(tokens, cols);
  for (Eigen::Index t = 0; t < tokens; ++t) {
    T* o = out.row(t).data();
    const T* y0 = y_slots.row(t * K).data();
    const T g0 = gate(t, 0);
    for (Eigen::Index c = 0; c < cols; ++c) o[c] = g0 * y0[c];
    for (Eigen::Index k = 1; k < K; ++k) {
      const T* y = y_slots.row(t * K + k).data();
      const T g = gate(t, k);
      for (Eigen::Index c = 0; c < cols; ++c) o[c] += g * y[c];
    }
  }
  return out;
}

template <class T>
SlotGrad<T> weighted_sum_slots_backward(const Mat<T>& y_slots, const Mat<T>& gate, const Mat<T>& dout) {
  const Eigen::Index tokens = gate.rows(), K = gate.cols(), cols = y_slots.cols();
  if (y_slots.rows() != tokens * K || dout.rows() != tokens || dout.cols() != cols)
    throw std::invalid_argument("weighted_sum_slots_backward: shapes disagree");
  SlotGrad<T> g;
  g.d_gate.resize(tokens, K);
  g.dy_slots.resize(tokens * K, cols);
  for (Eigen::Index t = 0; t < tokens; ++t) {
    const T* d = dout.row(t).data();
    for (Eigen::Index k = 0; k < K; ++k) {
      const T* y = y_slots.row(t * K + k).data();
      T* dy = g.dy_slots.row(t * K + k).data();
      const T gk = gate(t, k);
      T dot = 0;
      for (Eigen::Index c = 0; c < cols; ++c) {
        dot += y[c] * d[c];
        dy[c] = gk * d[c];
      }
      g.d_gate(t, k) = dot;
    }
  }
  return g;
}

template <class T>
Mat<T> sum_slots(const Mat<T>& dx_slots, int top_k) {
  if (top_k <= 0 || dx_slots.rows() % top_k != 0) throw std::invalid_argument("sum_slots: rows not a multiple of K");
  const Eigen::Index tokens = dx_slots.rows() / top_k, cols = dx_slots.cols();
  Mat<T> out(tokens, cols);
  for (Eigen::Index t = 0; t < tokens; ++t) {
    T* o = out.row(t).data();
    const T* x0 = dx_slots.row(t * top_k).data();
    for (Eigen::Index c = 0; c < cols; ++c) o[c] = x0[c];
    for (int k = 1; k < top_k; ++k) {
      const T* x = dx_slots.row(t * top_k + k).data();
      for (Eigen::Index c = 0; c < cols; ++c) o[c] += x[c];
    }
  }
  return out;
}

template <class T>
ExpertRows<T> unpack_dispatch(const EpLayout& layout, int rank, const std::vector<Buffer>& recv, int align,
                              std::vector<fp8::RowwiseFp8>* fp8_segments) {
  check_sources(recv.size(), layout.ep, "dispatch");
  if (rank < 0 || rank >= layout.ep) throw std::invalid_argument("unpack_dispatch: rank out of range");
  if (align <= 0) throw std::invalid_argument("unpack_dispatch: align must be positive");
  ExpertRows<T> out;
  SegmentLayout& seg = out.layout;

  // Pass 1: headers and expert ids, in (source, buffer order) = (source, token, slot); the
  // segments follow from the ids (spec::make_segment_layout).
  const auto sources = idx(layout.ep);
  std::vector<Header> headers(sources);
  std::vector<size_t> payload_at(sources);
  std::vector<std::vector<int32_t>> ids_from(sources);
  int cols = 0;
  bool all_fp8 = true;
  for (size_t s = 0; s < sources; ++s) {
    Reader r{recv[s]};
    const Header h = read_header<T>(r, Kind::dispatch);
    if (s == 0) cols = static_cast<int>(h.cols);
    else if (static_cast<int>(h.cols) != cols) throw std::runtime_error("dispatch: buffers differ in width");
    all_fp8 = all_fp8 && h.wire == Wire::fp8;
    ids_from[s].resize(h.rows);
    for (uint32_t i = 0; i < h.rows; ++i) r.get(&ids_from[s][i], sizeof(int32_t));
    headers[s] = h;
    payload_at[s] = r.at;
  }
  try {
    seg = spec::make_segment_layout(layout, rank, align, ids_from);
  } catch (const std::invalid_argument& e) {
    throw std::runtime_error(std::string("dispatch: ") + e.what());  // a corrupt or misrouted buffer
  }
  seg.cols = cols;

  // Pass 2: payloads into the zero-padded segments.
  out.x = zero_segments<T>(seg, seg.cols);
  const bool keep = fp8_segments != nullptr && all_fp8;
  if (fp8_segments) {
    fp8_segments->assign(idx(seg.n_local), {});
    if (keep)
      for (int e = 0; e < seg.n_local; ++e) {
        fp8::RowwiseFp8& q = (*fp8_segments)[idx(e)];
        q.rows = static_cast<int>(seg.padded[idx(e)]);
        q.cols = seg.cols;
        q.data.assign(idx(q.rows) * q.cols, uint8_t{0});
        q.scales.assign(idx(q.k_blocks()) * q.rows, 1.0f);
      }
  }
  for (int s = 0; s < seg.ep; ++s) {
    Reader r{recv[idx(s)], payload_at[idx(s)]};
    const Header& h = headers[idx(s)];
    const auto& places = seg.from[idx(s)];
    fp8::RowwiseFp8 q;
    get_payload<T>(r, h, [&](int64_t i) {
      const SegmentLayout::Place& p = places[idx(i)];
      return out.x[idx(p.expert)].row(p.row).data();
    }, keep ? &q : nullptr);
    check_end(r);
    if (keep && q.rows > 0) {
      for (int i = 0; i < q.rows; ++i) {
        const SegmentLayout::Place& p = places[idx(i)];
        fp8::RowwiseFp8& dst = (*fp8_segments)[idx(p.expert)];
        std::memcpy(dst.data.data() + idx(p.row) * dst.cols,
                    q.data.data() + idx(i) * q.cols, idx(q.cols));
        for (int kb = 0; kb < q.k_blocks(); ++kb)
          dst.scales[idx(kb) * dst.rows + p.row] = q.scale(i, kb);
      }
    }
  }
  return out;
}

template <class T>
std::vector<Buffer> pack_combine(const SegmentLayout& seg, const std::vector<Mat<T>>& y, Wire wire) {
  return pack_expert_side<T>(seg, y, Kind::combine, wire);
}

template <class T>
std::vector<Mat<T>> unpack_combine_grad(const SegmentLayout& seg, const std::vector<Buffer>& recv) {
  check_sources(recv.size(), seg.ep, "combine_b");
  std::vector<Mat<T>> out;
  bool shaped = false;
  uint32_t cols = 0;
  for (int s = 0; s < seg.ep; ++s) {
    Reader r{recv[idx(s)]};
    const Header h = read_header<T>(r, Kind::combine_grad);
    const auto& places = seg.from[idx(s)];
    if (h.rows != places.size()) throw std::runtime_error("combine_b: row count differs from the dispatch");
    if (!shaped) {
      out = zero_segments<T>(seg, h.cols);
      shaped = true;
      cols = h.cols;
    } else if (h.cols != cols) {
      throw std::runtime_error("combine_b: buffers differ in width");
    }
    get_payload<T>(r, h, [&](int64_t i) {
      const SegmentLayout::Place& p = places[idx(i)];
      return out[idx(p.expert)].row(p.row).data();
    });
    check_end(r);
  }
  return out;
}

template <class T>
std::vector<Buffer> pack_dispatch_grad(const SegmentLayout& seg, const std::vector<Mat<T>>& dx, Wire wire) {
  return pack_expert_side<T>(seg, dx, Kind::dispatch_grad, wire);
}

#define TANDEM_MOE_DISPATCH(T)                                                                            \
  template std::vector<Buffer> pack_dispatch<T>(const DispatchPlan&, const Mat<T>&, Wire);               \
  template Mat<T> unpack_combine<T>(const DispatchPlan&, const std::vector<Buffer>&);                    \
  template std::vector<Buffer> pack_combine_grad<T>(const DispatchPlan&, const Mat<T>&, Wire);           \
  template Mat<T> unpack_dispatch_grad<T>(const DispatchPlan&, const std::vector<Buffer>&);              \
  template Mat<T> weighted_sum_slots<T>(const Mat<T>&, const Mat<T>&);                                   \
  template SlotGrad<T> weighted_sum_slots_backward<T>(const Mat<T>&, const Mat<T>&, const Mat<T>&);      \
  template Mat<T> sum_slots<T>(const Mat<T>&, int);                                                      \
  template ExpertRows<T> unpack_dispatch<T>(const EpLayout&, int, const std::vector<Buffer>&, int,       \
                                            std::vector<fp8::RowwiseFp8>*);                              \
  template std::vector<Buffer> pack_combine<T>(const SegmentLayout&, const std::vector<Mat<T>>&, Wire);  \
  template std::vector<Mat<T>> unpack_combine_grad<T>(const SegmentLayout&, const std::vector<Buffer>&); \
  template std::vector<Buffer> pack_dispatch_grad<T>(const SegmentLayout&, const std::vector<Mat<T>>&, Wire);
TANDEM_MOE_DISPATCH(float)
TANDEM_MOE_DISPATCH(double)
#undef TANDEM_MOE_DISPATCH

}  // namespace tandem::moe
