// SentencePiece tokenizers (tokenizer.model, as LLaMA-2, Mistral and
// TinyLlama ship them). SentencePiece's headers are confined to
// data/sentencepiece_wrapper.cc: they declare `namespace absl { using
// std::string_view; }`, which clashes with Abseil's own string_view.
#ifndef LLAMAPRO_DATA_TOKENIZER_H_
#define LLAMAPRO_DATA_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace llamapro {

inline constexpr char kTokenizerModelFile[] = "tokenizer.model";

struct TokenizerInfo {
  std::string path;         // The tokenizer.model file loaded.
  std::string fingerprint;  // SHA-256 (hex) of the tokenizer.model bytes.
  int32_t vocab_size = 0;
  int32_t bos_id = -1;  // -1 where the model has none.
  int32_t eos_id = -1;
  int32_t pad_id = -1;
  int32_t unk_id = -1;
  // The model's conventions for a document (tokenizer_config.json's
  // add_bos_token / add_eos_token beside the model; LLaMA's defaults: BOS
  // yes, EOS no).
  bool add_bos = true;
  bool add_eos = false;
};

// A loaded SentencePiece model. Immutable after Load; all methods are
// thread-safe (encoding runs concurrently on all cores during ingestion).
class Tokenizer {
 public:
  // `path` is a tokenizer.model file or a directory holding one (a checkpoint
  // directory). add_bos/add_eos come from tokenizer_config.json beside the
  // model when it exists (a malformed one is an error), else LLaMA's
  // defaults. Errors name the file: missing, empty, not a SentencePiece model.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& path);
  virtual ~Tokenizer() = default;

  virtual const TokenizerInfo& info() const = 0;

  // Token ids of `text`, no BOS/EOS added; `*ids` is replaced. `text` must be
  // valid UTF-8 (ValidateUtf8): InvalidArgument naming the byte offset
  // otherwise (SentencePiece itself would silently substitute U+FFFD). Equal
  // to what SentencePiece's `spm_encode --output_format=id` prints for the text.
  virtual absl::Status Encode(absl::string_view text, std::vector<int32_t>* ids) const = 0;
  // Token ids with the model's document conventions (BOS if add_bos, EOS if
  // add_eos); `*ids` is replaced.
  absl::Status EncodeDocument(absl::string_view text, std::vector<int32_t>* ids) const;
  // Text of `ids`; control pieces (BOS, EOS) decode to nothing. InvalidArgument
  // naming the id and its position when an id is outside [0, vocab_size).
  virtual absl::StatusOr<std::string> Decode(std::span<const int32_t> ids) const = 0;
  // The piece of `id` ("" when out of range).
  virtual std::string IdToPiece(int32_t id) const = 0;
  // -1 (or the unknown id, as SentencePiece answers) when absent.
  virtual int32_t PieceToId(absl::string_view piece) const = 0;
};

struct TokenizerTrainOptions {
  std::vector<std::string> inputs;  // Plain-text files, one sentence per line.
  int32_t vocab_size = 32000;
  std::string out_dir;
  bool force = false;  // Replace an existing out_dir.
  int threads = 0;     // 0: all cores.
  // tokenizer_config.json's model_max_length (the context length the
  // tokenizer is meant for; transformers warns about longer inputs).
  int64_t model_max_length = 4096;
  bool verbose = false;  // Let SentencePiece log its progress to stderr.
};

// Trains a BPE model with byte fallback, LLaMA-style (unk=0, bos=1, eos=2, no
// pad; digits split; whitespace kept as is), and writes tokenizer.model,
// tokenizer.vocab, tokenizer_config.json and special_tokens_map.json into
// out_dir (through a staging directory), so that transformers' LlamaTokenizer
// loads it. Errors name the input or the option at fault (a missing or empty
// input, --vocab-size too small: with byte fallback it must exceed 259 and
// hold every character that covers 99.995 % of the input, SentencePiece's
// message is passed through). All input lines are held in memory while
// training (SentencePiece skips lines longer than 4192 bytes). An existing
// out_dir is refused before training starts unless `force`; a failure leaves
// nothing at out_dir. Not safe to run concurrently with itself in one process
// (SentencePiece's trainer has process-wide settings).
absl::Status TrainTokenizer(const TokenizerTrainOptions& options);

// OK if `text` is valid UTF-8 (RFC 3629: no overlong forms, no surrogates, no
// code points above U+10FFFF, no truncated sequences); otherwise
// InvalidArgument naming the byte offset of the first bad sequence.
absl::Status ValidateUtf8(absl::string_view text);

}  // namespace llamapro

#endif  // LLAMAPRO_DATA_TOKENIZER_H_
