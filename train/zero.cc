#include "train/zero.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/check.h"
#include "base/status_macros.h"

namespace llamapro {

ZeroShards::ZeroShards(std::vector<Parameter*> params, int dp, int dp_rank)
    : params_(std::move(params)), rank_(dp_rank) {
  LP_CHECK(dp >= 1 && dp_rank >= 0 && dp_rank < dp);
  int64_t total = 0;
  for (Parameter* p : params_) {
    param_begin_.push_back(total);
    total += p->NumElements();
  }
  param_begin_.push_back(total);
  flat_.resize(static_cast<size_t>(total));
  for (int r = 0; r <= dp; ++r) range_begin_.push_back(total * r / dp);
  for (int r = 0; r < dp; ++r)
    counts_.push_back(static_cast<size_t>(range_begin_[r + 1] - range_begin_[r]));
  const int64_t begin = range_begin_[rank_], end = range_begin_[rank_ + 1];
  for (size_t i = 0; i < params_.size(); ++i) {
    const int64_t from = std::max(begin, param_begin_[i]);
    const int64_t to = std::min(end, param_begin_[i + 1]);
    if (from >= to) continue;
    const Parameter& p = *params_[i];
    Parameter& piece = pieces_.emplace_back();
    piece.name = p.name;
    piece.shape = p.shape;
    piece.source_dtype = p.source_dtype;
    piece.decay = p.decay;
    piece.split_dim = p.split_dim;
    piece.split_begin = p.split_begin;
    piece.full_shape = p.full_shape;
    piece.flat_begin = from - param_begin_[i];
    piece.value.assign(p.value.begin() + piece.flat_begin,
                       p.value.begin() + (to - param_begin_[i]));
    piece.SetTrainable(true);
    piece_tensor_.push_back(params_[i]);
  }
}

std::vector<Parameter*> ZeroShards::pieces() {
  std::vector<Parameter*> out;
  for (Parameter& p : pieces_) out.push_back(&p);
  return out;
}

void ZeroShards::LoadPieceValues() {
  for (size_t k = 0; k < pieces_.size(); ++k) {
    const Parameter& p = *piece_tensor_[k];
    std::copy_n(p.value.begin() + pieces_[k].flat_begin, pieces_[k].value.size(),
                pieces_[k].value.begin());
  }
}

absl::Status ZeroShards::ReduceScatterGradients(Communicator& dp) {
  for (size_t i = 0; i < params_.size(); ++i) {
    std::copy(params_[i]->grad.begin(), params_[i]->grad.end(), flat_.begin() + param_begin_[i]);
  }
  LP_RETURN_IF_ERROR(dp.ReduceScatterSum(flat_.data(), flat_.size()));
  int64_t offset = range_begin_[rank_];
  for (Parameter& piece : pieces_) {
    std::copy_n(flat_.begin() + offset, piece.grad.size(), piece.grad.begin());
    offset += static_cast<int64_t>(piece.grad.size());
  }
  return absl::OkStatus();
}

absl::Status ZeroShards::AllGatherValues(Communicator& dp) {
  // This rank's range, packed, then every rank's ranges in rank order: the
  // flat layout again.
  std::vector<float> mine;
  mine.reserve(counts_[rank_]);
  for (const Parameter& piece : pieces_)
    mine.insert(mine.end(), piece.value.begin(), piece.value.end());
  LP_RETURN_IF_ERROR(dp.AllGather(mine.data(), flat_.data(), counts_));
  for (size_t i = 0; i < params_.size(); ++i) {
    std::copy_n(flat_.begin() + param_begin_[i], params_[i]->value.size(),
                params_[i]->value.begin());
  }
  return absl::OkStatus();
}

absl::Status ZeroShards::GatherPerTensor(Communicator& dp,
                                         const std::vector<const std::vector<float>*>& per_piece,
                                         std::vector<std::vector<float>>* per_tensor) {
  if (per_piece.size() != pieces_.size()) {
    return absl::InternalError(absl::StrCat("ZeRO gather of ", per_piece.size(), " vectors for ",
                                            pieces_.size(), " pieces"));
  }
  std::vector<float> mine;
  mine.reserve(counts_[rank_]);
  for (const std::vector<float>* v : per_piece) mine.insert(mine.end(), v->begin(), v->end());
  LP_RETURN_IF_ERROR(dp.AllGather(mine.data(), flat_.data(), counts_));
  per_tensor->resize(params_.size());
  for (size_t i = 0; i < params_.size(); ++i) {
    (*per_tensor)[i].assign(flat_.begin() + param_begin_[i], flat_.begin() + param_begin_[i + 1]);
  }
  return absl::OkStatus();
}

}  // namespace llamapro
