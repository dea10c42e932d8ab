// Training throughput of the CPU engine on the model of the agreed PyTorch
// baseline (../shared/bench/pytorch_baseline.py): LLaMA architecture, vocab
// 8000, hidden 256, 8 layers, 8 heads, FFN 688, untied lm_head, fp32, seq 256,
// batch 8; one step = forward + backward + AdamW (lr 1e-4, weight decay 0.1).
// Two modes: every tensor trainable, and only blocks 3 and 7 (as after an
// interleaved expansion). Prints one line per mode and a JSON summary last.
//
// Usage: train_bench [--steps N] [--warmup N] [--threads N] [--layers N] [--seq N]
//                    [--batch N] [--dir DIR]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/blas.h"
#include "kernels/cpu/ops.h"
#include "model/llama_params.h"
#include "model/llama_train.h"
#include "model/synth.h"
#include "train/optimizer.h"

namespace llamapro {
namespace {

struct Args {
  int steps = 10;
  int warmup = 3;
  int threads = 2;
  int layers = 8;
  int seq = 256;
  int batch = 8;
  std::string dir;
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int Run(const Args& args) {
  SynthSpec spec;
  spec.vocab_size = 8000;
  spec.hidden_size = 256;
  spec.intermediate_size = 688;
  spec.num_hidden_layers = args.layers;
  spec.num_attention_heads = 8;
  spec.num_key_value_heads = 8;
  spec.max_position_embeddings = std::max(args.seq, 256);
  spec.dtype = DType::kF32;
  const std::string dir =
      args.dir.empty() ? (std::filesystem::temp_directory_path() / "llamapro-train-bench").string()
                       : args.dir;
  absl::Status written = WriteSyntheticCheckpoint(spec, dir, 5'000'000'000, true, nullptr);
  if (!written.ok()) {
    std::fprintf(stderr, "train_bench: %s\n", std::string(written.message()).c_str());
    return 1;
  }
  auto reader = CheckpointReader::Open(dir);
  auto config = LoadLlamaConfig(dir);
  if (!reader.ok() || !config.ok()) return 1;

  std::mt19937_64 rng(0);
  std::uniform_int_distribution<int32_t> token(0, spec.vocab_size - 1);
  std::vector<int32_t> tokens(static_cast<size_t>(args.batch) * (args.seq + 1));
  for (int32_t& t : tokens) t = token(rng);

  struct Mode {
    const char* name;
    std::vector<int> blocks;  // Empty: everything trains.
  };
  const Mode modes[] = {{"all trainable", {}}, {"blocks 3,7 trainable", {3, 7}}};
  double tok_s[2] = {0, 0};
  for (int m = 0; m < 2; ++m) {
    auto params = LoadLlamaParams(**reader, *config);
    if (!params.ok()) return 1;
    TrainableSet set{.blocks = std::vector<bool>(args.layers, modes[m].blocks.empty())};
    if (modes[m].blocks.empty()) {
      set.embeddings = set.final_norm = set.lm_head = true;
    } else {
      for (int b : modes[m].blocks) set.blocks[b] = true;
    }
    if (!ApplyTrainableSet(set, &*params).ok()) return 1;
    ParallelTrainingPass pass(&*params, args.batch, args.seq, args.threads);
    OptimizerConfig adamw{.name = "adamw",
                          .lr = 1e-4,
                          .beta1 = 0.9,
                          .beta2 = 0.999,
                          .weight_decay = 0.1,
                          .clip_grad_norm = 0};
    std::vector<Parameter*> trainable = params->Trainable();
    auto optimizer = MakeOptimizer(adamw, trainable);
    if (!optimizer.ok()) return 1;
    std::vector<double> times;
    double loss = 0;
    for (int step = 0; step < args.warmup + args.steps; ++step) {
      const auto start = std::chrono::steady_clock::now();
      ZeroGradients(trainable);
      auto sum = pass.ForwardBackward(tokens, {}, 1.0f / (args.batch * args.seq));
      if (!sum.ok()) return 1;
      (*optimizer)->Step(1e-4);
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (step >= args.warmup) times.push_back(seconds);
      loss = sum->loss / (args.batch * args.seq);
    }
    const double median = Median(times);
    tok_s[m] = args.batch * args.seq / median;
    const FlopCount& flops = pass.flops_per_token();
    std::printf(
        "llamapro %-22s params %.2fM (trainable %.2fM)  median %7.1f ms/step  min %7.1f  %7.0f "
        "tok/s  %.1f GFLOP/s executed  loss %.3f\n",
        modes[m].name, params->TotalParameters() / 1e6, params->TrainableParameters() / 1e6,
        median * 1e3, *std::min_element(times.begin(), times.end()) * 1e3, tok_s[m],
        (flops.forward + flops.backward) * tok_s[m] / 1e9, loss);
    std::fflush(stdout);
  }
  std::printf("BLAS: %s\n", cpu::BlasDescription().c_str());
  std::printf("{\"full_tok_s\": %.1f, \"frozen_3_7_tok_s\": %.1f}\n", tok_s[0], tok_s[1]);
  return 0;
}

}  // namespace
}  // namespace llamapro

int main(int argc, char** argv) {
  llamapro::Args args;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    const char* value = argv[i + 1];
    if (flag == "--steps") {
      args.steps = std::atoi(value);
    } else if (flag == "--warmup") {
      args.warmup = std::atoi(value);
    } else if (flag == "--threads") {
      args.threads = std::atoi(value);
    } else if (flag == "--layers") {
      args.layers = std::atoi(value);
    } else if (flag == "--seq") {
      args.seq = std::atoi(value);
    } else if (flag == "--batch") {
      args.batch = std::atoi(value);
    } else if (flag == "--dir") {
      args.dir = value;
    } else {
      std::fprintf(stderr, "train_bench: unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  if (args.steps < 1 || args.layers < 8 || args.seq < 1 || args.batch < 1) {
    std::fprintf(stderr, "train_bench: --steps, --seq, --batch must be positive, --layers >= 8\n");
    return 2;
  }
  return llamapro::Run(args);
}
