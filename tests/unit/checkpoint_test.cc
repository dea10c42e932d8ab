#include "model/checkpoint.h"

#include <algorithm>
#include <string>
#include <vector>

#include "base/file.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/weights.h"
#include "nlohmann/json.hpp"
#include "tests/testing/test_util.h"

namespace llamapro {
namespace {

using ::testing::HasSubstr;
using testing::ScratchDir;

TEST(CheckpointTest, ShardsGreedilyLikeSavePretrained) {
  std::vector<TensorSpec> tensors = {{"a", DType::kF32, {10}},  // 40 bytes
                                     {"b", DType::kF32, {10}},
                                     {"c", DType::kF32, {30}},  // 120 bytes: alone
                                     {"d", DType::kF32, {1}}};
  ShardLayout layout = PlanShards(tensors, 100);
  EXPECT_EQ(layout.shard_of, (std::vector<size_t>{0, 0, 1, 2}));
  EXPECT_EQ(layout.file_names, (std::vector<std::string>{"model-00001-of-00003.safetensors",
                                                         "model-00002-of-00003.safetensors",
                                                         "model-00003-of-00003.safetensors"}));
  EXPECT_EQ(PlanShards(tensors, 1000).file_names, std::vector<std::string>{"model.safetensors"});
}

TEST(CheckpointTest, ShardedAndSingleFileCheckpointsReadTheSameTensors) {
  ScratchDir dir;
  SynthSpec spec = testing::SmallSpec(3, 2, 1, false, true);
  testing::WriteCheckpoint(spec, dir.Join("single"));
  testing::WriteCheckpoint(spec, dir.Join("sharded"), 4000);
  auto single = CheckpointReader::Open(dir.Join("single"));
  auto sharded = CheckpointReader::Open(dir.Join("sharded"));
  ASSERT_TRUE(single.ok()) << single.status();
  ASSERT_TRUE(sharded.ok()) << sharded.status();
  EXPECT_FALSE((*single)->sharded());
  EXPECT_TRUE((*sharded)->sharded());
  EXPECT_GT((*sharded)->files().size(), 2u);
  EXPECT_TRUE(PathExists(dir.Join("sharded/model.safetensors.index.json")));
  auto index = nlohmann::json::parse(*ReadFile(dir.Join("sharded/model.safetensors.index.json")));
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), (*sharded)->TotalTensorBytes());
  ASSERT_EQ((*single)->names().size(), (*sharded)->names().size());
  for (const std::string& name : (*single)->names()) {
    std::vector<float> a, b;
    ASSERT_TRUE((*single)->ReadF32(name, &a).ok());
    ASSERT_TRUE((*sharded)->ReadF32(name, &b).ok()) << name;
    EXPECT_EQ(a, b) << name;
  }
}

class BrokenShardsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = dir_.Join("m");
    testing::WriteCheckpoint(testing::SmallSpec(2, 2, 2, false, false), model_, 3000);
    index_path_ = JoinPath(model_, kWeightsIndexFile);
    index_ = nlohmann::json::parse(*ReadFile(index_path_));
    for (const auto& [tensor, shard] : index_["weight_map"].items()) {
      if (std::find(shards_.begin(), shards_.end(), shard) == shards_.end()) {
        shards_.push_back(shard.get<std::string>());
      }
    }
    std::sort(shards_.begin(), shards_.end());
    ASSERT_GE(shards_.size(), 2u);
  }
  void SaveIndex() { testing::WriteBytes(index_path_, index_.dump()); }
  absl::Status Open() { return CheckpointReader::Open(model_).status(); }

  ScratchDir dir_;
  std::string model_, index_path_;
  nlohmann::json index_;
  std::vector<std::string> shards_;
};

TEST_F(BrokenShardsTest, MissingShardIsNamed) {
  ASSERT_TRUE(RemoveAll(JoinPath(model_, shards_[1])).ok());
  absl::Status s = Open();
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("lists shard " + shards_[1] + ", which is missing"));
}

TEST_F(BrokenShardsTest, TensorListedButAbsentFromItsShardIsNamed) {
  index_["weight_map"]["model.layers.9.mlp.up_proj.weight"] = shards_[0];
  SaveIndex();
  absl::Status s = Open();
  EXPECT_THAT(std::string(s.message()),
              HasSubstr(shards_[0] + ": tensor "
                                     "'model.layers.9.mlp.up_proj.weight' is listed"));
}

TEST_F(BrokenShardsTest, TensorMissingFromTheIndexIsNamed) {
  index_["weight_map"].erase("model.norm.weight");
  SaveIndex();
  EXPECT_THAT(std::string(Open().message()), HasSubstr("tensor 'model.norm.weight' is not listed"));
}

TEST_F(BrokenShardsTest, ShardPathsOutsideTheDirectoryAreRefused) {
  index_["weight_map"]["model.norm.weight"] = "../../etc/passwd.safetensors";
  SaveIndex();
  EXPECT_THAT(std::string(Open().message()),
              HasSubstr("not a .safetensors file in this directory"));
}

TEST(CheckpointTest, DirectoryWithoutSafetensorsPointsAtConversion) {
  ScratchDir dir;
  testing::WriteBytes(dir.Join("pytorch_model.bin"), "pickle");
  auto reader = CheckpointReader::Open(dir.path());
  ASSERT_FALSE(reader.ok());
  EXPECT_THAT(std::string(reader.status().message()), HasSubstr("convert them to safetensors"));
}

TEST(CheckpointTest, ValidationNamesMissingAndMisshapenTensors) {
  ScratchDir dir;
  SynthSpec spec = testing::SmallSpec(2, 2, 2, false, false);
  testing::WriteCheckpoint(spec, dir.Join("m"));
  auto reader = CheckpointReader::Open(dir.Join("m"));
  ASSERT_TRUE(reader.ok());
  LlamaConfig config = SynthConfig(spec);
  EXPECT_TRUE(ValidateCheckpoint(config, **reader).ok());

  LlamaConfig more_layers = config;
  more_layers.num_hidden_layers = 3;
  EXPECT_THAT(std::string(ValidateCheckpoint(more_layers, **reader).message()),
              HasSubstr("tensor 'model.layers.2.input_layernorm.weight' is missing"));
  LlamaConfig fewer_layers = config;
  fewer_layers.num_hidden_layers = 1;
  EXPECT_THAT(std::string(ValidateCheckpoint(fewer_layers, **reader).message()),
              HasSubstr("belongs to layer 1 but config.json has num_hidden_layers=1"));
  LlamaConfig wider = config;
  wider.intermediate_size += 1;
  EXPECT_THAT(std::string(ValidateCheckpoint(wider, **reader).message()),
              HasSubstr("tensor 'model.layers.0.mlp.gate_proj.weight' has shape [37, 12] but "
                        "config.json implies [38, 12]"));
  LlamaConfig biased = config;
  biased.attention_bias = true;
  EXPECT_THAT(std::string(ValidateCheckpoint(biased, **reader).message()),
              HasSubstr("'model.layers.0.self_attn.q_proj.bias' is missing"));
}

}  // namespace
}  // namespace llamapro
