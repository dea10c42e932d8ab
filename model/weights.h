// Hugging Face tensor names and shapes of a LLaMA/Mistral checkpoint, their
// validation against a config, and loading them as fp32 for the forward pass.
#ifndef LLAMAPRO_MODEL_WEIGHTS_H_
#define LLAMAPRO_MODEL_WEIGHTS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "model/checkpoint.h"
#include "model/config.h"

namespace llamapro {

inline constexpr char kEmbedTokens[] = "model.embed_tokens.weight";
inline constexpr char kFinalNorm[] = "model.norm.weight";
inline constexpr char kLmHead[] = "lm_head.weight";

// "model.layers.<i>.<suffix>".
std::string LayerTensorName(int64_t layer, absl::string_view suffix);
// Splits "model.layers.<i>.<suffix>"; nullopt for other names.
std::optional<std::pair<int64_t, std::string>> ParseLayerTensorName(absl::string_view name);

// Suffixes of the tensors an expanded block gets zeroed: the output
// projections of both residual branches (and their biases, when present).
bool IsZeroedInNewBlock(absl::string_view suffix);

struct ExpectedTensor {
  std::string name;
  std::vector<int64_t> shape;
};
// Every tensor the config requires, in model order.
std::vector<ExpectedTensor> ExpectedTensors(const LlamaConfig& config);
// Tensors one block requires, by suffix.
std::vector<ExpectedTensor> ExpectedBlockTensors(const LlamaConfig& config, int64_t layer);

// Checks that every expected tensor is present with the right shape and a
// float dtype (F32, F16, BF16), and that no tensor names a layer outside
// [0, num_hidden_layers). Other tensors (e.g. rotary_emb.inv_freq buffers of
// older exports) are allowed. Errors name the file and tensor.
absl::Status ValidateCheckpoint(const LlamaConfig& config, const CheckpointReader& reader);

// One decoder block's weights in fp32. Bias vectors are empty when absent.
struct BlockWeights {
  std::vector<float> input_norm;              // [C]
  std::vector<float> q_proj, k_proj, v_proj;  // [H*D, C], [Hkv*D, C], [Hkv*D, C]
  std::vector<float> o_proj;                  // [C, H*D]
  std::vector<float> q_bias, k_bias, v_bias, o_bias;
  std::vector<float> post_norm;           // [C]
  std::vector<float> gate_proj, up_proj;  // [F, C]
  std::vector<float> down_proj;           // [C, F]
  std::vector<float> gate_bias, up_bias, down_bias;
};

// Embedding, final norm and lm_head (empty when tied to the embedding).
struct HeadWeights {
  std::vector<float> embed;       // [V, C]
  std::vector<float> final_norm;  // [C]
  std::vector<float> lm_head;     // [V, C], or empty when tied.
};

// Loads as fp32. With `round_through`, each weight is first rounded to that
// dtype (what a checkpoint converted to it would hold). The checkpoint must
// have passed ValidateCheckpoint.
absl::StatusOr<BlockWeights> LoadBlockWeights(const CheckpointReader& reader,
                                              const LlamaConfig& config, int64_t layer,
                                              std::optional<DType> round_through = std::nullopt);
absl::StatusOr<HeadWeights> LoadHeadWeights(const CheckpointReader& reader,
                                            const LlamaConfig& config,
                                            std::optional<DType> round_through = std::nullopt);

}  // namespace llamapro

#endif  // LLAMAPRO_MODEL_WEIGHTS_H_
