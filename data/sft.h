// Instruction-tuning (SFT) data: ShareGPT and Alpaca JSONL records, rendered
// through a chat template into token ids and a loss mask that is 1 exactly on
// the assistant's tokens.
//
// Templates (BOS/EOS are the tokenizer's special ids, never text; BOS is left
// out where the tokenizer has none; an EOS is required):
//   llama2-chat  Meta's Llama-2-chat format, as its reference chat_completion
//                builds it: per exchange
//                  <s> [INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {answer} </s>
//                (the <<SYS>> block only in the first exchange, when there is
//                a system turn). Turn texts are stripped of surrounding
//                whitespace, as Meta's reference does. Unlike it, no space is
//                put between the answer and </s>.
//   alpaca       Stanford Alpaca's prompt: <s> then
//                  {preamble}\n\n### Instruction:\n{user}\n\n[### Input:\n{input}\n\n]###
//                  Response:\n{answer}</s>
//                where the preamble is Stanford's sentence (the variant with
//                or without input) or the system turn when there is one.
//                Later exchanges repeat the blocks after the previous </s>:
//                  \n\n### Instruction:\n{user}\n\n### Response:\n{answer}</s>
//   plain        <s>[{system}\n]{user}\n{answer}</s> then \n{user2}\n{answer2}</s> ...
// A user turn's Alpaca `input`, under the other templates, follows its text
// after a blank line. Texts are used verbatim under alpaca and plain.
//
// Tokenization: the rendered text is cut into segments (template + prompt
// text, each answer) and each segment is encoded on its own, then the ids
// are concatenated, so the mask boundaries are exact by construction (no
// token straddles a prompt and an answer). A segment that follows a space
// in the rendered text (llama2-chat's answers, the first prompt) is encoded
// as SentencePiece encodes the start of a text (its dummy "▁" prefix is that
// space); a segment that continues text (alpaca's and plain's answers, which
// follow a newline, and their later prompts, which follow </s>) is encoded
// without the dummy prefix, as the tail of "\n" + segment. For LLaMA-style vocabularies (no piece
// contains a newline, "▁" only starts pieces) the result equals encoding each stretch of rendered
// text between two special tokens in one piece.
#ifndef LLAMAPRO_DATA_SFT_H_
#define LLAMAPRO_DATA_SFT_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "data/tokenizer.h"
#include "nlohmann/json.hpp"

namespace llamapro {

enum class SftFormat { kShareGpt, kAlpaca };
absl::StatusOr<SftFormat> ParseSftFormat(absl::string_view name);  // "sharegpt" | "alpaca"
absl::string_view SftFormatName(SftFormat format);

enum class ChatTemplate { kLlama2Chat, kAlpaca, kPlain };
absl::StatusOr<ChatTemplate> ParseChatTemplate(absl::string_view name);  // "llama2-chat" | ...
absl::string_view ChatTemplateName(ChatTemplate chat_template);

struct Turn {
  enum class Role { kSystem, kUser, kAssistant };
  Role role = Role::kUser;
  std::string text;
  std::string input;  // User turns from Alpaca records: the optional `input`.
};

// A conversation: an optional system turn, then user/assistant turns
// alternating, starting with a user turn and ending with an assistant turn.
struct Conversation {
  std::vector<Turn> turns;
};

// One JSONL record -> conversation. ShareGPT: {"conversations": [{"from":
// "system"|"human"|"user"|"gpt"|"assistant", "value": "..."}, ...]}. Alpaca:
// {"instruction": "...", "input": "..." (optional), "output": "..."}. Errors
// name the field and what is wrong with it (missing, wrong type, roles out of
// order, empty conversation).
//
// Role names are case-insensitive. A system turn may only come first (an
// empty one is dropped). User and assistant turns must alternate, starting
// with a user turn, and must not be empty or whitespace only. A trailing user
// turn (a question without an answer: nothing to learn from) is dropped; a
// record left without an assistant turn is an error. Alpaca: `instruction`
// and `output` are required non-empty strings; `input` may be absent, null or
// "" (no input). Other fields of the record are ignored.
absl::StatusOr<Conversation> ParseSftRecord(const nlohmann::json& record, SftFormat format);

struct RenderedConversation {
  std::vector<int32_t> tokens;
  std::vector<uint8_t> loss_mask;  // Same length; 1 on assistant tokens.
};

// Renders through `chat_template` and tokenizes (see the top of this file).
// The mask is 1 on the tokens of every assistant answer and the end-of-turn
// token that closes it (the model must learn to stop), 0 elsewhere (system,
// user, template text, BOS). Errors: a conversation that is not shaped as
// described at Conversation (naming the turn), a tokenizer without EOS, text
// that is not valid UTF-8 (naming the turn). Thread-safe (the tokenizer is).
absl::StatusOr<RenderedConversation> RenderConversation(const Conversation& conversation,
                                                        ChatTemplate chat_template,
                                                        const Tokenizer& tokenizer);

// Fits a rendered conversation into `max_tokens`: drops whole trailing
// user/assistant exchanges first; if the first exchange alone is too long,
// cuts inside its answer (the prompt stays whole). nullopt when even the
// first prompt (everything before the first assistant token) does not fit
// with at least one answer token. Works from the mask: an exchange ends where
// a run of 1s ends, so it needs no tokenizer. A conversation that fits is
// returned unchanged; max_tokens <= 0 gives nullopt.
std::optional<RenderedConversation> TruncateConversation(const RenderedConversation& rendered,
                                                         int64_t max_tokens);

}  // namespace llamapro

#endif  // LLAMAPRO_DATA_SFT_H_
