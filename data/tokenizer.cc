#include "data/tokenizer.h"

#include <sys/stat.h>

#include <map>
#include <thread>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "base/file.h"
#include "base/sha256.h"
#include "base/status_macros.h"
#include "data/sentencepiece_wrapper.h"
#include "nlohmann/json.hpp"

namespace llamapro {
namespace {

static_assert(std::is_same_v<int, int32_t>, "SentencePiece ids (int) are stored as int32_t");

constexpr char kTokenizerConfigFile[] = "tokenizer_config.json";
constexpr char kSpecialTokensMapFile[] = "special_tokens_map.json";
// Byte fallback needs the three special pieces plus one piece per byte value.
constexpr int32_t kByteFallbackPieces = 3 + 256;

std::string_view ToStd(absl::string_view s) { return std::string_view(s.data(), s.size()); }

std::string ParentDir(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

// The optional boolean `field` of a tokenizer_config.json object.
absl::StatusOr<bool> ConfigBool(const nlohmann::json& config, const char* field, bool fallback,
                                const std::string& path) {
  auto it = config.find(field);
  if (it == config.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": '", field, "' must be true or false, got ", it->dump()));
  }
  return it->get<bool>();
}

class SentencePieceTokenizer final : public Tokenizer {
 public:
  SentencePieceTokenizer(std::unique_ptr<spm::Model> model, TokenizerInfo info)
      : model_(std::move(model)), info_(std::move(info)) {}

  const TokenizerInfo& info() const override { return info_; }

  absl::Status Encode(absl::string_view text, std::vector<int32_t>* ids) const override {
    LP_RETURN_IF_ERROR(ValidateUtf8(text));
    std::string error;
    if (!model_->Encode(ToStd(text), ids, &error)) {
      return absl::InternalError(absl::StrCat("SentencePiece (", info_.path, ") failed: ", error));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::string> Decode(std::span<const int32_t> ids) const override {
    std::string text, error;
    if (!model_->Decode(std::vector<int>(ids.begin(), ids.end()), &text, &error)) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot decode with ", info_.path, ": ", error));
    }
    return text;
  }

  std::string IdToPiece(int32_t id) const override { return model_->IdToPiece(id); }

  int32_t PieceToId(absl::string_view piece) const override {
    return model_->PieceToId(ToStd(piece));
  }

 private:
  const std::unique_ptr<spm::Model> model_;
  const TokenizerInfo info_;
};

// The tokenizer_config.json and special_tokens_map.json that make
// transformers' LlamaTokenizer load a trained directory as is.
absl::Status WriteHuggingFaceFiles(const spm::Model& model, const std::string& dir,
                                   int64_t model_max_length) {
  const std::string bos = model.IdToPiece(model.bos_id());
  const std::string eos = model.IdToPiece(model.eos_id());
  const std::string unk = model.IdToPiece(model.unk_id());
  nlohmann::ordered_json config = {
      {"tokenizer_class", "LlamaTokenizer"},
      {"add_bos_token", true},
      {"add_eos_token", false},
      {"bos_token", bos},
      {"eos_token", eos},
      {"unk_token", unk},
      {"pad_token", nullptr},
      {"model_max_length", model_max_length},
      {"clean_up_tokenization_spaces", false},
      // SentencePiece's own behaviour (no special handling of text that
      // follows special tokens): what Encode() does.
      {"legacy", true},
      {"sp_model_kwargs", nlohmann::ordered_json::object()},
  };
  LP_RETURN_IF_ERROR(WriteFileAtomic(JoinPath(dir, kTokenizerConfigFile), config.dump(2) + "\n"));
  nlohmann::ordered_json special = {{"bos_token", bos}, {"eos_token", eos}, {"unk_token", unk}};
  return WriteFileAtomic(JoinPath(dir, kSpecialTokensMapFile), special.dump(2) + "\n");
}

absl::Status CheckTrainInputs(const TokenizerTrainOptions& options) {
  if (options.inputs.empty()) {
    return absl::InvalidArgumentError("no input files to train the tokenizer on (--input)");
  }
  uint64_t total_bytes = 0;
  for (const std::string& input : options.inputs) {
    struct stat st;
    if (::stat(input.c_str(), &st) != 0) return ErrnoStatus("cannot read input", input, errno);
    if (!S_ISREG(st.st_mode)) {
      return absl::InvalidArgumentError(absl::StrCat("input ", input, " is not a regular file"));
    }
    LP_ASSIGN_OR_RETURN(File file, File::OpenForRead(input));  // Readable?
    total_bytes += static_cast<uint64_t>(st.st_size);
  }
  if (total_bytes == 0) {
    return absl::InvalidArgumentError(absl::StrCat("the input files (",
                                                   absl::StrJoin(options.inputs, ", "),
                                                   ") are empty: nothing to train on"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateUtf8(absl::string_view text) {
  const auto* s = reinterpret_cast<const uint8_t*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const uint8_t c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t length = 0;
    uint32_t lo = 0x80, hi = 0xBF;  // Allowed range of the second byte.
    if (c >= 0xC2 && c <= 0xDF) {
      length = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      length = 3;
      if (c == 0xE0) lo = 0xA0;  // Overlong.
      if (c == 0xED) hi = 0x9F;  // UTF-16 surrogates.
    } else if (c >= 0xF0 && c <= 0xF4) {
      length = 4;
      if (c == 0xF0) lo = 0x90;  // Overlong.
      if (c == 0xF4) hi = 0x8F;  // Above U+10FFFF.
    }
    bool ok = length > 0 && i + length <= n && s[i + 1] >= lo && s[i + 1] <= hi;
    for (size_t k = 2; ok && k < length; ++k) ok = s[i + k] >= 0x80 && s[i + k] <= 0xBF;
    if (!ok) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "text is not valid UTF-8: bad byte sequence at byte offset %d (starting 0x%02X)", i, c));
    }
    i += length;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& path) {
  std::string model_path = path;
  if (IsDirectory(path)) {
    model_path = JoinPath(path, kTokenizerModelFile);
    if (!PathExists(model_path)) {
      return absl::NotFoundError(absl::StrCat("directory ", path, " has no ", kTokenizerModelFile));
    }
  }
  LP_ASSIGN_OR_RETURN(std::string bytes, ReadFile(model_path));
  if (bytes.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(model_path, " is empty, not a SentencePiece model"));
  }
  std::string error;
  std::unique_ptr<spm::Model> model = spm::Model::Load(bytes, &error);
  if (model == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(model_path, " is not a SentencePiece model: ", error));
  }

  TokenizerInfo info;
  info.path = model_path;
  info.fingerprint = Sha256Hex(bytes);
  info.vocab_size = model->piece_size();
  info.bos_id = model->bos_id();
  info.eos_id = model->eos_id();
  info.pad_id = model->pad_id();
  info.unk_id = model->unk_id();

  const std::string config_path = JoinPath(ParentDir(model_path), kTokenizerConfigFile);
  if (PathExists(config_path)) {
    LP_ASSIGN_OR_RETURN(std::string text, ReadFile(config_path));
    const nlohmann::json config = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (config.is_discarded() || !config.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(config_path, " is not a JSON object"));
    }
    LP_ASSIGN_OR_RETURN(info.add_bos, ConfigBool(config, "add_bos_token", true, config_path));
    LP_ASSIGN_OR_RETURN(info.add_eos, ConfigBool(config, "add_eos_token", false, config_path));
  }
  if (info.add_bos && info.bos_id < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(config_path, ": add_bos_token is true but ", model_path, " has no BOS piece"));
  }
  if (info.add_eos && info.eos_id < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(config_path, ": add_eos_token is true but ", model_path, " has no EOS piece"));
  }
  return std::unique_ptr<Tokenizer>(new SentencePieceTokenizer(std::move(model), std::move(info)));
}

absl::Status Tokenizer::EncodeDocument(absl::string_view text, std::vector<int32_t>* ids) const {
  std::vector<int32_t> body;
  LP_RETURN_IF_ERROR(Encode(text, &body));
  const TokenizerInfo& i = info();
  ids->clear();
  ids->reserve(body.size() + 2);
  if (i.add_bos) ids->push_back(i.bos_id);
  ids->insert(ids->end(), body.begin(), body.end());
  if (i.add_eos) ids->push_back(i.eos_id);
  return absl::OkStatus();
}

absl::Status TrainTokenizer(const TokenizerTrainOptions& options) {
  LP_RETURN_IF_ERROR(CheckTrainInputs(options));
  if (options.out_dir.empty()) return absl::InvalidArgumentError("no output directory (--out)");
  if (PathExists(options.out_dir) && !options.force) {
    return absl::AlreadyExistsError(
        absl::StrCat(options.out_dir, " already exists (use --force to replace it)"));
  }
  if (options.vocab_size <= kByteFallbackPieces) {
    return absl::InvalidArgumentError(
        absl::StrCat("--vocab-size ", options.vocab_size,
                     " is too small: byte fallback alone takes ", kByteFallbackPieces,
                     " pieces (<unk>, <s>, </s> and 256 bytes), plus one per character "
                     "of the input"));
  }
  if (options.threads < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--threads must be 0 (all cores) or positive, got ", options.threads));
  }
  if (options.model_max_length <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--model-max-length must be positive, got ", options.model_max_length));
  }
  const int threads = options.threads > 0
                          ? options.threads
                          : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));

  LP_ASSIGN_OR_RETURN(std::unique_ptr<StagingDir> staging, StagingDir::Create(options.out_dir));
  const std::string model_prefix = JoinPath(staging->path(), "tokenizer");
  // LLaMA's tokenizer.model settings (its trainer_spec / normalizer_spec).
  const std::map<std::string, std::string> trainer_options = {
      {"model_prefix", model_prefix},
      {"model_type", "bpe"},
      {"vocab_size", absl::StrCat(options.vocab_size)},
      {"character_coverage", "0.99995"},
      {"byte_fallback", "true"},
      {"split_digits", "true"},
      {"allow_whitespace_only_pieces", "true"},
      {"remove_extra_whitespaces", "false"},
      {"normalization_rule_name", "identity"},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "-1"},
      {"num_threads", absl::StrCat(threads)},
      {"minloglevel", options.verbose ? "0" : "2"},
  };
  std::string error;
  if (!spm::Train(options.inputs, trainer_options, &error)) {
    std::string hint;
    if (absl::StrContains(error, "vocab_size")) {
      hint = absl::StrCat(" (--vocab-size ", options.vocab_size, ")");
    }
    return absl::InvalidArgumentError(absl::StrCat("SentencePiece training on ",
                                                   absl::StrJoin(options.inputs, ", "), " failed",
                                                   hint, ": ", error));
  }

  const std::string model_path = model_prefix + ".model";
  LP_ASSIGN_OR_RETURN(std::string bytes, ReadFile(model_path));
  std::unique_ptr<spm::Model> model = spm::Model::Load(bytes, &error);
  if (model == nullptr) {
    return absl::InternalError(
        absl::StrCat("SentencePiece wrote ", model_path, ", which does not load: ", error));
  }
  LP_RETURN_IF_ERROR(WriteHuggingFaceFiles(*model, staging->path(), options.model_max_length));
  return staging->Commit(options.force);
}

}  // namespace llamapro
