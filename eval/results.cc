#include "eval/results.h"

#include <filesystem>

#include "absl/strings/str_cat.h"

namespace llamapro {

std::string DefaultResultsPath(const std::string& model_dir, const std::string& task,
                               const std::string& input) {
  return (std::filesystem::path(model_dir) / "eval" /
          absl::StrCat(task, "-", std::filesystem::path(input).stem().string(), ".json"))
      .string();
}

std::map<std::string, double> Headline(const ChoiceResult& result) {
  return {{"acc", result.acc},
          {"acc_stderr", result.acc_stderr},
          {"acc_norm", result.acc_norm},
          {"acc_norm_stderr", result.acc_norm_stderr}};
}

std::map<std::string, double> Headline(const CodeResult& result) {
  return {{"pass@1", result.pass_at_1}};
}

std::map<std::string, double> Headline(const ShiftResult& result) {
  return {{"unshifted", result.unshifted_fraction},
          {"marginal", result.marginal_fraction},
          {"shifted", result.shifted_fraction}};
}

nlohmann::ordered_json ToJson(const ChoiceResult& result) {
  nlohmann::ordered_json details = nlohmann::ordered_json::array();
  for (const ChoiceQuestionResult& d : result.details) {
    details.push_back({{"gold", d.gold},
                       {"predicted", d.predicted},
                       {"predicted_norm", d.predicted_norm},
                       {"loglikelihoods", d.loglikelihoods},
                       {"lengths", d.lengths}});
  }
  nlohmann::ordered_json out = {{"questions", result.questions}};
  for (const auto& [key, value] : Headline(result)) out[key] = value;
  out["details"] = std::move(details);
  return out;
}

nlohmann::ordered_json ToJson(const CodeResult& result) {
  nlohmann::ordered_json details = nlohmann::ordered_json::array();
  for (const CodeTaskResult& d : result.details) {
    details.push_back({{"task_id", d.task_id},
                       {"passed", d.passed},
                       {"outcomes", d.outcomes},
                       {"completions", d.completions}});
  }
  return {{"count", result.tasks}, {"pass@1", result.pass_at_1}, {"details", details}};
}

nlohmann::ordered_json ToJson(const ShiftResult& result) {
  nlohmann::ordered_json out = {{"prompts", result.prompts}, {"positions", result.positions}};
  for (const auto& [key, value] : Headline(result)) out[key] = value;
  out["ranks"] = result.ranks;
  return out;
}

}  // namespace llamapro
