#include "eval/generate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <limits>
#include <numeric>
#include <random>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/check.h"
#include "base/status_macros.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/reference.h"
#include "model/checkpoint.h"
#include "model/rope.h"

namespace llamapro {

absl::StatusOr<InferenceModel> LoadInferenceModel(const std::string& dir, bool need_tokenizer) {
  InferenceModel model;
  model.dir = dir;
  LP_ASSIGN_OR_RETURN(model.config, LoadLlamaConfig(dir));
  LP_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointReader> reader, CheckpointReader::Open(dir));
  LP_ASSIGN_OR_RETURN(model.weights, LoadLlamaWeights(*reader, model.config));
  const std::string tokenizer_path = (std::filesystem::path(dir) / "tokenizer.model").string();
  if (std::filesystem::exists(tokenizer_path)) {
    LP_ASSIGN_OR_RETURN(model.tokenizer, Tokenizer::Load(tokenizer_path));
    if (model.tokenizer->info().vocab_size > model.config.vocab_size) {
      return absl::FailedPreconditionError(
          absl::StrCat(tokenizer_path, " has ", model.tokenizer->info().vocab_size,
                       " ids but the model's vocab_size is ", model.config.vocab_size));
    }
  } else if (need_tokenizer) {
    return absl::NotFoundError(
        absl::StrCat(dir, " has no tokenizer.model: this evaluation needs the tokenizer"));
  }
  return model;
}

IncrementalDecoder::IncrementalDecoder(const LlamaConfig& config, const LlamaWeights* weights,
                                       int64_t capacity)
    : config_(config), weights_(weights), capacity_(capacity) {
  LP_CHECK(capacity > 0);
  const int64_t kv = config.num_key_value_heads * config.head_dim;
  ref::RopeTables(RopeInverseFrequencies<float>(config), capacity, &cos_, &sin_);
  keys_.assign(config.num_hidden_layers, std::vector<float>(capacity * kv));
  values_.assign(config.num_hidden_layers, std::vector<float>(capacity * kv));
  scores_.resize(capacity);
}

void IncrementalDecoder::Truncate(int64_t length) {
  length_ = std::clamp<int64_t>(length, 0, length_);
}

absl::StatusOr<std::span<const float>> IncrementalDecoder::Append(std::span<const int32_t> tokens) {
  const auto n = static_cast<int64_t>(tokens.size());
  if (n == 0) return absl::InvalidArgumentError("no tokens to append");
  if (length_ + n > capacity_) {
    return absl::OutOfRangeError(absl::StrCat("the sequence would have ", length_ + n,
                                              " positions; the decoder holds ", capacity_));
  }
  for (int64_t i = 0; i < n; ++i) {
    if (tokens[i] < 0 || tokens[i] >= config_.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", tokens[i], " at position ",
                                                     length_ + i, " is outside the vocabulary [0, ",
                                                     config_.vocab_size, ")"));
    }
  }
  const int64_t c = config_.hidden_size;
  x_.resize(n * c);
  cpu::Embedding(weights_->head.embed.data(), tokens.data(), x_.data(), n, c);
  Run(n);
  length_ += n;
  // Logits of the last position only.
  xn_.resize(c);
  cpu::RmsNorm(x_.data() + (n - 1) * c, weights_->head.final_norm.data(), xn_.data(), 1, c,
               static_cast<float>(config_.rms_norm_eps));
  const std::vector<float>& lm_head =
      weights_->head.lm_head.empty() ? weights_->head.embed : weights_->head.lm_head;
  logits_.resize(config_.vocab_size);
  cpu::Linear(xn_.data(), lm_head.data(), nullptr, logits_.data(), 1, c, config_.vocab_size);
  return std::span<const float>(logits_);
}

void IncrementalDecoder::Run(int64_t n) {
  const int64_t c = config_.hidden_size;
  const int64_t h = config_.num_attention_heads;
  const int64_t hkv = config_.num_key_value_heads;
  const int64_t d = config_.head_dim;
  const int64_t f = config_.intermediate_size;
  const int64_t group = h / hkv;
  const int64_t half = d / 2;
  const float eps = static_cast<float>(config_.rms_norm_eps);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  auto bias = [](const std::vector<float>& b) { return b.empty() ? nullptr : b.data(); };
  xn_.resize(n * c);
  q_.resize(n * h * d);
  k_.resize(n * hkv * d);
  v_.resize(n * hkv * d);
  attn_.resize(n * h * d);
  branch_.resize(n * c);
  gate_.resize(n * f);
  up_.resize(n * f);
  const float* cos = cos_.data() + length_ * half;
  const float* sin = sin_.data() + length_ * half;
  for (int64_t layer = 0; layer < config_.num_hidden_layers; ++layer) {
    const BlockWeights& w = weights_->blocks[layer];
    cpu::RmsNorm(x_.data(), w.input_norm.data(), xn_.data(), n, c, eps);
    cpu::Linear(xn_.data(), w.q_proj.data(), bias(w.q_bias), q_.data(), n, c, h * d);
    cpu::Linear(xn_.data(), w.k_proj.data(), bias(w.k_bias), k_.data(), n, c, hkv * d);
    cpu::Linear(xn_.data(), w.v_proj.data(), bias(w.v_bias), v_.data(), n, c, hkv * d);
    // Positions length_.. : the tables from that row on.
    cpu::ApplyRope(q_.data(), cos, sin, 1, n, h, d);
    cpu::ApplyRope(k_.data(), cos, sin, 1, n, hkv, d);
    std::copy(k_.begin(), k_.end(), keys_[layer].begin() + length_ * hkv * d);
    std::copy(v_.begin(), v_.end(), values_[layer].begin() + length_ * hkv * d);
    const float* keys = keys_[layer].data();
    const float* values = values_[layer].data();
    for (int64_t i = 0; i < n; ++i) {
      const int64_t t = length_ + i;
      const int64_t first =
          config_.sliding_window > 0 ? std::max<int64_t>(0, t - config_.sliding_window + 1) : 0;
      for (int64_t head = 0; head < h; ++head) {
        const int64_t kvh = head / group;
        const float* qv = q_.data() + (i * h + head) * d;
        float max_score = -std::numeric_limits<float>::infinity();
        for (int64_t j = first; j <= t; ++j) {
          const float* kv = keys + (j * hkv + kvh) * d;
          float dot = 0;
          for (int64_t e = 0; e < d; ++e) dot += qv[e] * kv[e];
          scores_[j] = dot * scale;
          max_score = std::max(max_score, scores_[j]);
        }
        float denom = 0;
        for (int64_t j = first; j <= t; ++j) {
          scores_[j] = std::exp(scores_[j] - max_score);
          denom += scores_[j];
        }
        float* o = attn_.data() + (i * h + head) * d;
        std::fill(o, o + d, 0.0f);
        for (int64_t j = first; j <= t; ++j) {
          const float p = scores_[j] / denom;
          const float* vv = values + (j * hkv + kvh) * d;
          for (int64_t e = 0; e < d; ++e) o[e] += p * vv[e];
        }
      }
    }
    cpu::Linear(attn_.data(), w.o_proj.data(), bias(w.o_bias), branch_.data(), n, h * d, c);
    cpu::AddInPlace(x_.data(), branch_.data(), n * c);
    cpu::RmsNorm(x_.data(), w.post_norm.data(), xn_.data(), n, c, eps);
    cpu::Linear(xn_.data(), w.gate_proj.data(), bias(w.gate_bias), gate_.data(), n, c, f);
    cpu::Linear(xn_.data(), w.up_proj.data(), bias(w.up_bias), up_.data(), n, c, f);
    cpu::SiluMul(gate_.data(), up_.data(), gate_.data(), n * f);
    cpu::Linear(gate_.data(), w.down_proj.data(), bias(w.down_bias), branch_.data(), n, f, c);
    cpu::AddInPlace(x_.data(), branch_.data(), n * c);
  }
}

int32_t ArgMax(std::span<const float> logits) {
  LP_CHECK(!logits.empty());
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

absl::Status ValidateSamplingOptions(const SamplingOptions& options) {
  if (options.max_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_tokens must be at least 1, got ", options.max_tokens));
  }
  if (!(options.temperature >= 0) || !std::isfinite(options.temperature)) {
    return absl::InvalidArgumentError(
        absl::StrCat("temperature must be >= 0 (0: greedy), got ", options.temperature));
  }
  if (!(options.top_p > 0 && options.top_p <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("top_p must be in (0, 1], got ", options.top_p));
  }
  for (const std::string& stop : options.stop) {
    if (stop.empty()) return absl::InvalidArgumentError("a stop string must not be empty");
  }
  return absl::OkStatus();
}

namespace {

// Samples from softmax(logits / temperature) restricted to the nucleus.
int32_t Sample(std::span<const float> logits, double temperature, double top_p,
               std::mt19937_64* rng, std::vector<std::pair<double, int32_t>>* scratch) {
  const double max_logit = *std::max_element(logits.begin(), logits.end());
  scratch->clear();
  double total = 0;
  for (size_t i = 0; i < logits.size(); ++i) {
    const double p = std::exp((logits[i] - max_logit) / temperature);
    total += p;
    scratch->emplace_back(p, static_cast<int32_t>(i));
  }
  // Most likely first; equal probabilities by id, so the order is fixed.
  std::sort(scratch->begin(), scratch->end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  });
  size_t keep = scratch->size();
  if (top_p < 1) {
    double cumulative = 0;
    for (size_t i = 0; i < scratch->size(); ++i) {
      cumulative += (*scratch)[i].first / total;
      if (cumulative >= top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  double kept = 0;
  for (size_t i = 0; i < keep; ++i) kept += (*scratch)[i].first;
  const double u = std::uniform_real_distribution<double>(0, kept)(*rng);
  double cumulative = 0;
  for (size_t i = 0; i < keep; ++i) {
    cumulative += (*scratch)[i].first;
    if (u < cumulative) return (*scratch)[i].second;
  }
  return (*scratch)[keep - 1].second;
}

// Bytes at the end of `text` that are an incomplete UTF-8 character or the
// replacement character a partial byte-fallback sequence decodes to.
size_t UnfinishedTail(const std::string& text) {
  static constexpr absl::string_view kReplacement = "\xEF\xBF\xBD";
  if (absl::EndsWith(text, kReplacement)) return kReplacement.size();
  size_t i = text.size();
  size_t back = 0;
  while (i > 0 && back < 4 && (static_cast<unsigned char>(text[i - 1]) & 0xC0) == 0x80) {
    --i;
    ++back;
  }
  if (i == 0) return 0;
  const auto lead = static_cast<unsigned char>(text[i - 1]);
  const size_t need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
  return back + 1 < need ? back + 1 : 0;
}

}  // namespace

absl::StatusOr<Generation> Generate(const InferenceModel& model, std::span<const int32_t> prompt,
                                    const SamplingOptions& options,
                                    const std::function<void(absl::string_view)>& on_text) {
  LP_RETURN_IF_ERROR(ValidateSamplingOptions(options));
  const Tokenizer* tokenizer = model.tokenizer.get();
  if (tokenizer == nullptr && (!options.stop.empty() || on_text)) {
    return absl::FailedPreconditionError(
        absl::StrCat(model.dir, " has no tokenizer.model: stop strings and text need one"));
  }
  if (prompt.empty()) return absl::InvalidArgumentError("the prompt has no tokens");
  const auto start = std::chrono::steady_clock::now();
  const int64_t context = model.config.max_position_embeddings;
  if (static_cast<int64_t>(prompt.size()) >= context) {
    return absl::OutOfRangeError(absl::StrCat("the prompt has ", prompt.size(),
                                              " tokens; the model's context is ", context));
  }
  const int64_t capacity =
      std::min<int64_t>(context, static_cast<int64_t>(prompt.size()) + options.max_tokens);
  Generation out;
  out.prompt_tokens = static_cast<int64_t>(prompt.size());
  std::mt19937_64 rng(options.seed);
  std::vector<std::pair<double, int32_t>> scratch;
  std::unique_ptr<IncrementalDecoder> decoder;
  std::vector<int32_t> sequence(prompt.begin(), prompt.end());
  if (options.use_cache) {
    decoder = std::make_unique<IncrementalDecoder>(model.config, &model.weights, capacity);
  }
  size_t max_stop = 0;
  for (const std::string& stop : options.stop) max_stop = std::max(max_stop, stop.size());
  std::string decoded;  // Text of every generated token.
  size_t emitted = 0;   // Bytes of `decoded` given to on_text.
  std::vector<float> full_logits;
  std::span<const float> logits;
  const int32_t eos = tokenizer != nullptr ? tokenizer->info().eos_id : -1;
  const size_t usable = tokenizer != nullptr ? static_cast<size_t>(tokenizer->info().vocab_size)
                                             : static_cast<size_t>(model.config.vocab_size);
  out.finish_reason = "length";
  for (int64_t step = 0; step < options.max_tokens; ++step) {
    if (static_cast<int64_t>(sequence.size()) >= capacity) break;
    if (decoder != nullptr) {
      const std::span<const int32_t> next =
          step == 0 ? std::span<const int32_t>(sequence)
                    : std::span<const int32_t>(sequence).subspan(sequence.size() - 1);
      LP_ASSIGN_OR_RETURN(logits, decoder->Append(next));
    } else {
      const auto t = static_cast<int64_t>(sequence.size());
      LP_ASSIGN_OR_RETURN(full_logits, ForwardLogits(model.config, model.weights, sequence, 1, t));
      logits = std::span<const float>(full_logits)
                   .subspan((t - 1) * model.config.vocab_size, model.config.vocab_size);
    }
    // Ids past the tokenizer's (a vocabulary padded for efficiency) are
    // never chosen: they have no text.
    logits = logits.first(usable);
    const int32_t token = options.temperature == 0
                              ? ArgMax(logits)
                              : Sample(logits, options.temperature, options.top_p, &rng, &scratch);
    out.tokens.push_back(token);
    sequence.push_back(token);
    if (options.stop_at_eos && token == eos) {
      out.finish_reason = "eos";
      break;
    }
    if (tokenizer == nullptr) continue;
    LP_ASSIGN_OR_RETURN(decoded, tokenizer->Decode(out.tokens));
    size_t cut = std::string::npos;
    for (const std::string& stop : options.stop) {
      // Only where the new text could complete it.
      const size_t from = emitted >= stop.size() ? emitted - stop.size() + 1 : 0;
      const size_t at = decoded.find(stop, from);
      if (at != std::string::npos) cut = std::min(cut, at);
    }
    if (cut != std::string::npos) {
      decoded.resize(cut);
      out.finish_reason = "stop";
      break;
    }
    // Hold back what a stop string could still begin with, and a partial
    // character.
    const size_t hold = std::max(max_stop > 0 ? max_stop - 1 : 0, UnfinishedTail(decoded));
    if (on_text && decoded.size() > emitted + hold) {
      on_text(absl::string_view(decoded).substr(emitted, decoded.size() - hold - emitted));
      emitted = decoded.size() - hold;
    }
  }
  if (tokenizer != nullptr && out.finish_reason != "stop") {
    LP_ASSIGN_OR_RETURN(decoded, tokenizer->Decode(out.tokens));
  }
  if (on_text && decoded.size() > emitted) on_text(absl::string_view(decoded).substr(emitted));
  out.text = std::move(decoded);
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return out;
}

}  // namespace llamapro
