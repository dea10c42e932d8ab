// Tensor parallelism and ZeRO-1 in process: sharded loading, the TP
// training pass (vocabulary-parallel cross-entropy included) against the
// unsharded one over real Gloo connections between threads, the ZeRO-1
// shards, and the planner's accounting against what a pass allocates. The
// end-to-end runs over worker processes are in
// tests/integration/control_plane_test.cc.
#include <cmath>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/checkpoint.h"
#include "model/llama_params.h"
#include "model/llama_train.h"
#include "tests/testing/test_util.h"
#include "train/communicator.h"
#include "train/parallel_plan.h"
#include "train/zero.h"

namespace llamapro {
namespace {

using ::testing::HasSubstr;

// ||a - b|| / ||b||.
double RelativeError(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double diff = 0, norm = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    diff += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    norm += double(b[i]) * b[i];
  }
  return norm > 0 ? std::sqrt(diff / norm) : std::sqrt(diff);
}

// Runs body(rank, communicator) on `size` threads connected by Gloo.
void RunGroup(int size, const std::string& dir,
              const std::function<void(int, Communicator&)>& body) {
  std::vector<std::thread> threads;
  threads.reserve(size);
  for (int rank = 0; rank < size; ++rank) {
    threads.emplace_back([&, rank] {
      std::unique_ptr<RendezvousStore> store = MakeFileRendezvousStore(dir);
      GlooOptions options;
      options.timeout = std::chrono::seconds(30);
      auto communicator = MakeGlooCommunicator(rank, size, store.get(), options);
      ASSERT_TRUE(communicator.ok()) << communicator.status();
      body(rank, **communicator);
    });
  }
  for (std::thread& t : threads) t.join();
}

// Random tokens of batch rows of seq_len + 1, and a mask with some zeros.
void RandomBatch(int64_t batch, int64_t seq_len, int64_t vocab, std::vector<int32_t>* tokens,
                 std::vector<uint8_t>* mask) {
  std::mt19937 rng(5);
  std::uniform_int_distribution<int32_t> id(0, static_cast<int32_t>(vocab) - 1);
  tokens->resize(batch * (seq_len + 1));
  mask->resize(tokens->size());
  for (size_t i = 0; i < tokens->size(); ++i) {
    (*tokens)[i] = id(rng);
    (*mask)[i] = i % 5 != 3;
  }
}

struct PassResult {
  double loss = 0;
  double eval_loss = 0;
  std::map<std::string, std::vector<float>> grads;  // Whole tensors.
};

SynthSpec TpSpec() {
  // Vocabulary, FFN and KV heads even so tp = 2 splits them; biases on, so
  // the row-parallel layers' bias (added once) is covered.
  SynthSpec spec = testing::SmallSpec(/*layers=*/3, /*heads=*/4, /*kv_heads=*/2, /*tied=*/false,
                                      /*bias=*/true);
  spec.vocab_size = 98;
  spec.intermediate_size = 38;
  return spec;
}

TEST(TensorParallelTest, ShardedLoadingReadsEachRanksSlice) {
  testing::ScratchDir dir;
  testing::WriteCheckpoint(TpSpec(), dir.Join("model"));
  LlamaParams full = testing::LoadParams(dir.Join("model"));
  auto reader = CheckpointReader::Open(dir.Join("model"));
  ASSERT_TRUE(reader.ok());
  for (int rank = 0; rank < 2; ++rank) {
    auto shard = LoadLlamaParams(**reader, full.config, {rank, 2});
    ASSERT_TRUE(shard.ok()) << shard.status();
    const std::vector<Parameter*> whole = full.All(), part = shard->All();
    ASSERT_EQ(whole.size(), part.size());
    for (size_t i = 0; i < whole.size(); ++i) {
      const Parameter& p = *part[i];
      EXPECT_EQ(p.split_dim, TensorParallelSplitDim(p.name)) << p.name;
      EXPECT_EQ(p.FullElements(), whole[i]->NumElements()) << p.name;
      if (p.split_dim >= 0) {
        EXPECT_EQ(p.NumElements() * 2, whole[i]->NumElements()) << p.name;
      }
      std::vector<float> expected(p.value.size());
      ExtractSlice(p, whole[i]->value.data(), expected.data());
      EXPECT_EQ(p.value, expected) << p.name;
      std::vector<float> back(whole[i]->value.size(), 0.0f);
      PlaceSlice(p, p.value.data(), back.data());
      ExtractSlice(p, back.data(), expected.data());
      EXPECT_EQ(p.value, expected) << p.name;
    }
  }
  EXPECT_EQ(TensorParallelSplitDim("model.layers.0.self_attn.o_proj.weight"), 1);
  EXPECT_EQ(TensorParallelSplitDim("model.layers.0.self_attn.o_proj.bias"), -1);
  EXPECT_EQ(TensorParallelSplitDim("model.layers.0.mlp.gate_proj.bias"), 0);
  EXPECT_EQ(TensorParallelSplitDim("model.norm.weight"), -1);
}

TEST(TensorParallelTest, SplitsThatDoNotDivideAreRefusedByName) {
  LlamaConfig config = testing::LoadParams([] {
                         static testing::ScratchDir dir;
                         testing::WriteCheckpoint(TpSpec(), dir.Join("m"));
                         return dir.Join("m");
                       }())
                           .config;
  EXPECT_TRUE(CheckTensorParallel(config, 2).ok());
  EXPECT_THAT(std::string(CheckTensorParallel(config, 4).message()),
              HasSubstr("tp 4 does not divide the model's num_key_value_heads (2)"));
  config.num_key_value_heads = 4;
  EXPECT_THAT(std::string(CheckTensorParallel(config, 4).message()),
              HasSubstr("intermediate_size (38)"));
  config.intermediate_size = 40;
  EXPECT_THAT(std::string(CheckTensorParallel(config, 4).message()), HasSubstr("vocab_size (98)"));
}

// What trains in a TP pass test: everything, or only block 1 (frozen-aware:
// block 0 is never differentiated, block 1 computes no input gradient).
enum class Trains { kAll, kBlock1 };

// The pass on tp = 2 ranks against one rank: loss (the vocabulary-parallel
// cross-entropy), evaluation loss and every gradient.
void ExpectTwoRankPassEqualsTheUnshardedPass(bool tied, Trains trains) {
  testing::ScratchDir dir;
  SynthSpec spec = TpSpec();
  spec.tie_word_embeddings = tied;
  testing::WriteCheckpoint(spec, dir.Join("model"));
  const int64_t batch = 2, seq_len = 12;
  std::vector<int32_t> tokens;
  std::vector<uint8_t> mask;
  const LlamaConfig config = testing::LoadParams(dir.Join("model")).config;
  RandomBatch(batch, seq_len, config.vocab_size, &tokens, &mask);

  auto set_trainable = [&](LlamaParams* p) {
    if (trains == Trains::kAll) {
      for (Parameter* t : p->All()) t->SetTrainable(true);
      return;
    }
    TrainableSet set;
    set.blocks = {false, true, false};
    ASSERT_TRUE(ApplyTrainableSet(set, p).ok());
  };
  PassResult reference;
  {
    LlamaParams params = testing::LoadParams(dir.Join("model"));
    set_trainable(&params);
    TrainingPass pass(&params, batch, seq_len);
    auto loss = pass.ForwardBackward(tokens, mask, 0.05f);
    ASSERT_TRUE(loss.ok()) << loss.status();
    reference.loss = loss->loss;
    reference.eval_loss = pass.Evaluate(tokens, mask)->loss;
    for (Parameter* p : params.All()) reference.grads[p->name] = p->grad;
  }
  std::vector<PassResult> ranks(2);
  std::vector<LlamaParams> shards(2);
  RunGroup(2, dir.Join("rendezvous"), [&](int rank, Communicator& comm) {
    auto reader = CheckpointReader::Open(dir.Join("model"));
    ASSERT_TRUE(reader.ok());
    auto params = LoadLlamaParams(**reader, config, {rank, 2});
    ASSERT_TRUE(params.ok()) << params.status();
    shards[rank] = std::move(*params);
    set_trainable(&shards[rank]);
    TrainingPass pass(&shards[rank], batch, seq_len, true, false, {&comm, rank, 2});
    auto loss = pass.ForwardBackward(tokens, mask, 0.05f);
    ASSERT_TRUE(loss.ok()) << loss.status();
    ranks[rank].loss = loss->loss;
    auto eval = pass.Evaluate(tokens, mask);
    ASSERT_TRUE(eval.ok()) << eval.status();
    ranks[rank].eval_loss = eval->loss;
  });
  for (int rank = 0; rank < 2; ++rank) {
    EXPECT_NEAR(ranks[rank].loss, reference.loss, 1e-5 * reference.loss) << "rank " << rank;
    EXPECT_NEAR(ranks[rank].eval_loss, reference.eval_loss, 1e-5 * reference.eval_loss);
  }
  EXPECT_EQ(ranks[0].loss, ranks[1].loss);  // Every rank computes the same bits.
  // Each rank's gradient is its slice of the unsharded gradient; frozen
  // slices have none.
  int split = 0, trainable = 0;
  for (int rank = 0; rank < 2; ++rank) {
    for (Parameter* p : shards[rank].All()) {
      const std::vector<float>& whole = reference.grads.at(p->name);
      ASSERT_EQ(p->grad.empty(), whole.empty()) << p->name;
      if (whole.empty()) continue;
      std::vector<float> expected(p->grad.size());
      ExtractSlice(*p, whole.data(), expected.data());
      EXPECT_LT(RelativeError(p->grad, expected), 1e-5) << p->name << " on rank " << rank;
      split += p->split_dim >= 0;
      ++trainable;
    }
  }
  EXPECT_GT(split, trains == Trains::kAll ? 10 : 4);
  EXPECT_GT(trainable, 0);
}

TEST(TensorParallelTest, TwoRankPassEqualsTheUnshardedPass) {
  ExpectTwoRankPassEqualsTheUnshardedPass(/*tied=*/false, Trains::kAll);
}

TEST(TensorParallelTest, TwoRankPassWithTiedEmbeddingsEqualsTheUnshardedPass) {
  ExpectTwoRankPassEqualsTheUnshardedPass(/*tied=*/true, Trains::kAll);
}

TEST(TensorParallelTest, TwoRankPassTrainingOneBlockEqualsTheUnshardedPass) {
  ExpectTwoRankPassEqualsTheUnshardedPass(/*tied=*/false, Trains::kBlock1);
}

TEST(ZeroShardsTest, PiecesCoverEveryTrainableValueOnceAndRoundTrip) {
  std::vector<Parameter> tensors(3);
  const int64_t sizes[] = {5, 12, 4};
  for (int i = 0; i < 3; ++i) {
    tensors[i].name = absl::StrCat("t", i);
    tensors[i].shape = {sizes[i]};
    for (int64_t j = 0; j < sizes[i]; ++j) tensors[i].value.push_back(float(i * 100 + j));
    tensors[i].SetTrainable(true);
  }
  std::vector<Parameter*> pointers = {&tensors[0], &tensors[1], &tensors[2]};
  std::vector<int> covered(21, 0);
  for (int rank = 0; rank < 3; ++rank) {
    ZeroShards zero(pointers, 3, rank);
    EXPECT_EQ(zero.owned_elements(), 7);
    const std::vector<Parameter*> pieces = zero.pieces();
    for (size_t k = 0; k < pieces.size(); ++k) {
      const Parameter* tensor = zero.piece_tensors()[k];
      EXPECT_EQ(pieces[k]->name, tensor->name);
      int64_t offset = 0;
      for (const Parameter& t : tensors) {
        if (&t == tensor) break;
        offset += t.NumElements();
      }
      for (size_t j = 0; j < pieces[k]->value.size(); ++j) {
        EXPECT_EQ(pieces[k]->value[j], tensor->value[pieces[k]->flat_begin + j]);
        ++covered[offset + pieces[k]->flat_begin + j];
      }
    }
  }
  EXPECT_EQ(covered, std::vector<int>(21, 1));

  // Two ranks over Gloo: gradients reduce-scattered, values all-gathered.
  testing::ScratchDir dir;
  std::vector<std::vector<Parameter>> replicas(2, tensors);
  RunGroup(2, dir.Join("rendezvous"), [&](int rank, Communicator& comm) {
    std::vector<Parameter*> mine;
    for (Parameter& t : replicas[rank]) {
      for (float& g : t.grad) g = float(rank + 1);
      mine.push_back(&t);
    }
    ZeroShards zero(mine, 2, rank);
    ASSERT_TRUE(zero.ReduceScatterGradients(comm).ok());
    for (Parameter* piece : zero.pieces()) {
      for (float g : piece->grad) EXPECT_EQ(g, 3.0f);
      for (float& v : piece->value) v = -v;  // An "update".
    }
    ASSERT_TRUE(zero.AllGatherValues(comm).ok());
  });
  for (int rank = 0; rank < 2; ++rank) {
    for (size_t i = 0; i < tensors.size(); ++i) {
      for (size_t j = 0; j < tensors[i].value.size(); ++j) {
        EXPECT_EQ(replicas[rank][i].value[j], -tensors[i].value[j]);
      }
    }
  }
}

// The planner's activation bytes are what a pass allocates (one thread).
TEST(ParallelPlanTest, ActivationBytesMatchTheTrainingPass) {
  testing::ScratchDir dir;
  testing::WriteCheckpoint(TpSpec(), dir.Join("model"));
  const LlamaConfig config = testing::LoadParams(dir.Join("model")).config;
  LocalCommunicator local;  // Not called: constructing a pass communicates nothing.
  for (int tp : {1, 2}) {
    for (int lowest : {0, 1, 3}) {
      auto reader = CheckpointReader::Open(dir.Join("model"));
      ASSERT_TRUE(reader.ok());
      auto params = LoadLlamaParams(**reader, config, {0, tp});
      ASSERT_TRUE(params.ok());
      TrainableSet set;
      set.blocks.assign(3, false);
      for (int b = lowest; b < 3; ++b) set.blocks[b] = true;
      if (lowest == 3) set.final_norm = true;
      ASSERT_TRUE(ApplyTrainableSet(set, &*params).ok());
      TrainingPass pass(&*params, 2, 16, true, false, {&local, 0, tp});
      ParallelPlanInput in{.model = config,
                           .trainable_blocks = set.blocks,
                           .final_norm = set.final_norm,
                           .seq_len = 16,
                           .micro_batch = 2,
                           .global_sequences = 8,
                           .tp = tp};
      const ParallelPlan plan = PlanParallel(in);
      EXPECT_EQ(plan.activation_bytes, static_cast<int64_t>(pass.ActivationBytes()))
          << "tp " << tp << ", lowest trainable block " << lowest;
      EXPECT_EQ(plan.parameters, params->TotalParameters()) << "tp " << tp;
      EXPECT_EQ(plan.trainable, params->TrainableParameters()) << "tp " << tp;
      EXPECT_EQ(plan.micro_batches_per_step, 4);
    }
  }
}

TEST(ParallelPlanTest, ZeroShardsOptimizerStateAndTpSplitsWeights) {
  ParallelPlanInput in = LlamaPro7BPlanInput();
  in.global_sequences = 8;
  in.dp = 8;
  const ParallelPlan base = PlanParallel(in);
  // 40 blocks of 202,383,360 + embeddings and head of 131,072,000 each.
  EXPECT_EQ(base.parameters, 40LL * 202383360 + 2LL * 131072000 + 4096);
  EXPECT_EQ(base.trainable, 8LL * 202383360);
  EXPECT_EQ(base.optimizer_bytes, base.trainable * 8);
  EXPECT_EQ(base.tp_bytes_per_step, 0);
  in.zero1 = true;
  const ParallelPlan zero = PlanParallel(in);
  EXPECT_EQ(zero.optimizer_bytes, base.optimizer_bytes / 8);
  EXPECT_EQ(zero.master_bytes, base.master_bytes / 8);
  // NCCL: a reduce-scatter of fp32 gradients and an all-gather of bf16
  // weights send 3/4 of the fp32 all-reduce's bytes.
  EXPECT_NEAR(zero.dp_bytes_per_step, 0.75 * base.dp_bytes_per_step, 1.0);
  in.tp = 4;
  in.dp = 2;
  const ParallelPlan tp4 = PlanParallel(in);
  EXPECT_LT(tp4.weight_bytes, base.weight_bytes / 3);
  EXPECT_GT(tp4.tp_bytes_per_step, 0);
}

}  // namespace
}  // namespace llamapro
