// ZeRO stage 1 (Rajbhandari et al., "ZeRO: Memory Optimizations Toward
// Training Trillion Parameter Models", 2020): the optimizer state of the
// trainable tensors sharded over the ranks of a data-parallel group.
//
// The trainable tensors' elements are laid end to end (in parameter order)
// and cut into dp contiguous ranges of near-equal size; DP rank j owns range
// j. Its optimizer is built over one "piece" per tensor that overlaps the
// range: a Parameter named like the tensor, holding that part's values and
// gradients (Parameter::flat_begin says where it starts), so AdamW's state
// exists for 1/dp of the elements on each rank. A step is then:
//   ReduceScatterGradients  every rank's gradients summed, each rank keeping
//                           its range, in its pieces;
//   (clip, optimizer step on the pieces);
//   AllGatherValues         the updated ranges copied back into every rank's
//                           tensors.
// The updates are elementwise, and the sums are the same bits as the
// all-reduce without ZeRO (base/collectives.h), so ZeRO-1 on and off
// compute the same weights; only the global norm for clipping is summed in
// another order.
#ifndef LLAMAPRO_TRAIN_ZERO_H_
#define LLAMAPRO_TRAIN_ZERO_H_

#include <cstdint>
#include <deque>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "base/collectives.h"
#include "model/parameters.h"

namespace llamapro {

class ZeroShards {
 public:
  // `params`: the trainable tensors (non-owning; they outlive this).
  ZeroShards(std::vector<Parameter*> params, int dp, int dp_rank);

  // This rank's pieces, for the optimizer (stable pointers).
  std::vector<Parameter*> pieces();
  // The tensor each piece belongs to, indexed like pieces().
  const std::vector<Parameter*>& piece_tensors() const { return piece_tensor_; }
  // Elements this rank's range holds, and every rank's.
  int64_t owned_elements() const { return counts_[rank_]; }
  const std::vector<size_t>& counts() const { return counts_; }
  int64_t total_elements() const { return static_cast<int64_t>(flat_.size()); }

  // Copies the tensors' current values into the pieces (after loading or
  // resuming).
  void LoadPieceValues();
  // Sums the tensors' gradients over `dp` (its size and rank as built) into
  // this rank's pieces' gradients.
  absl::Status ReduceScatterGradients(Communicator& dp);
  // Every rank's updated piece values into every rank's tensors.
  absl::Status AllGatherValues(Communicator& dp);
  // `per_piece` (one vector per piece, piece-sized: an optimizer state
  // kind) gathered over `dp` into one vector per tensor (tensor-sized, in
  // the tensors' order).
  absl::Status GatherPerTensor(Communicator& dp,
                               const std::vector<const std::vector<float>*>& per_piece,
                               std::vector<std::vector<float>>* per_tensor);

 private:
  std::vector<Parameter*> params_;
  std::vector<int64_t> param_begin_;  // Flat offset of each tensor; plus the end.
  std::vector<int64_t> range_begin_;  // Flat offset of each rank's range; plus the end.
  std::vector<size_t> counts_;
  int rank_;
  std::deque<Parameter> pieces_;
  std::vector<Parameter*> piece_tensor_;
  std::vector<float> flat_;
};

}  // namespace llamapro

#endif  // LLAMAPRO_TRAIN_ZERO_H_
