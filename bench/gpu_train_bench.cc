// Training throughput of the CUDA engine (model/cuda_llama_train.h,
// train/cuda_optimizer.h) against PyTorch on the same GPU, in the same
// invocation (bench/gpu_pytorch_baseline.py: transformers' LlamaForCausalLM,
// bf16, SDPA attention, fused AdamW), on two configurations:
//
//   7b: LLaMA Pro 7B: LLaMA-2-7B shapes (V 32000, C 4096, F 11008, H 32,
//       Hkv 32, D 128) expanded 32 -> 40 blocks, blocks 4, 9, ..., 39
//       trainable (their o_proj/down_proj zeroed, as expansion leaves them),
//       seq 4096.
//   1b: TinyLlama-1.1B shapes (V 32000, C 2048, F 5632, H 32, Hkv 4, D 64)
//       with 24 blocks, blocks 3, 7, ..., 23 trainable, seq 2048.
//
// Weights are random (built in host memory, no checkpoint). One optimizer
// step = ZeroGradients, ForwardBackward of one micro-batch (grad_scale
// 1 / targets), ClipGradients (max norm 1.0), AdamW Step (lr 1e-4, betas
// 0.9/0.95, weight decay 0.1), synchronize; 2 warm-up steps, then --steps
// timed ones. The micro-batch is the largest whose plan (PlanMemory plus the
// AdamW state) fits the device's free memory less a margin. Prints a table
// per configuration and, last, the ratio of tokens/s (llamapro / PyTorch)
// of the 7B configuration (the 1B one with --config 1b).
//
// --plan-only needs no device: the planned device bytes by kind for each
// configuration and recompute mode.
//
// Exit status: 0 done (a failed baseline shows as n/a), 1 a llamapro run
// failed, 2 bad flags, 77 no CUDA device (and not --plan-only).
#include <cuda_runtime_api.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "base/parallel.h"
#include "kernels/cuda/device.h"
#include "model/cuda_llama_train.h"
#include "model/llama_params.h"
#include "model/weights.h"
#include "nlohmann/json.hpp"
#include "train/cuda_optimizer.h"
#include "train/optimizer.h"

namespace llamapro {
namespace {

constexpr int kWarmupSteps = 2;
constexpr int64_t kMaxMicroBatch = 64;
constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
// --plan-only's "fits" column: an 80 GB device (decimal, as sold; an H100
// reports 79.6 GiB, some of it taken by the CUDA context).
constexpr int64_t kPlanDeviceBytes = 80'000'000'000;
// The H200's memory, for --plan-only's second micro-batch column.
constexpr int64_t kPlanH200Bytes = 141'000'000'000;
// AdamW's fp32 states per trainable value (exp_avg, exp_avg_sq): device bytes
// CudaAdamW::Create allocates beyond the pass's plan.
constexpr int64_t kAdamWStateBytesPerValue = 8;

struct Args {
  std::string config = "both";
  int steps = 5;
  int64_t micro_batch = 0;  // 0: the largest that fits.
  std::optional<Recompute> recompute;
  int device = 0;
  double peak_tflops = 0;  // 0: from the device name.
  bool no_baseline = false;
  bool plan_only = false;
};

// One benchmark configuration: model shapes, what trains, sequence length.
struct BenchConfig {
  std::string key;    // "7b" or "1b".
  std::string title;  // For the tables.
  LlamaConfig model;
  std::vector<bool> trainable;  // One per block.
  int64_t seq_len = 0;
  // LLaMA Pro's expansion zeroes the new blocks' o_proj and down_proj, so the
  // expanded model computes what the original did. Speed does not depend on it.
  bool zero_new_outputs = false;
};

BenchConfig LlamaPro7B() {
  BenchConfig b;
  b.key = "7b";
  b.title = "LLaMA Pro 7B: LLaMA-2-7B shapes expanded 32 -> 40 blocks";
  LlamaConfig& m = b.model;
  m.vocab_size = 32000;
  m.hidden_size = 4096;
  m.intermediate_size = 11008;
  m.num_hidden_layers = 40;
  m.num_attention_heads = 32;
  m.num_key_value_heads = 32;
  m.head_dim = 128;
  m.max_position_embeddings = 4096;
  m.rms_norm_eps = 1e-5;
  m.rope_theta = 10000.0;
  m.torch_dtype = DType::kBF16;
  b.trainable.assign(40, false);
  for (int i = 4; i < 40; i += 5) b.trainable[i] = true;
  b.seq_len = 4096;
  b.zero_new_outputs = true;
  return b;
}

BenchConfig TinyLlama1B() {
  BenchConfig b;
  b.key = "1b";
  b.title = "~1B: TinyLlama-1.1B shapes with 24 blocks";
  LlamaConfig& m = b.model;
  m.vocab_size = 32000;
  m.hidden_size = 2048;
  m.intermediate_size = 5632;
  m.num_hidden_layers = 24;
  m.num_attention_heads = 32;
  m.num_key_value_heads = 4;
  m.head_dim = 64;
  m.max_position_embeddings = 2048;
  m.rms_norm_eps = 1e-5;
  m.rope_theta = 10000.0;
  m.torch_dtype = DType::kBF16;
  b.trainable.assign(24, false);
  for (int i = 3; i < 24; i += 4) b.trainable[i] = true;
  b.seq_len = 2048;
  return b;
}

std::string TrainableList(const BenchConfig& b) {
  std::vector<int> blocks;
  for (size_t i = 0; i < b.trainable.size(); ++i) {
    if (b.trainable[i]) blocks.push_back(static_cast<int>(i));
  }
  return absl::StrJoin(blocks, ",");
}

double GiB(double bytes) { return bytes / kGiB; }

int64_t Elements(const std::vector<int64_t>& shape) {
  return std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<>());
}

Parameter* BlockSlot(BlockParams* b, const std::string& suffix) {
  const std::pair<const char*, Parameter*> slots[] = {
      {"input_layernorm.weight", &b->input_norm},
      {"self_attn.q_proj.weight", &b->q_proj},
      {"self_attn.k_proj.weight", &b->k_proj},
      {"self_attn.v_proj.weight", &b->v_proj},
      {"self_attn.o_proj.weight", &b->o_proj},
      {"self_attn.q_proj.bias", &b->q_bias},
      {"self_attn.k_proj.bias", &b->k_bias},
      {"self_attn.v_proj.bias", &b->v_bias},
      {"self_attn.o_proj.bias", &b->o_bias},
      {"post_attention_layernorm.weight", &b->post_norm},
      {"mlp.gate_proj.weight", &b->gate_proj},
      {"mlp.up_proj.weight", &b->up_proj},
      {"mlp.down_proj.weight", &b->down_proj},
      {"mlp.gate_proj.bias", &b->gate_bias},
      {"mlp.up_proj.bias", &b->up_bias},
      {"mlp.down_proj.bias", &b->down_bias},
  };
  for (const auto& [name, slot] : slots) {
    if (suffix == name) return slot;
  }
  return nullptr;
}

// Every tensor the model declares (shape set), values present or not.
std::vector<Parameter*> Declared(LlamaParams* params) {
  std::vector<Parameter*> out;
  for (Parameter* p : params->Slots()) {
    if (!p->shape.empty()) out.push_back(p);
  }
  return out;
}

// Values: a pure function of (tensor index, element index), uniform with
// standard deviation 0.02 for matrices, 1 for norm weights; zero for the
// expanded blocks' output projections when asked.
void FillTensor(Parameter* p, uint64_t seed, bool zero) {
  const int64_t n = Elements(p->shape);
  p->value.resize(static_cast<size_t>(n));  // Zeroed: parallel over tensors.
  if (zero) return;
  if (p->shape.size() == 1) {
    std::fill(p->value.begin(), p->value.end(), 1.0f);
    return;
  }
  const float half_width = 0.02f * std::sqrt(3.0f);
  uint64_t state = seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
  float* out = p->value.data();
  for (int64_t i = 0; i < n; i += 2) {
    // splitmix64: two 24-bit uniforms per draw.
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const float u0 = static_cast<float>(z >> 40) * (1.0f / 16777216.0f);
    const float u1 = static_cast<float>((z >> 8) & 0xFFFFFF) * (1.0f / 16777216.0f);
    out[i] = (2.0f * u0 - 1.0f) * half_width;
    if (i + 1 < n) out[i + 1] = (2.0f * u1 - 1.0f) * half_width;
  }
}

// How much of the model BuildParams materialises.
enum class Values {
  kAll,       // Every tensor: fp32 values, host gradients for the trainable ones.
  kSkeleton,  // Names, shapes and trainable flags; values for 1-D tensors only.
};

// The model of `bench` in host memory. kAll fills every tensor on all
// hardware threads and marks the trainable blocks with ApplyTrainableSet.
// kSkeleton is for plans of models this machine cannot hold (see
// PlanModel): only norm weights (and biases) get values, enough for
// PlanMemory to see which blocks train.
absl::StatusOr<std::unique_ptr<LlamaParams>> BuildParams(const BenchConfig& bench, Values values) {
  auto params = std::make_unique<LlamaParams>();
  params->config = bench.model;
  const LlamaConfig& c = bench.model;
  const auto declare = [](Parameter* p, std::string name, std::vector<int64_t> shape, bool decay) {
    p->name = std::move(name);
    p->shape = std::move(shape);
    p->source_dtype = DType::kBF16;
    p->decay = decay;
    p->trainable = false;
  };
  declare(&params->embed, kEmbedTokens, {c.vocab_size, c.hidden_size}, true);
  params->blocks.resize(static_cast<size_t>(c.num_hidden_layers));
  for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
    for (const ExpectedTensor& t : ExpectedBlockTensors(c, layer)) {
      const auto parsed = ParseLayerTensorName(t.name);
      Parameter* slot = parsed ? BlockSlot(&params->blocks[layer], parsed->second) : nullptr;
      if (slot == nullptr) return absl::InternalError(absl::StrCat("unmapped tensor ", t.name));
      declare(slot, t.name, t.shape, t.shape.size() == 2);
    }
  }
  declare(&params->final_norm, kFinalNorm, {c.hidden_size}, false);
  declare(&params->lm_head, kLmHead, {c.vocab_size, c.hidden_size}, true);

  if (values == Values::kSkeleton) {
    for (Parameter* p : Declared(params.get())) {
      if (p->shape.size() == 1) p->value.assign(static_cast<size_t>(p->shape[0]), 1.0f);
      const auto parsed = ParseLayerTensorName(p->name);
      // Flags only: PlanMemory reads no host gradients.
      p->trainable = parsed && bench.trainable[parsed->first];
    }
    return params;
  }

  std::vector<Parameter*> tensors = Declared(params.get());
  std::vector<size_t> order(tensors.size());
  std::iota(order.begin(), order.end(), size_t{0});
  // Largest first, so that the threads finish together.
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return Elements(tensors[a]->shape) > Elements(tensors[b]->shape);
  });
  std::vector<bool> zero(tensors.size(), false);
  if (bench.zero_new_outputs) {
    for (size_t i = 0; i < tensors.size(); ++i) {
      const auto parsed = ParseLayerTensorName(tensors[i]->name);
      if (parsed && bench.trainable[parsed->first] &&
          (parsed->second == "self_attn.o_proj.weight" ||
           parsed->second == "mlp.down_proj.weight")) {
        zero[i] = true;
      }
    }
  }
  ForkJoinPool pool(HardwareThreads());
  std::atomic<size_t> next{0};
  pool.Run([&](int) {
    for (size_t k; (k = next.fetch_add(1)) < order.size();) {
      FillTensor(tensors[order[k]], order[k] + 1, zero[order[k]]);
    }
  });
  TrainableSet set{.blocks = bench.trainable};
  absl::Status applied = ApplyTrainableSet(set, params.get());
  if (!applied.ok()) return applied;
  return params;
}

int64_t TrainableElements(LlamaParams* params) {
  int64_t n = 0;
  for (Parameter* p : Declared(params)) {
    if (p->trainable) n += Elements(p->shape);
  }
  return n;
}

int64_t TotalElements(LlamaParams* params) {
  int64_t n = 0;
  for (Parameter* p : Declared(params)) n += Elements(p->shape);
  return n;
}

// The pass's plan and the optimizer state beyond it.
struct DevicePlan {
  CudaMemory pass;
  int64_t optimizer_bytes = 0;
  int64_t total() const { return pass.total() + optimizer_bytes; }
};

CudaPassOptions PassOptions(const BenchConfig& bench, int device, int64_t micro_batch,
                            Recompute recompute) {
  CudaPassOptions options;
  options.device = device;
  options.batch = micro_batch;
  options.seq_len = bench.seq_len;
  options.for_training = true;
  options.recompute = recompute;
  return options;
}

// Weight, master and gradient bytes of tensors a skeleton lacks.
struct TensorBytes {
  int64_t weights = 0, masters = 0, gradients = 0;
};

// A model to plan: a full one (`extra` zero), or a skeleton plus the bytes of
// the tensors it lacks. PlanMemory sizes each tensor from Parameter::value
// and carves each from its arena separately (aligned), so the plan of the
// full model is the skeleton's (whose norm weights fix the geometry:
// the lowest trainable block, activations, scratch) plus each missing
// tensor's own bytes. Those are measured by PlanMemory itself, giving one
// frozen block, one trainable block, the embedding and the lm_head values
// in turn (at most ~1 GB of host memory for the 7B configuration, against
// ~35 GB for the whole). CheckAssembly compares the sum with the full model
// on a small configuration.
struct PlanModel {
  std::unique_ptr<LlamaParams> params;
  TensorBytes extra;
};

DevicePlan Plan(const BenchConfig& bench, const PlanModel& model, int device, int64_t micro_batch,
                Recompute recompute) {
  DevicePlan plan;
  plan.pass = CudaTrainingPass::PlanMemory(*model.params,
                                           PassOptions(bench, device, micro_batch, recompute));
  plan.pass.weight_bytes += model.extra.weights;
  plan.pass.master_bytes += model.extra.masters;
  plan.pass.gradient_bytes += model.extra.gradients;
  plan.optimizer_bytes = kAdamWStateBytesPerValue * TrainableElements(model.params.get());
  return plan;
}

absl::StatusOr<PlanModel> Skeleton(const BenchConfig& bench) {
  auto built = BuildParams(bench, Values::kSkeleton);
  if (!built.ok()) return built.status();
  PlanModel model{.params = *std::move(built)};
  LlamaParams& params = *model.params;
  const CudaPassOptions options = PassOptions(bench, 0, 1, Recompute::kNone);
  const CudaMemory base = CudaTrainingPass::PlanMemory(params, options);
  // The bytes PlanMemory adds when `tensors` (of the skeleton) get values.
  const auto measure = [&](const std::vector<Parameter*>& tensors) {
    for (Parameter* p : tensors) p->value.assign(static_cast<size_t>(Elements(p->shape)), 0.0f);
    const CudaMemory with = CudaTrainingPass::PlanMemory(params, options);
    for (Parameter* p : tensors) std::vector<float>().swap(p->value);
    return TensorBytes{with.weight_bytes - base.weight_bytes, with.master_bytes - base.master_bytes,
                       with.gradient_bytes - base.gradient_bytes};
  };
  const auto add = [&](const TensorBytes& b, int64_t times) {
    model.extra.weights += b.weights * times;
    model.extra.masters += b.masters * times;
    model.extra.gradients += b.gradients * times;
  };
  for (bool trainable : {false, true}) {
    const int64_t count = std::count(bench.trainable.begin(), bench.trainable.end(), trainable);
    if (count == 0) continue;
    const size_t first = std::find(bench.trainable.begin(), bench.trainable.end(), trainable) -
                         bench.trainable.begin();
    std::vector<Parameter*> missing;
    const std::string prefix = LayerTensorName(static_cast<int64_t>(first), "");
    for (Parameter* p : Declared(&params)) {
      if (p->value.empty() && p->name.rfind(prefix, 0) == 0) missing.push_back(p);
    }
    add(measure(missing), count);
  }
  add(measure({&params.embed}), 1);
  add(measure({&params.lm_head}), 1);
  return model;
}

// Left unallocated: the allocator's rounding, cuBLASLt's own handles, and
// whatever the plan does not know of.
int64_t Margin(int64_t free_bytes) { return static_cast<int64_t>(kGiB) + free_bytes / 50; }

// The largest micro-batch (<= kMaxMicroBatch) whose plan fits `budget`; 0
// when not even 1 does.
int64_t LargestFitting(const BenchConfig& bench, const PlanModel& model, int device,
                       Recompute recompute, int64_t budget) {
  int64_t best = 0;
  for (int64_t mb = 1; mb <= kMaxMicroBatch; ++mb) {
    if (Plan(bench, model, device, mb, recompute).total() > budget) break;
    best = mb;
  }
  return best;
}

constexpr Recompute kModes[] = {Recompute::kNone, Recompute::kAttention, Recompute::kFull};

std::string ModeName(Recompute mode) { return std::string(RecomputeName(mode)); }

struct Choice {
  int64_t micro_batch = 1;
  Recompute recompute = Recompute::kNone;
  bool fits = false;
  std::string why;
};

// The micro-batch and recompute mode for a device with `free_bytes` free:
// --micro-batch and --recompute when given; otherwise the largest micro-batch
// that fits without recomputation, else with attention recomputation, else
// with full recomputation.
Choice Choose(const BenchConfig& bench, const PlanModel& model, const Args& args,
              int64_t free_bytes) {
  const int64_t budget = free_bytes - Margin(free_bytes);
  std::vector<Recompute> modes(std::begin(kModes), std::end(kModes));
  if (args.recompute) modes = {*args.recompute};
  const std::string budget_text =
      absl::StrFormat("free %.2f GiB - margin %.2f GiB", GiB(free_bytes), GiB(Margin(free_bytes)));
  for (Recompute mode : modes) {
    if (args.micro_batch > 0) {
      if (Plan(bench, model, args.device, args.micro_batch, mode).total() <= budget) {
        return {args.micro_batch, mode, true,
                absl::StrCat("--micro-batch; fits by plan (", budget_text, ")")};
      }
      continue;
    }
    const int64_t mb = LargestFitting(bench, model, args.device, mode, budget);
    if (mb > 0) {
      return {mb, mode, true,
              absl::StrCat("largest that fits by plan", mb == kMaxMicroBatch ? " (the cap)" : "",
                           " (", budget_text, ")")};
    }
  }
  return {args.micro_batch > 0 ? args.micro_batch : 1, modes.back(), false,
          absl::StrCat("does not fit by plan (", budget_text, "); trying anyway")};
}

std::string PlanText(const DevicePlan& plan) {
  const CudaMemory& m = plan.pass;
  return absl::StrFormat(
      "weights %.2f, masters %.2f, gradients %.2f, activations %.2f, scratch %.2f, AdamW state "
      "%.2f, total %.2f GiB",
      GiB(m.weight_bytes), GiB(m.master_bytes), GiB(m.gradient_bytes), GiB(m.activation_bytes),
      GiB(m.scratch_bytes), GiB(plan.optimizer_bytes), GiB(plan.total()));
}

// A small model of the 1B configuration's kind, for CheckAssembly.
BenchConfig SmallCheckConfig() {
  BenchConfig b = TinyLlama1B();
  b.key = "check";
  LlamaConfig& m = b.model;
  m.vocab_size = 1000;
  m.hidden_size = 128;
  m.intermediate_size = 352;
  m.num_hidden_layers = 8;
  m.num_attention_heads = 4;
  m.num_key_value_heads = 2;
  m.head_dim = 32;
  b.trainable.assign(8, false);
  b.trainable[3] = b.trainable[7] = true;
  b.seq_len = 64;
  return b;
}

// Empty when the skeleton's plan equals the full model's for every mode and
// a few micro-batches (a small model: both fit in memory); else what differs.
absl::StatusOr<std::string> CheckAssembly() {
  const BenchConfig bench = SmallCheckConfig();
  auto full = BuildParams(bench, Values::kAll);
  if (!full.ok()) return full.status();
  const PlanModel whole{.params = *std::move(full)};
  auto skeleton = Skeleton(bench);
  if (!skeleton.ok()) return skeleton.status();
  for (Recompute mode : kModes) {
    for (int64_t mb : {1, 3}) {
      const DevicePlan a = Plan(bench, whole, 0, mb, mode);
      const DevicePlan b = Plan(bench, *skeleton, 0, mb, mode);
      if (PlanText(a) != PlanText(b) || a.total() != b.total()) {
        return absl::StrCat("recompute ", ModeName(mode), ", micro-batch ", mb, ": full model ",
                            a.total(), " bytes, assembled ", b.total());
      }
    }
  }
  return std::string();
}

// --plan-only: every configuration and recompute mode, micro-batch 1.
int PlanOnly(const std::vector<BenchConfig>& configs, const Args& args) {
  std::printf(
      "gpu_train_bench --plan-only: device bytes planned by CudaTrainingPass::PlanMemory at "
      "micro-batch 1, plus AdamW's state (8 bytes per trainable value); no device used\n");
  auto check = CheckAssembly();
  if (!check.ok()) {
    std::fprintf(stderr, "gpu_train_bench: %s\n", std::string(check.status().message()).c_str());
    return 1;
  }
  if (!check->empty()) {
    std::printf(
        "warning: the plan assembled from a skeleton differs from PlanMemory of the whole model "
        "(%s): the numbers below are approximate\n",
        check->c_str());
  }
  for (const BenchConfig& bench : configs) {
    auto model = Skeleton(bench);
    if (!model.ok()) {
      std::fprintf(stderr, "gpu_train_bench: %s\n", std::string(model.status().message()).c_str());
      return 1;
    }
    LlamaParams* p = model->params.get();
    std::printf("\n%s (%s), trainable blocks %s, seq %lld\n", bench.title.c_str(),
                bench.key.c_str(), TrainableList(bench).c_str(),
                static_cast<long long>(bench.seq_len));
    std::printf("parameters %.3f B, trainable %.3f B\n", TotalElements(p) / 1e9,
                TrainableElements(p) / 1e9);
    std::printf("%-9s %8s %8s %8s %8s %8s %8s %8s %9s %7s %7s\n", "recompute", "weights", "masters",
                "grads", "activ", "scratch", "adamw", "total", "fits 80GB", "mb@80GB", "mb@141GB");
    for (Recompute mode : kModes) {
      const DevicePlan plan = Plan(bench, *model, args.device, 1, mode);
      const CudaMemory& m = plan.pass;
      const int64_t mb80 = LargestFitting(bench, *model, args.device, mode,
                                          kPlanDeviceBytes - Margin(kPlanDeviceBytes));
      const int64_t mb141 =
          LargestFitting(bench, *model, args.device, mode, kPlanH200Bytes - Margin(kPlanH200Bytes));
      std::printf("%-9s %8.2f %8.2f %8.2f %8.2f %8.2f %8.2f %8.2f %9s %7lld %7lld\n",
                  ModeName(mode).c_str(), GiB(m.weight_bytes), GiB(m.master_bytes),
                  GiB(m.gradient_bytes), GiB(m.activation_bytes), GiB(m.scratch_bytes),
                  GiB(plan.optimizer_bytes), GiB(plan.total()),
                  plan.total() <= kPlanDeviceBytes ? "yes" : "no", static_cast<long long>(mb80),
                  static_cast<long long>(mb141));
    }
  }
  std::printf(
      "\n(GiB. fits 80GB: the micro-batch 1 total <= 80e9 bytes. mb@80GB / mb@141GB: the largest "
      "micro-batch (<= %lld) whose total fits 80 GB / 141 GB less the run's margin of 1 GiB + "
      "2%%; 0: none. The device run plans against cudaMemGetInfo's free bytes instead.)\n",
      static_cast<long long>(kMaxMicroBatch));
  std::printf("plan only: nothing ran on a device; no ratio\n");
  return 0;
}

// --- The device run ----------------------------------------------------------

struct OursResult {
  bool ran = false;
  bool ok = false;
  std::string error;
  int64_t micro_batch = 0;
  Recompute recompute = Recompute::kNone;
  std::string choice;
  DevicePlan planned;          // memory() of the pass actually built, + StateBytes.
  int64_t measured_bytes = 0;  // free before Create - lowest free during the run.
  int64_t free_before = 0;
  double tokens_per_s = 0;
  double median_ms = 0, min_ms = 0, max_ms = 0;
  double flops_per_token = 0;
  FlopCount flops;
  double first_loss = 0, last_loss = 0, last_norm = 0;
  double build_s = 0, create_s = 0;
};

struct BaselineResult {
  bool ran = false;
  bool ok = false;
  std::string error;
  double tokens_per_s = 0;
  double median_ms = 0;
  int64_t peak_mem_bytes = 0;
  int64_t reserved_bytes = 0;
  int64_t micro_batch = 0;
  int64_t grad_accum = 1;
  std::string notes;
  std::string versions;
};

#define BENCH_CUDA(call)                                                                    \
  do {                                                                                      \
    const cudaError_t bench_err = (call);                                                   \
    if (bench_err != cudaSuccess) {                                                         \
      return absl::InternalError(absl::StrCat(#call, ": ", cudaGetErrorString(bench_err))); \
    }                                                                                       \
  } while (0)

absl::StatusOr<int64_t> FreeBytes() {
  size_t free_bytes = 0, total_bytes = 0;
  BENCH_CUDA(cudaMemGetInfo(&free_bytes, &total_bytes));
  return static_cast<int64_t>(free_bytes);
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Create's refusal by plan (ResourceExhausted) or a cudaMalloc that failed
// (Internal, "out of memory").
bool IsOutOfMemory(const absl::Status& status) {
  return absl::IsResourceExhausted(status) ||
         std::string(status.message()).find("out of memory") != std::string::npos;
}

absl::Status RunOurs(const BenchConfig& bench, const Args& args, OursResult* r) {
  r->ran = true;
  auto start = std::chrono::steady_clock::now();
  auto built = BuildParams(bench, Values::kAll);
  if (!built.ok()) return built.status();
  const PlanModel model{.params = *std::move(built)};
  LlamaParams* params = model.params.get();
  r->build_s = Seconds(start);
  std::printf("  host model built in %.1f s (%.2f B values, fp32)\n", r->build_s,
              TotalElements(params) / 1e9);
  std::fflush(stdout);

  BENCH_CUDA(cudaSetDevice(args.device));
  BENCH_CUDA(cudaFree(nullptr));  // The context, before measuring free memory.
  auto free_before = FreeBytes();
  if (!free_before.ok()) return free_before.status();
  r->free_before = *free_before;
  Choice choice = Choose(bench, model, args, *free_before);
  // Kept even if Create fails: the baseline runs this micro-batch then.
  r->micro_batch = choice.micro_batch;
  r->recompute = choice.recompute;
  std::printf(
      "  plan: micro-batch %lld, recompute %s (%s): %s\n",
      static_cast<long long>(choice.micro_batch), ModeName(choice.recompute).c_str(),
      choice.why.c_str(),
      PlanText(Plan(bench, model, args.device, choice.micro_batch, choice.recompute)).c_str());
  std::fflush(stdout);

  // Create the pass and the optimizer, stepping down (a smaller micro-batch,
  // else more recomputation, unless the flags fix them) when the device
  // refuses what the plan promised.
  OptimizerConfig adamw{.name = "adamw",
                        .lr = 1e-4,
                        .beta1 = 0.9,
                        .beta2 = 0.95,
                        .eps = 1e-8,
                        .weight_decay = 0.1,
                        .clip_grad_norm = 1.0};
  std::unique_ptr<CudaTrainingPass> pass;
  std::unique_ptr<CudaAdamW> optimizer;
  start = std::chrono::steady_clock::now();
  for (;;) {
    absl::Status failed;
    auto created = CudaTrainingPass::Create(
        params, PassOptions(bench, args.device, choice.micro_batch, choice.recompute));
    if (created.ok()) {
      pass = *std::move(created);
      auto made = CudaAdamW::Create(adamw, pass.get());
      if (made.ok()) {
        optimizer = *std::move(made);
        break;
      }
      failed = made.status();
      pass.reset();
    } else {
      failed = created.status();
    }
    if (!IsOutOfMemory(failed)) return failed;
    std::printf("  micro-batch %lld, recompute %s: %s\n",
                static_cast<long long>(choice.micro_batch), ModeName(choice.recompute).c_str(),
                std::string(failed.message()).c_str());
    if (args.micro_batch == 0 && choice.micro_batch > 1) {
      --choice.micro_batch;
    } else if (!args.recompute && choice.recompute != Recompute::kFull) {
      choice.recompute =
          choice.recompute == Recompute::kNone ? Recompute::kAttention : Recompute::kFull;
    } else {
      return failed;
    }
    choice.why += "; stepped down after the device refused";
    r->micro_batch = choice.micro_batch;
    r->recompute = choice.recompute;
  }
  r->create_s = Seconds(start);
  r->micro_batch = choice.micro_batch;
  r->recompute = choice.recompute;
  r->choice = choice.why;
  r->planned.pass = pass->memory();
  r->planned.optimizer_bytes = optimizer->StateBytes();
  r->flops = pass->flops_per_token();
  r->flops_per_token = r->flops.forward + r->flops.backward;
  std::printf("  pass and optimizer created in %.1f s: micro-batch %lld, recompute %s\n",
              r->create_s, static_cast<long long>(r->micro_batch), ModeName(r->recompute).c_str());
  std::fflush(stdout);

  int64_t lowest_free = *free_before;
  const auto sample_free = [&]() -> absl::Status {
    auto now_free = FreeBytes();
    if (!now_free.ok()) return now_free.status();
    lowest_free = std::min(lowest_free, *now_free);
    return absl::OkStatus();
  };
  if (absl::Status s = sample_free(); !s.ok()) return s;

  std::mt19937_64 rng(1);
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(bench.model.vocab_size) - 1);
  std::vector<int32_t> tokens(static_cast<size_t>(r->micro_batch * (bench.seq_len + 1)));
  for (int32_t& t : tokens) t = token(rng);
  const int64_t targets = r->micro_batch * bench.seq_len;

  std::vector<double> times;
  for (int step = 0; step < kWarmupSteps + args.steps; ++step) {
    start = std::chrono::steady_clock::now();
    if (absl::Status s = pass->ZeroGradients(); !s.ok()) return s;
    auto loss = pass->ForwardBackward(tokens, {}, 1.0f / static_cast<float>(targets));
    if (!loss.ok()) return loss.status();
    auto norm = optimizer->ClipGradients();
    if (!norm.ok()) return norm.status();
    if (absl::Status s = optimizer->Step(1e-4); !s.ok()) return s;
    BENCH_CUDA(cudaStreamSynchronize(pass->stream()));
    const double seconds = Seconds(start);
    if (step >= kWarmupSteps) times.push_back(seconds);
    const double mean_loss = loss->loss / static_cast<double>(std::max<int64_t>(1, loss->targets));
    if (step == 0) r->first_loss = mean_loss;
    r->last_loss = mean_loss;
    r->last_norm = *norm;
    std::printf("  step %d%s: %8.1f ms, loss %.4f, grad norm %.4f\n", step + 1,
                step < kWarmupSteps ? " (warm-up)" : "", seconds * 1e3, mean_loss, *norm);
    std::fflush(stdout);
    if (absl::Status s = sample_free(); !s.ok()) return s;
  }
  r->median_ms = Median(times) * 1e3;
  r->min_ms = *std::min_element(times.begin(), times.end()) * 1e3;
  r->max_ms = *std::max_element(times.begin(), times.end()) * 1e3;
  r->tokens_per_s = static_cast<double>(targets) / (r->median_ms / 1e3);
  r->measured_bytes = *free_before - lowest_free;
  r->ok = std::isfinite(r->last_loss);
  if (!r->ok) r->error = "the loss is not finite";
  return absl::OkStatus();
}

// --- The baseline subprocess -------------------------------------------------

std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

std::string FindPython() {
  if (const char* env = std::getenv("LLAMAPRO_TORCH_PYTHON"); env != nullptr && *env != '\0') {
    return env;
  }
  if (access("/opt/torch/.venv/bin/python", X_OK) == 0) return "/opt/torch/.venv/bin/python";
  return "python3";
}

// bench/gpu_pytorch_baseline.py: from the working directory (the repository
// root, as scripts/gpu_check.sh runs it), beside the binary's repository
// (build/bench/ or .gpu/bin/), or in the source tree this was built from.
std::string FindBaselineScript(const char* argv0) {
  namespace fs = std::filesystem;
  const fs::path rel = fs::path("bench") / "gpu_pytorch_baseline.py";
  std::vector<fs::path> candidates = {fs::current_path() / rel};
  std::error_code ec;
  const fs::path exe = fs::canonical("/proc/self/exe", ec);
  const fs::path exe_dir = ec ? fs::path(argv0).parent_path() : exe.parent_path();
  candidates.push_back(exe_dir / ".." / ".." / rel);
  candidates.push_back(exe_dir / ".." / rel);
  candidates.push_back(fs::path(LLAMAPRO_SOURCE_DIR) / rel);
  for (const fs::path& p : candidates) {
    if (fs::exists(p, ec)) return fs::weakly_canonical(p, ec).string();
  }
  return "";
}

BaselineResult RunBaseline(const BenchConfig& bench, const Args& args, int64_t micro_batch,
                           Recompute recompute, const std::string& script) {
  BaselineResult r;
  r.ran = true;
  if (script.empty()) {
    r.error = "bench/gpu_pytorch_baseline.py not found";
    return r;
  }
  const LlamaConfig& m = bench.model;
  const std::string python = FindPython();
  const std::string command = absl::StrCat(
      "PYTHONUNBUFFERED=1 ", ShellQuote(python), " ", ShellQuote(script), " --vocab ", m.vocab_size,
      " --hidden ", m.hidden_size, " --ffn ", m.intermediate_size, " --layers ",
      m.num_hidden_layers, " --heads ", m.num_attention_heads, " --kv-heads ",
      m.num_key_value_heads, " --head-dim ", m.head_dim, " --rms-norm-eps ",
      absl::StrFormat("%g", m.rms_norm_eps), " --rope-theta ", absl::StrFormat("%g", m.rope_theta),
      " --trainable ", TrainableList(bench), " --seq ", bench.seq_len, " --micro-batch ",
      micro_batch, " --recompute ", ModeName(recompute), " --warmup ", kWarmupSteps, " --steps ",
      args.steps, " --device cuda:", args.device);
  std::printf("  baseline: %s\n", command.c_str());
  std::fflush(stdout);
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) {
    r.error = "popen failed";
    return r;
  }
  std::string line, last_json;
  char buffer[4096];
  while (std::fgets(buffer, sizeof(buffer), pipe) != nullptr) {
    line += buffer;
    if (line.empty() || line.back() != '\n') continue;
    std::printf("  [pytorch] %s", line.c_str());
    std::fflush(stdout);
    if (line.front() == '{') last_json = line;
    line.clear();
  }
  if (!line.empty()) {
    std::printf("  [pytorch] %s\n", line.c_str());
    if (line.front() == '{') last_json = line;
  }
  const int status = pclose(pipe);
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  const nlohmann::json j = nlohmann::json::parse(last_json, nullptr, /*allow_exceptions=*/false);
  if (last_json.empty() || j.is_discarded() || !j.is_object()) {
    r.error = absl::StrCat("no JSON result from ", python, " (exit status ", code, ")");
    return r;
  }
  r.notes = j.value("notes", "");
  r.versions = j.value("versions", "");
  if (!j.value("ok", false)) {
    r.error = j.value("error", std::string("the baseline failed"));
    return r;
  }
  r.ok = true;
  r.tokens_per_s = j.value("tokens_per_s", 0.0);
  r.median_ms = j.value("step_ms", 0.0);
  r.peak_mem_bytes = j.value("peak_mem_bytes", int64_t{0});
  r.reserved_bytes = j.value("peak_reserved_bytes", int64_t{0});
  r.micro_batch = j.value("micro_batch", int64_t{0});
  r.grad_accum = j.value("grad_accum", int64_t{1});
  return r;
}

// --- Reporting ---------------------------------------------------------------

std::string Mfu(double flops_per_token, double tokens_per_s, double peak) {
  if (peak <= 0 || flops_per_token <= 0 || tokens_per_s <= 0) return "n/a";
  return absl::StrFormat("%.1f %%", 100.0 * flops_per_token * tokens_per_s / peak);
}

struct ConfigResult {
  const BenchConfig* bench = nullptr;
  OursResult ours;
  BaselineResult baseline;
  double ratio = 0;  // 0: not available.
  std::string ratio_note;
};

void PrintTable(const ConfigResult& c, double peak) {
  const OursResult& o = c.ours;
  const BaselineResult& b = c.baseline;
  std::printf("\n%-22s %10s %10s %10s %8s %6s\n", "", "tokens/s", "step ms", "peak GiB", "MFU",
              "mb");
  if (o.ok) {
    std::printf("%-22s %10.1f %10.1f %10.2f %8s %6lld\n", "llamapro (CUDA)", o.tokens_per_s,
                o.median_ms, GiB(o.measured_bytes),
                Mfu(o.flops_per_token, o.tokens_per_s, peak).c_str(),
                static_cast<long long>(o.micro_batch));
  } else {
    std::printf("%-22s failed: %s\n", "llamapro (CUDA)", o.error.c_str());
  }
  if (b.ok) {
    std::printf("%-22s %10.1f %10.1f %10.2f %8s %6s\n", "PyTorch (HF, sdpa)", b.tokens_per_s,
                b.median_ms, GiB(b.peak_mem_bytes),
                Mfu(o.flops_per_token, b.tokens_per_s, peak).c_str(),
                absl::StrCat(b.micro_batch, b.grad_accum > 1 ? absl::StrCat("x", b.grad_accum) : "")
                    .c_str());
  } else if (b.ran) {
    std::printf("%-22s failed: %s\n", "PyTorch (HF, sdpa)", b.error.c_str());
  } else {
    std::printf("%-22s not run (--no-baseline)\n", "PyTorch (HF, sdpa)");
  }
  if (c.ratio > 0) {
    std::printf("%-22s %10.2f\n", "llamapro / PyTorch", c.ratio);
  } else {
    std::printf("%-22s n/a (%s)\n", "llamapro / PyTorch", c.ratio_note.c_str());
  }
  std::printf(
      "(peak GiB: llamapro = free before Create - lowest free during the steps (cudaMemGetInfo); "
      "PyTorch = torch.cuda.max_memory_allocated. MFU: the pass's FLOPs per token for both.)\n");
}

int Main(int argc, char** argv) {
  CLI::App app(
      "Training throughput of the CUDA engine vs PyTorch (transformers, bf16, SDPA, fused AdamW) "
      "on the same GPU: LLaMA Pro 7B (LLaMA-2-7B shapes, 40 blocks, 8 trainable, seq 4096) and "
      "a ~1B model (TinyLlama-1.1B shapes, 24 blocks, 6 trainable, seq 2048). Prints a table per "
      "configuration and the 7B tokens/s ratio last.");
  Args args;
  std::string recompute;
  app.add_option("--config", args.config, "Which configuration: 7b, 1b or both")
      ->check(CLI::IsMember({"7b", "1b", "both"}))
      ->capture_default_str();
  app.add_option("--steps", args.steps, "Timed optimizer steps after 2 warm-up steps")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  app.add_option("--micro-batch", args.micro_batch,
                 "Sequences per step (0: the largest whose PlanMemory plus AdamW state fits the "
                 "free device memory less 1 GiB + 2%); PyTorch gets the same")
      ->check(CLI::Range(int64_t{0}, int64_t{4096}))
      ->capture_default_str();
  app.add_option("--recompute", recompute,
                 "Activation recomputation: none, attention or full (default: none, falling back "
                 "to attention, then full, when micro-batch 1 does not fit)")
      ->check(CLI::IsMember({"none", "attention", "full"}));
  app.add_option("--device", args.device, "CUDA device ordinal (PyTorch gets cuda:N)")
      ->check(CLI::Range(0, 1023))
      ->capture_default_str();
  app.add_option(
         "--peak-tflops", args.peak_tflops,
         "Peak dense bf16 TFLOP/s for MFU (default: from the device name: H100 SXM "
         "989.4, H100 PCIe 756, H100 NVL 835, H200 989.4, A100 312, L40S 362; otherwise MFU is "
         "n/a)")
      ->check(CLI::PositiveNumber);
  app.add_flag("--no-baseline", args.no_baseline,
               "Skip the PyTorch baseline (no ratio is printed then)");
  app.add_flag("--plan-only", args.plan_only,
               "No device: print each configuration's planned device bytes by kind for each "
               "recompute mode at micro-batch 1, and whether it fits 80 GB");
  app.footer(
      "Environment: LLAMAPRO_TORCH_PYTHON (the baseline's python; default "
      "/opt/torch/.venv/bin/python, else python3). Exit status: 0 done, 1 a llamapro run failed, "
      "2 bad flags, 77 no CUDA device.");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }
  if (!recompute.empty()) {
    auto parsed = ParseRecompute(recompute);
    if (!parsed.ok()) {
      std::fprintf(stderr, "gpu_train_bench: %s\n", std::string(parsed.status().message()).c_str());
      return 2;
    }
    args.recompute = *parsed;
  }

  std::vector<BenchConfig> configs;
  if (args.config != "1b") configs.push_back(LlamaPro7B());
  if (args.config != "7b") configs.push_back(TinyLlama1B());
  if (args.plan_only) return PlanOnly(configs, args);

  int devices = 0;
  const cudaError_t count_err = cudaGetDeviceCount(&devices);
  if (count_err != cudaSuccess || devices == 0) {
    std::printf(
        "no CUDA device: %s (use --plan-only for the memory plan)\n",
        count_err != cudaSuccess ? cudaGetErrorString(count_err) : "cudaGetDeviceCount found none");
    return 77;
  }
  if (args.device >= devices) {
    std::printf("no CUDA device: --device %d, but there are %d\n", args.device, devices);
    return 77;
  }
  cudaDeviceProp props{};
  if (cudaGetDeviceProperties(&props, args.device) != cudaSuccess) {
    std::printf("no CUDA device: cudaGetDeviceProperties(%d) failed\n", args.device);
    return 77;
  }
  const std::string device_name = props.name;
  double peak = args.peak_tflops * 1e12;
  std::string peak_source = "--peak-tflops";
  if (peak == 0) {
    peak = cuda::PeakBf16FlopsForName(device_name);
    peak_source =
        peak == 0 ? "unknown device: MFU n/a (give --peak-tflops)" : "from the device name";
  }
  const std::string script = args.no_baseline ? "" : FindBaselineScript(argv[0]);
  std::printf(
      "gpu_train_bench: device %d: %s, %.1f GiB, sm_%d%d, %d SMs; %d warm-up + %d timed "
      "steps; MFU peak %.1f TFLOP/s bf16 dense (%s)\n",
      args.device, device_name.c_str(), GiB(static_cast<double>(props.totalGlobalMem)), props.major,
      props.minor, props.multiProcessorCount, kWarmupSteps, args.steps, peak / 1e12,
      peak_source.c_str());
  std::fflush(stdout);

  std::vector<ConfigResult> results;
  bool any_failed = false;
  for (const BenchConfig& bench : configs) {
    ConfigResult c;
    c.bench = &bench;
    std::printf("\n=== %s (%s): trainable blocks %s, seq %lld ===\n", bench.title.c_str(),
                bench.key.c_str(), TrainableList(bench).c_str(),
                static_cast<long long>(bench.seq_len));
    std::fflush(stdout);
    absl::Status status = RunOurs(bench, args, &c.ours);
    if (!status.ok()) {
      c.ours.ok = false;
      c.ours.error = std::string(status.message());
    }
    // Everything of ours goes before PyTorch starts: device memory, context.
    cudaDeviceReset();
    OursResult& o = c.ours;
    if (o.ok) {
      std::printf("  llamapro: micro-batch %lld (%s), recompute %s\n",
                  static_cast<long long>(o.micro_batch), o.choice.c_str(),
                  ModeName(o.recompute).c_str());
      std::printf("  planned (memory() + StateBytes): %s\n", PlanText(o.planned).c_str());
      std::printf("  measured: %.2f GiB (free %.2f GiB before Create)\n", GiB(o.measured_bytes),
                  GiB(o.free_before));
      std::printf(
          "  steps: median %.1f ms (min %.1f, max %.1f) over %d; loss %.4f -> %.4f; "
          "FLOPs/token: forward %.2f G + backward %.2f G = %.2f G\n",
          o.median_ms, o.min_ms, o.max_ms, args.steps, o.first_loss, o.last_loss,
          o.flops.forward / 1e9, o.flops.backward / 1e9, o.flops_per_token / 1e9);
    } else {
      any_failed = true;
      std::printf("  llamapro FAILED: %s\n", o.error.c_str());
    }
    if (!args.no_baseline) {
      // The same micro-batch (what ours ran, or would have run) and mode.
      int64_t mb = o.micro_batch;
      if (mb == 0) mb = args.micro_batch > 0 ? args.micro_batch : 1;
      c.baseline = RunBaseline(bench, args, mb, o.recompute, script);
    }
    if (!o.ok) {
      c.ratio_note = "llamapro failed";
    } else if (args.no_baseline) {
      c.ratio_note = "--no-baseline";
    } else if (!c.baseline.ok) {
      c.ratio_note = absl::StrCat("PyTorch failed: ", c.baseline.error);
    } else if (c.baseline.tokens_per_s > 0) {
      c.ratio = o.tokens_per_s / c.baseline.tokens_per_s;
    }
    if (c.baseline.ran) {
      std::printf("  PyTorch (%s)%s%s\n", c.baseline.versions.c_str(),
                  c.baseline.notes.empty() ? "" : ": ", c.baseline.notes.c_str());
    }
    PrintTable(c, peak);
    std::fflush(stdout);
    results.push_back(std::move(c));
  }

  std::printf("\n");
  for (const ConfigResult& c : results) {
    const OursResult& o = c.ours;
    const BaselineResult& b = c.baseline;
    std::string ours = o.ok ? absl::StrFormat(
                                  "llamapro %.1f tok/s (MFU %s, %.2f GiB, micro-batch %lld, "
                                  "recompute %s)",
                                  o.tokens_per_s, Mfu(o.flops_per_token, o.tokens_per_s, peak),
                                  GiB(o.measured_bytes), static_cast<long long>(o.micro_batch),
                                  ModeName(o.recompute))
                            : absl::StrCat("llamapro FAILED (", o.error, ")");
    std::string theirs =
        b.ok ? absl::StrFormat("PyTorch %.1f tok/s (MFU %s, %.2f GiB, micro-batch %lld x %lld)",
                               b.tokens_per_s, Mfu(o.flops_per_token, b.tokens_per_s, peak),
                               GiB(b.peak_mem_bytes), static_cast<long long>(b.micro_batch),
                               static_cast<long long>(b.grad_accum))
             : absl::StrCat("PyTorch ", b.ran ? absl::StrCat("FAILED (", b.error, ")")
                                              : std::string("not run"));
    std::printf("summary %s: %s | %s\n", c.bench->key.c_str(), ours.c_str(), theirs.c_str());
  }
  std::printf("MFU peak: %.1f TFLOP/s bf16 dense (%s; device \"%s\")\n", peak / 1e12,
              peak_source.c_str(), device_name.c_str());
  const ConfigResult& last = results.front();  // 7b when run, else 1b.
  const std::string label =
      last.bench->key == "7b" ? std::string("7B LLaMA Pro") : std::string("1B");
  if (last.ratio > 0) {
    std::printf("ratio (llamapro / PyTorch tokens/s, %s): %.2f\n", label.c_str(), last.ratio);
  } else {
    std::printf("ratio (llamapro / PyTorch tokens/s, %s): n/a (%s)\n", label.c_str(),
                last.ratio_note.c_str());
  }
  return any_failed ? 1 : 0;
}

}  // namespace
}  // namespace llamapro

int main(int argc, char** argv) { return llamapro::Main(argc, argv); }
