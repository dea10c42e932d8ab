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

struct BlockParams {
  Parameter input_norm;
  Parameter q_proj, k_proj, v_proj, o_proj;
  Parameter q_bias, k_bias, v_bias, o_bias;  // Empty (no elements) without attention_bias.
  Parameter post_norm;
  Parameter gate_proj, up_proj, down_proj;
  Parameter gate_bias, up_bias, down_bias;  // Empty without mlp_bias.

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

  std::vector<Parameter*> All();
  std::vector<Parameter*> Trainable();
  // The tensor lm_head reads (the embedding when tied).
  Parameter& Head() { return config.tie_word_embeddings ? embed : lm_head; }
  int64_t TotalParameters();
  int64_t TrainableParameters();
};

// Loads every tensor the config requires as fp32 (validating the checkpoint
// first), all frozen. Norm weights and biases get decay = false.
absl::StatusOr<LlamaParams> LoadLlamaParams(const CheckpointReader& reader,
                                            const LlamaConfig& config);

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

}  // namespace llamapro

#endif  // LLAMAPRO_MODEL_LLAMA_PARAMS_H_
