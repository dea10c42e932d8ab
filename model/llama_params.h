// A LLaMA/Mistral model held as trainable Parameters (fp32 values, gradients
// only for what trains), and the choice of what trains.
#ifndef LLAMAPRO_MODEL_LLAMA_PARAMS_H_
#define LLAMAPRO_MODEL_LLAMA_PARAMS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/parameters.h"

namespace llamapro {

// A LoRA adapter of one weight W [out, in] (Hu et al. 2021): the layer
// computes x W^T + scale * (x A^T) B^T with A [rank, in], B [out, rank];
// scale = alpha / rank. Named as PEFT names them without its
// "base_model.model." prefix ("model.layers.3.self_attn.q_proj.lora_A.weight").
struct LoraAdapter {
  Parameter a, b;
  bool present() const { return !a.value.empty(); }
};

// The weights LoRA can adapt, in this order (PEFT's target_modules names).
inline constexpr int kLoraTargets = 7;
inline constexpr const char* kLoraTargetNames[kLoraTargets] = {
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};

struct BlockParams {
  Parameter input_norm;
  Parameter q_proj, k_proj, v_proj, o_proj;
  Parameter q_bias, k_bias, v_bias, o_bias;  // Empty (no elements) without attention_bias.
  Parameter post_norm;
  Parameter gate_proj, up_proj, down_proj;
  Parameter gate_bias, up_bias, down_bias;  // Empty without mlp_bias.
  LoraAdapter lora[kLoraTargets];           // Indexed like kLoraTargetNames; mostly absent.
  // The MoE baseline (config.moe_experts == 2): a second expert MLP and the
  // two mixing logits; the MLP computes softmax(mix)[0] E0(x) + softmax(mix)[1]
  // E1(x). Empty otherwise.
  Parameter expert_gate, expert_up, expert_down, expert_mix;
  bool moe() const { return !expert_mix.value.empty(); }

  // The weight target `t` (0..6, kLoraTargetNames) adapts.
  Parameter& LoraBase(int t);
  const Parameter& LoraBase(int t) const;

  // Every present tensor, in checkpoint order.
  std::vector<Parameter*> All();
  bool AnyTrainable();
};

struct LlamaParams {
  LlamaConfig config;
  Parameter embed;  // [V, C]
  std::vector<BlockParams> blocks;
  Parameter final_norm;  // [C]
  Parameter lm_head;     // [V, C]; empty when tied (the embedding serves).
  // LoRA (AddLoraAdapters): rank and alpha of every adapter; rank 0 = none.
  int64_t lora_rank = 0;
  double lora_alpha = 0;
  float LoraScale() const {
    return lora_rank > 0 ? static_cast<float>(lora_alpha / static_cast<double>(lora_rank)) : 0.0f;
  }

  std::vector<Parameter*> All();
  std::vector<Parameter*> Trainable();
  // Every Parameter member, present or not, in a fixed order: the slots of
  // two models pair up one to one (gathering a tensor-parallel model).
  std::vector<Parameter*> Slots();
  // The tensor lm_head reads (the embedding when tied).
  Parameter& Head() { return config.tie_word_embeddings ? embed : lm_head; }
  int64_t TotalParameters();
  int64_t TrainableParameters();
};

// Tensor parallelism (Megatron-style; DESIGN.md, Parallelism): rank `rank`
// of a group of `size` holds a slice of each split tensor.
struct TensorParallelShard {
  int rank = 0;
  int size = 1;
};

// How tensor parallelism splits the model tensor `name`: 0 by rows (the
// output features of q/k/v/gate/up and their biases; the vocabulary of
// embed_tokens and lm_head), 1 by columns (the input features of o_proj and
// down_proj), -1 not at all (norm weights, o_proj/down_proj biases: every
// rank holds them whole and computes identical gradients for them).
int TensorParallelSplitDim(const std::string& name);

// OK when `size` ranks can split this model: it must divide
// num_key_value_heads (KV heads are divided, never replicated),
// intermediate_size and vocab_size; LoRA and MoE models are not split.
// The error names the number that does not divide.
absl::Status CheckTensorParallel(const LlamaConfig& config, int size);

// Loads every tensor the config requires as fp32 (validating the checkpoint
// first), all frozen. Norm weights and biases get decay = false. With a
// shard of size > 1 each split tensor holds only this rank's slice (read
// from the memory-mapped file; the rest is never touched) and records it in
// Parameter::split_dim / split_begin / full_shape; params.config stays the
// full model's.
absl::StatusOr<LlamaParams> LoadLlamaParams(const CheckpointReader& reader,
                                            const LlamaConfig& config,
                                            TensorParallelShard shard = {});

// p's slice of the full tensor `full` (p.FullElements() values) into `out`
// (the product of p.shape values), and back. Only p's shape and split
// fields are read.
void ExtractSlice(const Parameter& p, const float* full, float* out);
void PlaceSlice(const Parameter& p, const float* slice, float* full);

// The rank's slice of dimension `extent` split `size` ways.
inline int64_t SliceBegin(int64_t extent, TensorParallelShard shard) {
  return extent / shard.size * shard.rank;
}

// What trains. `blocks` has one entry per block.
struct TrainableSet {
  std::vector<bool> blocks;
  bool embeddings = false;
  bool final_norm = false;
  bool lm_head = false;  // With tied embeddings, follows `embeddings`.
};

// Marks parameters trainable (allocating their gradients) or frozen (freeing
// them). Refuses a set with nothing trainable, or a tied lm_head whose
// trainability differs from the embedding's, naming the problem.
absl::Status ApplyTrainableSet(const TrainableSet& set, LlamaParams* params);

// LoRA: adapters of rank `rank` on the weights named in `targets`
// (kLoraTargetNames) of the blocks where blocks[i] is true, trainable, with
// A uniform in +-1/sqrt(in) (PEFT's Kaiming-uniform init) from `seed` and B
// zero, so the model computes exactly what it did; every other parameter is
// frozen. Errors name a bad target, rank or alpha.
struct LoraSpec {
  int64_t rank = 8;
  double alpha = 16;
  std::vector<std::string> targets;
  std::vector<bool> blocks;
  uint64_t seed = 0;
};
absl::Status AddLoraAdapters(const LoraSpec& spec, LlamaParams* params);

// The MoE baseline (the paper's appendix H): every block's MLP becomes two
// experts, the second a copy of the first, mixed by softmax of two learned
// logits that start equal, so the model computes exactly what it did. The
// second experts and the mixing logits train; everything else is frozen. On
// a model that already has experts (a checkpoint of such a run) only the
// trainable flags are set.
absl::Status AddMoeExperts(LlamaParams* params);

// W + scale * B A of block `layer`'s target `t` (its adapter must be present).
std::vector<float> MergedLoraWeight(const LlamaParams& params, int64_t layer, int t);

// Folds every adapter into its weight and removes the adapters: the model
// then computes the same function without LoRA.
void MergeLoraAdapters(LlamaParams* params);

}  // namespace llamapro

#endif  // LLAMAPRO_MODEL_LLAMA_PARAMS_H_
