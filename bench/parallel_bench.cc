// Per-rank memory and communication of the LLaMA Pro configuration under
// tensor parallelism and ZeRO-1, from the engine's own planner
// (train/parallel_plan.h): LLaMA-2-7B shapes expanded 32 -> 40 blocks (a new
// block after every 4, the 8 new ones trainable), seq 4096, on one node of
// `--world` GPUs, for tp in {1, 2, 4, 8} (dp = world / tp) with ZeRO-1 off
// and on. No device is needed: nothing is allocated.
//
// The baseline is the first row (tp 1, ZeRO-1 off: plain data parallelism);
// the last line is the ratio of the smallest per-rank footprint to it.
//
//   bench/parallel_bench [--world 8] [--micro-batch 1] [--sequences 1024]
//                        [--backend cuda|cpu] [--device-gib 80]
#include <cstdio>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_format.h"
#include "train/parallel_plan.h"

namespace llamapro {
namespace {

double GiB(double bytes) { return bytes / (1024.0 * 1024.0 * 1024.0); }

int Main(int argc, char** argv) {
  CLI::App app("Per-rank bytes and communication of the 7B LLaMA Pro step under DP x TP");
  int world = 8;
  int64_t micro = 1, sequences = 1024, seq_len = 4096;
  std::string backend = "cuda";
  double device_gib = 80;
  app.add_option("--world", world, "Ranks (GPUs of one node): dp = world / tp")
      ->check(CLI::Range(1, 4096));
  app.add_option("--micro-batch", micro, "Sequences per micro-batch")->check(CLI::Range(1, 1024));
  app.add_option("--sequences", sequences, "Global batch in sequences (the paper's: 1024)")
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("--seq-len", seq_len, "Tokens per sequence")->check(CLI::Range(1, 1 << 20));
  app.add_option("--backend", backend, "cuda (bf16 mixed precision, NCCL) or cpu (fp32, Gloo)")
      ->check(CLI::IsMember({"cuda", "cpu"}));
  app.add_option("--device-gib", device_gib, "Device memory for the 'fits' column");
  CLI11_PARSE(app, argc, argv);

  ParallelPlanInput in = LlamaPro7BPlanInput();
  in.seq_len = seq_len;
  in.micro_batch = micro;
  in.global_sequences = sequences;
  in.backend =
      backend == "cuda" ? ParallelPlanInput::Backend::kCudaMixed : ParallelPlanInput::Backend::kCpu;

  std::printf(
      "LLaMA-2-7B shapes expanded to 40 blocks (8 trainable), seq %lld, micro-batch %lld, "
      "%lld sequences per step, %d ranks, %s backend\n",
      static_cast<long long>(seq_len), static_cast<long long>(micro),
      static_cast<long long>(sequences), world, backend.c_str());
  std::printf("%-3s %-4s %-5s %9s %9s %9s %9s %9s %9s %9s %11s %11s %5s\n", "tp", "dp", "zero",
              "params", "weights", "grads", "masters", "optim", "activ", "total", "TP GiB/step",
              "DP GiB/step", "fits");
  double baseline = 0, best = 0;
  std::string best_row;
  for (int tp : {1, 2, 4, 8}) {
    if (world % tp != 0) continue;
    for (bool zero : {false, true}) {
      in.tp = tp;
      in.dp = world / tp;
      in.zero1 = zero;
      if (in.global_sequences % (int64_t{in.dp} * micro) != 0) continue;
      const ParallelPlan plan = PlanParallel(in);
      const double total = static_cast<double>(plan.total_bytes());
      if (baseline == 0) baseline = total;
      if (best == 0 || total < best) {
        best = total;
        best_row = absl::StrFormat("tp %d, dp %d, ZeRO-1 %s", tp, in.dp, zero ? "on" : "off");
      }
      std::printf(
          "%-3d %-4d %-5s %8.2fB %8.2fG %8.2fG %8.2fG %8.2fG %8.2fG %8.2fG %11.2f %11.2f %5s\n", tp,
          in.dp, zero ? "on" : "off", static_cast<double>(plan.parameters) / 1e9,
          GiB(plan.weight_bytes), GiB(plan.gradient_bytes), GiB(plan.master_bytes),
          GiB(plan.optimizer_bytes), GiB(plan.activation_bytes), GiB(total),
          GiB(plan.tp_bytes_per_step), GiB(plan.dp_bytes_per_step),
          GiB(total) <= device_gib ? "yes" : "no");
    }
  }
  std::printf(
      "(params in billions held per rank; bytes per rank in GiB; communication is what "
      "each rank sends per optimizer step)\n");
  std::printf("ratio: per-rank bytes of %s / tp 1, ZeRO-1 off = %.3f\n", best_row.c_str(),
              best / baseline);
  return 0;
}

}  // namespace
}  // namespace llamapro

int main(int argc, char** argv) { return llamapro::Main(argc, argv); }
