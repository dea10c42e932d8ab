#include "train/checkpoint.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <iterator>
#include <map>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "base/file.h"
#include "base/status_macros.h"
#include "model/lineage.h"
#include "nlohmann/json.hpp"

namespace llamapro {
namespace {

using Json = nlohmann::ordered_json;
constexpr char kStateFormat[] = "llamapro.trainer-state";
constexpr char kMasterPrefix[] = "master.";

absl::Status WriteWeights(const std::string& dir, LlamaParams& params,
                          const CheckpointReader& source, uint64_t shard_bytes, bool merge_lora) {
  std::map<std::string, Parameter*> by_name;
  for (Parameter* p : params.All()) by_name[p->name] = p;
  // Weights with a LoRA adapter, when written merged: (layer, target).
  std::map<std::string, std::pair<int64_t, int>> merged;
  for (size_t layer = 0; merge_lora && layer < params.blocks.size(); ++layer) {
    for (int t = 0; t < kLoraTargets; ++t) {
      if (params.blocks[layer].lora[t].present()) {
        merged[params.blocks[layer].LoraBase(t).name] = {static_cast<int64_t>(layer), t};
      }
    }
  }
  std::vector<TensorSpec> specs;
  for (const std::string& name : source.names()) {
    const TensorInfo& info = *source.Find(name)->info;
    specs.push_back({name, info.dtype, info.shape});
  }
  // Parameters the source does not have (the MoE baseline's second experts
  // and mixing logits, on the first checkpoint of such a run), after them.
  // LoRA adapters are not model tensors: they live in optimizer.safetensors.
  std::vector<const Parameter*> added;
  for (Parameter* p : params.All()) {
    if (source.Find(p->name) || absl::StrContains(p->name, ".lora_")) continue;
    specs.push_back({p->name, p->source_dtype, p->shape});
    added.push_back(p);
  }
  LP_ASSIGN_OR_RETURN(auto writer, CheckpointWriter::Create(dir, specs, shard_bytes));
  std::vector<uint8_t> buffer;
  const size_t from_source = specs.size() - added.size();
  for (size_t i = 0; i < specs.size(); ++i) {
    LP_RETURN_IF_ERROR(writer->BeginTensor(i));
    if (i >= from_source) {
      const Parameter& p = *added[i - from_source];
      buffer.resize(p.value.size() * DTypeSize(specs[i].dtype));
      if (!ConvertFromF32(p.value.data(), p.value.size(), specs[i].dtype, buffer.data())) {
        return absl::InternalError(
            absl::StrCat("cannot write ", p.name, " as ", DTypeName(specs[i].dtype)));
      }
      LP_RETURN_IF_ERROR(writer->Append(buffer.data(), buffer.size()));
      continue;
    }
    const TensorRef ref = *source.Find(specs[i].name);
    if (auto m = merged.find(specs[i].name); m != merged.end()) {
      const std::vector<float> values = MergedLoraWeight(params, m->second.first, m->second.second);
      buffer.resize(values.size() * DTypeSize(specs[i].dtype));
      if (!ConvertFromF32(values.data(), values.size(), specs[i].dtype, buffer.data())) {
        return absl::InternalError(
            absl::StrCat("cannot write ", specs[i].name, " as ", DTypeName(specs[i].dtype)));
      }
      LP_RETURN_IF_ERROR(writer->Append(buffer.data(), buffer.size()));
      continue;
    }
    auto it = by_name.find(specs[i].name);
    if (it == by_name.end() || !it->second->trainable) {
      // Frozen (or not a model parameter): the source bytes, unchanged.
      LP_RETURN_IF_ERROR(writer->AppendFrom(ref.file->mapped().file(),
                                            ref.file->FileOffset(*ref.info), ref.info->NumBytes()));
      continue;
    }
    const Parameter& p = *it->second;
    buffer.resize(p.value.size() * DTypeSize(specs[i].dtype));
    if (!ConvertFromF32(p.value.data(), p.value.size(), specs[i].dtype, buffer.data())) {
      return absl::InternalError(
          absl::StrCat("cannot write ", p.name, " as ", DTypeName(specs[i].dtype)));
    }
    LP_RETURN_IF_ERROR(writer->Append(buffer.data(), buffer.size()));
  }
  return writer->Finish();
}

// The adapters as PEFT writes them: adapter_model.safetensors (fp32, names
// prefixed "base_model.model.") and adapter_config.json.
absl::Status WritePeftAdapter(const std::string& dir, LlamaParams& params,
                              const std::string& base_model) {
  std::vector<TensorSpec> specs;
  std::vector<const Parameter*> tensors;
  std::set<std::string> targets;
  std::vector<int64_t> layers;
  for (size_t layer = 0; layer < params.blocks.size(); ++layer) {
    bool any = false;
    for (int t = 0; t < kLoraTargets; ++t) {
      const LoraAdapter& l = params.blocks[layer].lora[t];
      if (!l.present()) continue;
      any = true;
      targets.insert(kLoraTargetNames[t]);
      for (const Parameter* p : {&l.a, &l.b}) {
        specs.push_back({"base_model.model." + p->name, DType::kF32, p->shape});
        tensors.push_back(p);
      }
    }
    if (any) layers.push_back(static_cast<int64_t>(layer));
  }
  LP_ASSIGN_OR_RETURN(auto writer,
                      SafetensorsWriter::Create(JoinPath(dir, "adapter_model.safetensors"), specs,
                                                {{"format", "pt"}}));
  for (const Parameter* p : tensors) {
    LP_RETURN_IF_ERROR(writer->Append(p->value.data(), p->value.size() * sizeof(float)));
  }
  LP_RETURN_IF_ERROR(writer->Finish());
  Json config = {{"peft_type", "LORA"},
                 {"task_type", "CAUSAL_LM"},
                 {"base_model_name_or_path", base_model},
                 {"r", params.lora_rank},
                 {"lora_alpha", params.lora_alpha},
                 {"lora_dropout", 0.0},
                 {"target_modules", std::vector<std::string>(targets.begin(), targets.end())},
                 {"bias", "none"},
                 {"fan_in_fan_out", false},
                 {"inference_mode", true},
                 {"init_lora_weights", true},
                 {"layers_to_transform", layers},
                 {"modules_to_save", nullptr}};
  return WriteFileAtomic(JoinPath(dir, "adapter_config.json"), config.dump(2) + "\n");
}

absl::Status WriteOptimizerState(const std::string& path, LlamaParams& params,
                                 const Optimizer& optimizer) {
  std::vector<std::pair<TensorSpec, const std::vector<float>*>> tensors;
  for (Parameter* p : params.Trainable()) {
    tensors.push_back({{absl::StrCat(kMasterPrefix, p->name),
                        DType::kF32,
                        {static_cast<int64_t>(p->value.size())}},
                       &p->value});
  }
  for (const auto& [name, values] : optimizer.StateTensors()) {
    tensors.push_back({{name, DType::kF32, {static_cast<int64_t>(values->size())}}, values});
  }
  std::vector<TensorSpec> specs;
  specs.reserve(tensors.size());
  for (const auto& [spec, values] : tensors) specs.push_back(spec);
  LP_ASSIGN_OR_RETURN(auto writer,
                      SafetensorsWriter::Create(path, specs,
                                                {{"format", "pt"},
                                                 {"llamapro", "optimizer-state"},
                                                 {"optimizer", std::string(optimizer.name())},
                                                 {"step", absl::StrCat(optimizer.step())}}));
  for (const auto& [spec, values] : tensors) {
    LP_RETURN_IF_ERROR(writer->Append(values->data(), values->size() * sizeof(float)));
  }
  return writer->Finish();
}

std::string SerializeState(const TrainerState& s) {
  Json j;
  j["format"] = kStateFormat;
  j["version"] = 1;
  j["step"] = s.step;
  j["total_steps"] = s.total_steps;
  j["next_sample"] = s.next_sample;
  j["tokens"] = s.tokens;
  j["learning_rate"] = s.learning_rate;
  j["loss"] = s.loss;
  j["seed"] = s.seed;
  j["seq_len"] = s.seq_len;
  j["global_sequences"] = s.global_sequences;
  j["mixture"] = s.mixture;
  j["optimizer"] = s.optimizer;
  j["trainable"] = s.trainable;
  return j.dump(2) + "\n";
}

// checkpoint-<digits> directories of `dir`, oldest first.
std::vector<std::pair<int64_t, std::string>> ListCheckpoints(const std::string& dir) {
  std::vector<std::pair<int64_t, std::string>> out;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    int64_t step = 0;
    if (entry.is_directory(ec) && absl::StartsWith(name, "checkpoint-") &&
        absl::SimpleAtoi(name.substr(11), &step)) {
      out.emplace_back(step, name);
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

std::string CheckpointName(int64_t step) { return absl::StrFormat("checkpoint-%06d", step); }

absl::StatusOr<std::string> WriteTrainingCheckpoint(const CheckpointWriteOptions& options,
                                                    const TrainerState& state, LlamaParams& params,
                                                    const Optimizer& optimizer,
                                                    const CheckpointReader& source) {
  LP_RETURN_IF_ERROR(MakeDirs(options.output_dir));
  const std::string name = CheckpointName(state.step);
  const std::string final_dir = JoinPath(options.output_dir, name);
  LP_ASSIGN_OR_RETURN(auto staging, StagingDir::Create(final_dir));
  LP_RETURN_IF_ERROR(
      WriteWeights(staging->path(), params, source, options.shard_bytes, options.merge_lora));
  if (params.lora_rank > 0 && !options.merge_lora) {
    LP_RETURN_IF_ERROR(WritePeftAdapter(staging->path(), params, source.dir()));
  }
  LP_RETURN_IF_ERROR(
      WriteFileAtomic(JoinPath(staging->path(), kConfigFile), SerializeLlamaConfig(params.config)));
  LP_RETURN_IF_ERROR(
      WriteOptimizerState(JoinPath(staging->path(), kOptimizerStateFile), params, optimizer));
  LP_RETURN_IF_ERROR(
      WriteFileAtomic(JoinPath(staging->path(), kTrainerStateFile), SerializeState(state)));
  LP_RETURN_IF_ERROR(CopySideFiles(source.dir(), staging->path(),
                                   {kConfigFile, kTrainerStateFile, kLatestFile}, nullptr,
                                   nullptr));
  // Re-writing an existing step (a rerun of the same interval) replaces it.
  LP_RETURN_IF_ERROR(staging->Commit(/*replace_existing=*/true));
  LP_RETURN_IF_ERROR(WriteFileAtomic(JoinPath(options.output_dir, kLatestFile), name + "\n"));
  if (options.keep > 0) {
    std::vector<std::pair<int64_t, std::string>> all = ListCheckpoints(options.output_dir);
    for (size_t i = 0; i + options.keep < all.size(); ++i) {
      if (all[i].second == name) continue;
      LP_RETURN_IF_ERROR(RemoveAll(JoinPath(options.output_dir, all[i].second)));
    }
  }
  return final_dir;
}

absl::StatusOr<std::string> ResolveModelDir(const std::string& path) {
  if (PathExists(JoinPath(path, kConfigFile)) || !PathExists(JoinPath(path, kLatestFile))) {
    return path;  // A checkpoint, or missing: loading it names what is wrong.
  }
  return LatestCheckpoint(path);
}

absl::StatusOr<std::string> LatestCheckpoint(const std::string& output_dir) {
  const std::string path = JoinPath(output_dir, kLatestFile);
  if (!PathExists(path)) {
    return absl::NotFoundError(
        absl::StrCat("no checkpoint to resume from: ", path, " does not exist"));
  }
  LP_ASSIGN_OR_RETURN(std::string name, ReadFile(path));
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
  if (name.empty() || name.find('/') != std::string::npos) {
    return absl::DataLossError(absl::StrCat(path, " does not name a checkpoint directory"));
  }
  const std::string dir = JoinPath(output_dir, name);
  if (!PathExists(JoinPath(dir, kTrainerStateFile))) {
    return absl::DataLossError(
        absl::StrCat(path, " names ", dir, ", which is not a complete checkpoint"));
  }
  return dir;
}

absl::StatusOr<TrainerState> LoadTrainerState(const std::string& checkpoint_dir) {
  const std::string path = JoinPath(checkpoint_dir, kTrainerStateFile);
  LP_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  try {
    Json j = Json::parse(text);
    if (j.value("format", "") != kStateFormat || j.value("version", 0) != 1) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": not a llamapro trainer state"));
    }
    TrainerState s;
    s.step = j.at("step");
    s.total_steps = j.at("total_steps");
    s.next_sample = j.at("next_sample");
    s.tokens = j.at("tokens");
    s.learning_rate = j.at("learning_rate");
    s.loss = j.at("loss");
    s.seed = j.at("seed");
    s.seq_len = j.at("seq_len");
    s.global_sequences = j.at("global_sequences");
    s.mixture = j.at("mixture");
    s.optimizer = j.at("optimizer");
    s.trainable = j.at("trainable").get<std::vector<std::string>>();
    return s;
  } catch (const Json::exception& e) {
    return absl::DataLossError(absl::StrCat(path, ": ", e.what()));
  }
}

absl::Status LoadOptimizerState(const std::string& checkpoint_dir, LlamaParams* params,
                                Optimizer* optimizer) {
  const std::string path = JoinPath(checkpoint_dir, kOptimizerStateFile);
  LP_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(path));
  std::set<std::string> masters;
  for (const TensorInfo& t : file->tensors()) {
    if (absl::StartsWith(t.name, kMasterPrefix)) masters.insert(t.name.substr(7));
  }
  std::set<std::string> trainable;
  for (Parameter* p : params->Trainable()) trainable.insert(p->name);
  if (masters != trainable) {
    std::vector<std::string> only_here, only_there;
    std::set_difference(trainable.begin(), trainable.end(), masters.begin(), masters.end(),
                        std::back_inserter(only_here));
    std::set_difference(masters.begin(), masters.end(), trainable.begin(), trainable.end(),
                        std::back_inserter(only_there));
    return absl::FailedPreconditionError(absl::StrCat(
        path,
        ": the checkpoint trained a different set of tensors (trainable now but not "
        "then: ",
        only_here.empty() ? "none" : absl::StrJoin(only_here, ", "),
        "; then but not now: ", only_there.empty() ? "none" : absl::StrJoin(only_there, ", "),
        "); resume with the same 'trainable:' setting"));
  }
  // The file holds whole tensors; a tensor-parallel or ZeRO-1 rank keeps its
  // part (Parameter::split_*, flat_begin).
  std::map<std::string, Parameter*> optimized;
  for (Parameter* p : optimizer->parameters()) optimized[p->name] = p;
  std::vector<float> values, slice;
  auto held = [&](const Parameter& p, const TensorInfo& t) -> absl::Status {
    if (static_cast<int64_t>(values.size()) != p.FullElements()) {
      return absl::DataLossError(absl::StrCat(path, ": tensor '", t.name, "' has ", values.size(),
                                              " values, expected ", p.FullElements()));
    }
    int64_t local = 1;
    for (int64_t d : p.shape) local *= d;
    slice.resize(static_cast<size_t>(local));
    ExtractSlice(p, values.data(), slice.data());
    if (p.flat_begin + p.NumElements() > local) {
      return absl::InternalError(
          absl::StrCat("parameter ", p.name, " holds elements beyond its shape"));
    }
    values.assign(slice.begin() + p.flat_begin, slice.begin() + p.flat_begin + p.NumElements());
    return absl::OkStatus();
  };
  for (const TensorInfo& t : file->tensors()) {
    values.resize(static_cast<size_t>(t.NumElements()));
    if (t.dtype != DType::kF32) {
      return absl::DataLossError(absl::StrCat(path, ": tensor '", t.name, "' is not F32"));
    }
    std::memcpy(values.data(), file->Data(t), t.NumBytes());
    if (absl::StartsWith(t.name, kMasterPrefix)) {
      const std::string name = t.name.substr(7);
      for (Parameter* p : params->Trainable()) {
        if (p->name != name) continue;
        LP_RETURN_IF_ERROR(held(*p, t));
        p->value = values;
      }
      continue;
    }
    // "<kind>.<tensor name>" (kinds have no dot).
    const size_t dot = t.name.find('.');
    const std::string tensor = dot == std::string::npos ? "" : t.name.substr(dot + 1);
    auto it = optimized.find(tensor);
    // ZeRO-1: a trainable tensor none of whose values this rank updates.
    if (it == optimized.end() && trainable.count(tensor) > 0) continue;
    if (it != optimized.end()) LP_RETURN_IF_ERROR(held(*it->second, t));
    LP_RETURN_IF_ERROR(optimizer->LoadStateTensor(t.name, values));
  }
  int64_t step = 0;
  for (const auto& [key, value] : file->header().metadata) {
    if (key == "step" && !absl::SimpleAtoi(value, &step)) {
      return absl::DataLossError(absl::StrCat(path, ": bad step metadata '", value, "'"));
    }
  }
  optimizer->set_step(step);
  return absl::OkStatus();
}

}  // namespace llamapro
