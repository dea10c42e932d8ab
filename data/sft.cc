#include "data/sft.h"

#include <algorithm>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "base/check.h"
#include "base/status_macros.h"

namespace llamapro {
namespace {

using Role = Turn::Role;

constexpr char kAlpacaPreamble[] =
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.";
constexpr char kAlpacaPreambleWithInput[] =
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.";

std::string JsonTypeName(const nlohmann::json& value) { return value.type_name(); }

absl::Status FieldError(absl::string_view field, absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat("'", field, "' ", message));
}

bool IsBlank(absl::string_view text) { return absl::StripAsciiWhitespace(text).empty(); }

// A string field of `object`: missing / null / wrong type are errors unless
// `optional` (then missing and null give "").
absl::StatusOr<std::string> StringField(const nlohmann::json& object, const std::string& key,
                                        absl::string_view field_name, bool optional) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) {
    if (optional) return std::string();
    return FieldError(field_name, "is missing");
  }
  if (!it->is_string()) {
    return FieldError(field_name, absl::StrCat("must be a string, got ", JsonTypeName(*it), " ",
                                               it->dump().substr(0, 80)));
  }
  return it->get<std::string>();
}

absl::StatusOr<Conversation> ParseShareGpt(const nlohmann::json& record) {
  auto it = record.find("conversations");
  if (it == record.end() || it->is_null()) return FieldError("conversations", "is missing");
  if (!it->is_array()) {
    return FieldError("conversations", absl::StrCat("must be an array, got ", JsonTypeName(*it)));
  }
  if (it->empty()) return FieldError("conversations", "is empty");
  Conversation conversation;
  for (size_t i = 0; i < it->size(); ++i) {
    const nlohmann::json& item = (*it)[i];
    const std::string where = absl::StrCat("conversations[", i, "]");
    if (!item.is_object()) {
      return FieldError(where, absl::StrCat("must be an object with 'from' and 'value', got ",
                                            JsonTypeName(item)));
    }
    LP_ASSIGN_OR_RETURN(std::string from, StringField(item, "from", where + ".from", false));
    LP_ASSIGN_OR_RETURN(std::string value, StringField(item, "value", where + ".value", false));
    const std::string role_name = absl::AsciiStrToLower(from);
    Role role;
    if (role_name == "system") {
      role = Role::kSystem;
    } else if (role_name == "human" || role_name == "user") {
      role = Role::kUser;
    } else if (role_name == "gpt" || role_name == "assistant") {
      role = Role::kAssistant;
    } else {
      return FieldError(where + ".from",
                        absl::StrCat("has unknown role '", from,
                                     "' (expected system, human, user, gpt or assistant)"));
    }
    if (role == Role::kSystem) {
      if (i != 0) return FieldError(where + ".from", "is 'system', which may only come first");
      if (!IsBlank(value)) conversation.turns.push_back({Role::kSystem, std::move(value), ""});
      continue;
    }
    const bool after_user =
        !conversation.turns.empty() && conversation.turns.back().role == Role::kUser;
    if (role == Role::kUser && after_user) {
      return FieldError(where + ".from",
                        absl::StrCat("is '", from, "' but a user turn came just before: ",
                                     "expected an assistant turn ('gpt' or 'assistant')"));
    }
    if (role == Role::kAssistant && !after_user) {
      return FieldError(where + ".from",
                        absl::StrCat("is '", from, "' but ",
                                     conversation.turns.empty() ? "a conversation starts"
                                                                : "an assistant turn came just "
                                                                  "before",
                                     ": expected a user turn ('human' or 'user')"));
    }
    if (IsBlank(value)) return FieldError(where + ".value", "is empty");
    conversation.turns.push_back({role, std::move(value), ""});
  }
  // A question without an answer teaches nothing: drop it.
  if (!conversation.turns.empty() && conversation.turns.back().role == Role::kUser) {
    conversation.turns.pop_back();
  }
  if (conversation.turns.empty() || conversation.turns.back().role != Role::kAssistant) {
    return FieldError("conversations", "has no assistant turn ('gpt' or 'assistant') to learn");
  }
  return conversation;
}

absl::StatusOr<Conversation> ParseAlpaca(const nlohmann::json& record) {
  LP_ASSIGN_OR_RETURN(std::string instruction,
                      StringField(record, "instruction", "instruction", false));
  LP_ASSIGN_OR_RETURN(std::string input, StringField(record, "input", "input", true));
  LP_ASSIGN_OR_RETURN(std::string output, StringField(record, "output", "output", false));
  if (IsBlank(instruction)) return FieldError("instruction", "is empty");
  if (IsBlank(output)) return FieldError("output", "is empty");
  if (IsBlank(input)) input.clear();
  Conversation conversation;
  conversation.turns.push_back({Role::kUser, std::move(instruction), std::move(input)});
  conversation.turns.push_back({Role::kAssistant, std::move(output), ""});
  return conversation;
}

// Checks the shape promised at Conversation; returns the system text (or "").
absl::StatusOr<std::string> CheckConversation(const Conversation& conversation) {
  size_t first = 0;
  std::string system;
  if (!conversation.turns.empty() && conversation.turns[0].role == Role::kSystem) {
    system = conversation.turns[0].text;
    first = 1;
  }
  const size_t n = conversation.turns.size();
  if (n == first) return absl::InvalidArgumentError("conversation has no user/assistant turns");
  for (size_t i = first; i < n; ++i) {
    const Role expected = (i - first) % 2 == 0 ? Role::kUser : Role::kAssistant;
    if (conversation.turns[i].role != expected) {
      return absl::InvalidArgumentError(absl::StrCat(
          "conversation turn ", i, " must be ", expected == Role::kUser ? "a user" : "an assistant",
          " turn (an optional system turn first, then user and assistant alternating)"));
    }
  }
  if (conversation.turns.back().role != Role::kAssistant) {
    return absl::InvalidArgumentError(
        absl::StrCat("conversation must end with an assistant turn (turn ", n - 1, " is not)"));
  }
  return system;
}

// Builds token ids and mask segment by segment (see sft.h, "Tokenization").
class Renderer {
 public:
  explicit Renderer(const Tokenizer& tokenizer) : tokenizer_(tokenizer) {}

  // Encodes `text` as the start of a text (SentencePiece's dummy prefix).
  absl::Status AfterSpace(absl::string_view text, bool masked, size_t turn) {
    std::vector<int32_t> ids;
    LP_RETURN_IF_ERROR(WithTurn(tokenizer_.Encode(text, &ids), turn));
    Append(ids, masked);
    return absl::OkStatus();
  }

  // Encodes `text` as it tokenizes right after a newline: the tail of the
  // encoding of "\n" + text. Falls back to AfterSpace for a vocabulary where
  // a newline merges with what follows it.
  absl::Status AfterNewline(absl::string_view text, bool masked, size_t turn) {
    if (!newline_prefix_.has_value()) {
      std::vector<int32_t> prefix;
      LP_RETURN_IF_ERROR(tokenizer_.Encode("\n", &prefix));
      newline_prefix_ = std::move(prefix);
    }
    std::vector<int32_t> ids;
    LP_RETURN_IF_ERROR(WithTurn(tokenizer_.Encode(absl::StrCat("\n", text), &ids), turn));
    const std::vector<int32_t>& prefix = *newline_prefix_;
    if (ids.size() >= prefix.size() && std::equal(prefix.begin(), prefix.end(), ids.begin())) {
      ids.erase(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(prefix.size()));
      Append(ids, masked);
      return absl::OkStatus();
    }
    return AfterSpace(text, masked, turn);
  }

  void Special(int32_t id, bool masked) {
    if (id < 0) return;
    out_.tokens.push_back(id);
    out_.loss_mask.push_back(masked ? 1 : 0);
  }

  RenderedConversation Take() { return std::move(out_); }

 private:
  static absl::Status WithTurn(absl::Status status, size_t turn) {
    if (status.ok()) return status;
    return absl::Status(status.code(),
                        absl::StrCat("conversation turn ", turn, ": ", status.message()));
  }

  void Append(const std::vector<int32_t>& ids, bool masked) {
    out_.tokens.insert(out_.tokens.end(), ids.begin(), ids.end());
    out_.loss_mask.insert(out_.loss_mask.end(), ids.size(), masked ? 1 : 0);
  }

  const Tokenizer& tokenizer_;
  std::optional<std::vector<int32_t>> newline_prefix_;
  RenderedConversation out_;
};

// A user turn's text with its Alpaca input, for templates without an input slot.
std::string UserText(const Turn& turn) {
  if (turn.input.empty()) return turn.text;
  return absl::StrCat(turn.text, "\n\n", turn.input);
}

}  // namespace

absl::StatusOr<SftFormat> ParseSftFormat(absl::string_view name) {
  if (name == "sharegpt") return SftFormat::kShareGpt;
  if (name == "alpaca") return SftFormat::kAlpaca;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown SFT format '", name, "' (expected sharegpt or alpaca)"));
}

absl::string_view SftFormatName(SftFormat format) {
  switch (format) {
    case SftFormat::kShareGpt:
      return "sharegpt";
    case SftFormat::kAlpaca:
      return "alpaca";
  }
  return "?";
}

absl::StatusOr<ChatTemplate> ParseChatTemplate(absl::string_view name) {
  if (name == "llama2-chat") return ChatTemplate::kLlama2Chat;
  if (name == "alpaca") return ChatTemplate::kAlpaca;
  if (name == "plain") return ChatTemplate::kPlain;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown chat template '", name, "' (expected llama2-chat, alpaca or plain)"));
}

absl::string_view ChatTemplateName(ChatTemplate chat_template) {
  switch (chat_template) {
    case ChatTemplate::kLlama2Chat:
      return "llama2-chat";
    case ChatTemplate::kAlpaca:
      return "alpaca";
    case ChatTemplate::kPlain:
      return "plain";
  }
  return "?";
}

absl::StatusOr<Conversation> ParseSftRecord(const nlohmann::json& record, SftFormat format) {
  if (!record.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("record must be a JSON object, got ", JsonTypeName(record)));
  }
  switch (format) {
    case SftFormat::kShareGpt:
      return ParseShareGpt(record);
    case SftFormat::kAlpaca:
      return ParseAlpaca(record);
  }
  return absl::InvalidArgumentError("unknown SFT format");
}

absl::StatusOr<RenderedConversation> RenderConversation(const Conversation& conversation,
                                                        ChatTemplate chat_template,
                                                        const Tokenizer& tokenizer) {
  LP_ASSIGN_OR_RETURN(const std::string system, CheckConversation(conversation));
  const TokenizerInfo& info = tokenizer.info();
  if (info.eos_id < 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "tokenizer ", info.path, " has no EOS piece, which ends every answer in SFT data"));
  }
  const size_t first = conversation.turns[0].role == Role::kSystem ? 1 : 0;
  Renderer renderer(tokenizer);
  for (size_t i = first; i + 1 < conversation.turns.size(); i += 2) {
    const Turn& user = conversation.turns[i];
    const Turn& answer = conversation.turns[i + 1];
    const bool first_exchange = i == first;
    switch (chat_template) {
      case ChatTemplate::kLlama2Chat: {
        std::string prompt = "[INST] ";
        if (first_exchange && !IsBlank(system)) {
          absl::StrAppend(&prompt, "<<SYS>>\n", absl::StripAsciiWhitespace(system),
                          "\n<</SYS>>\n\n");
        }
        absl::StrAppend(&prompt, absl::StripAsciiWhitespace(UserText(user)), " [/INST]");
        renderer.Special(info.bos_id, false);
        LP_RETURN_IF_ERROR(renderer.AfterSpace(prompt, false, i));
        LP_RETURN_IF_ERROR(
            renderer.AfterSpace(absl::StripAsciiWhitespace(answer.text), true, i + 1));
        break;
      }
      case ChatTemplate::kAlpaca: {
        std::string prompt;
        if (first_exchange) {
          prompt = IsBlank(system)
                       ? (user.input.empty() ? kAlpacaPreamble : kAlpacaPreambleWithInput)
                       : system;
        }
        absl::StrAppend(&prompt, "\n\n### Instruction:\n", user.text, "\n\n");
        if (!user.input.empty()) absl::StrAppend(&prompt, "### Input:\n", user.input, "\n\n");
        absl::StrAppend(&prompt, "### Response:\n");
        if (first_exchange) {
          renderer.Special(info.bos_id, false);
          LP_RETURN_IF_ERROR(renderer.AfterSpace(prompt, false, i));
        } else {
          LP_RETURN_IF_ERROR(renderer.AfterNewline(prompt, false, i));
        }
        LP_RETURN_IF_ERROR(renderer.AfterNewline(answer.text, true, i + 1));
        break;
      }
      case ChatTemplate::kPlain: {
        if (first_exchange) {
          std::string prompt = IsBlank(system) ? "" : absl::StrCat(system, "\n");
          absl::StrAppend(&prompt, UserText(user), "\n");
          renderer.Special(info.bos_id, false);
          LP_RETURN_IF_ERROR(renderer.AfterSpace(prompt, false, i));
        } else {
          LP_RETURN_IF_ERROR(
              renderer.AfterNewline(absl::StrCat("\n", UserText(user), "\n"), false, i));
        }
        LP_RETURN_IF_ERROR(renderer.AfterNewline(answer.text, true, i + 1));
        break;
      }
    }
    renderer.Special(info.eos_id, true);
  }
  return renderer.Take();
}

std::optional<RenderedConversation> TruncateConversation(const RenderedConversation& rendered,
                                                         int64_t max_tokens) {
  LP_CHECK(rendered.loss_mask.size() == rendered.tokens.size());
  if (max_tokens <= 0) return std::nullopt;
  const auto size = static_cast<int64_t>(rendered.tokens.size());
  if (size <= max_tokens) return rendered;
  // Ends (exclusive) of the runs of 1s: where each exchange ends.
  int64_t first_answer = -1;
  int64_t keep = 0;
  for (int64_t i = 0; i < size; ++i) {
    if (rendered.loss_mask[i] == 0) continue;
    if (first_answer < 0) first_answer = i;
    const bool run_ends = i + 1 == size || rendered.loss_mask[i + 1] == 0;
    if (run_ends && i + 1 <= max_tokens) keep = i + 1;
  }
  if (keep == 0) {
    // The first exchange alone is too long: cut inside its answer.
    if (first_answer < 0 || first_answer + 1 > max_tokens) return std::nullopt;
    keep = max_tokens;
  }
  RenderedConversation out;
  out.tokens.assign(rendered.tokens.begin(), rendered.tokens.begin() + keep);
  out.loss_mask.assign(rendered.loss_mask.begin(), rendered.loss_mask.begin() + keep);
  return out;
}

}  // namespace llamapro
