// The results JSON of each evaluation, written beside the checkpoint by
// `llamaproctl eval` and by eval jobs on workers (docs/eval.md), and the
// headline numbers a job reports to the coordinator (its metrics).
#ifndef LLAMAPRO_EVAL_RESULTS_H_
#define LLAMAPRO_EVAL_RESULTS_H_

#include <map>
#include <string>

#include "eval/choice.h"
#include "eval/code.h"
#include "eval/shift.h"
#include "nlohmann/json.hpp"

namespace llamapro {

// MODEL/eval/TASK-<stem of input>.json
std::string DefaultResultsPath(const std::string& model_dir, const std::string& task,
                               const std::string& input);

// The details of each result; the caller adds what describes the run (model,
// files, options) in front.
nlohmann::ordered_json ToJson(const ChoiceResult& result);
nlohmann::ordered_json ToJson(const CodeResult& result);
nlohmann::ordered_json ToJson(const ShiftResult& result);

// Headline numbers: {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"},
// {"pass@1"}, {"unshifted", "marginal", "shifted"}.
std::map<std::string, double> Headline(const ChoiceResult& result);
std::map<std::string, double> Headline(const CodeResult& result);
std::map<std::string, double> Headline(const ShiftResult& result);

}  // namespace llamapro

#endif  // LLAMAPRO_EVAL_RESULTS_H_
