// What one rank of a DP x TP training job holds and moves per optimizer
// step, computed from the model's shapes alone (nothing is allocated): the
// start-of-run report of every run, and bench/parallel_bench's table for
// models no machine here could hold.
//
// Bytes are per rank. Communication is what each rank sends per step, by
// ring algorithms over a group of g ranks: an all-reduce of B bytes sends
// 2 (g - 1) / g * B, an all-gather or reduce-scatter (g - 1) / g * B.
#ifndef LLAMAPRO_TRAIN_PARALLEL_PLAN_H_
#define LLAMAPRO_TRAIN_PARALLEL_PLAN_H_

#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"

namespace llamapro {

struct ParallelPlanInput {
  LlamaConfig model;
  std::vector<bool> trainable_blocks;  // One per block.
  bool embeddings = false, final_norm = false, lm_head = false;
  int64_t seq_len = 0;
  int64_t micro_batch = 1;
  int64_t global_sequences = 1;  // Per optimizer step, over all replicas.
  int dp = 1, tp = 1;
  bool zero1 = false;
  int optimizer_states = 2;  // fp32 states per trainable value: AdamW 2, SGD 1 or 0.
  // kCpu: the CPU engine (fp32 everything; Gloo, whose reduce-scatter is an
  // all-reduce). kCudaMixed: the CUDA design (DESIGN.md, Precision): bf16
  // weights and activations, fp32 gradients, master weights and AdamW
  // state of the trainable tensors; NCCL collectives, bf16 activations on
  // the wire, a true reduce-scatter.
  enum class Backend { kCpu, kCudaMixed } backend = Backend::kCpu;
};

struct ParallelPlan {
  int64_t parameters = 0;  // Elements this rank holds.
  int64_t trainable = 0;   // Trainable elements this rank holds.
  int64_t weight_bytes = 0;
  int64_t gradient_bytes = 0;          // fp32 gradients of the trainable slices.
  int64_t master_bytes = 0;            // fp32 masters (kCudaMixed), / dp under ZeRO-1.
  int64_t optimizer_bytes = 0;         // The optimizer's fp32 states, / dp under ZeRO-1.
  int64_t activation_bytes = 0;        // One micro-batch's (TrainingPass, one thread).
  double tp_bytes_per_step = 0;        // Sent per rank in TP collectives.
  double dp_bytes_per_step = 0;        // Sent per rank in DP collectives.
  int64_t micro_batches_per_step = 0;  // Per rank.
  int64_t total_bytes() const {
    return weight_bytes + gradient_bytes + master_bytes + optimizer_bytes + activation_bytes;
  }
};

ParallelPlan PlanParallel(const ParallelPlanInput& in);

// The paper's configuration: LLaMA-2-7B shapes expanded 32 -> 40 blocks
// (interleaved, a new block after every 4: blocks 4, 9, ..., 39 train), seq
// 4096, micro-batch 1, 1024 sequences per step, the CUDA design; dp 1, tp 1.
ParallelPlanInput LlamaPro7BPlanInput();

// "12.3 GiB"-style one-line summary of a plan, for logs.
std::string DescribePlan(const ParallelPlan& plan);

}  // namespace llamapro

#endif  // LLAMAPRO_TRAIN_PARALLEL_PLAN_H_
