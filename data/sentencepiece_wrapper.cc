// The only translation unit that includes SentencePiece headers; it must not
// include any Abseil header (see sentencepiece_wrapper.h).
#include "data/sentencepiece_wrapper.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <unordered_map>
#include <utility>

namespace llamapro::spm {

struct Model::Impl {
  sentencepiece::SentencePieceProcessor processor;
};

Model::Model(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Model::~Model() = default;

std::unique_ptr<Model> Model::Load(std::string_view serialized, std::string* error) {
  auto impl = std::make_unique<Impl>();
  const sentencepiece::util::Status status = impl->processor.LoadFromSerializedProto(serialized);
  if (!status.ok()) {
    *error = status.ToString();
    return nullptr;
  }
  if (impl->processor.GetPieceSize() <= 0) {
    *error = "the model has no pieces";
    return nullptr;
  }
  return std::unique_ptr<Model>(new Model(std::move(impl)));
}

int Model::piece_size() const { return impl_->processor.GetPieceSize(); }
int Model::bos_id() const { return impl_->processor.bos_id(); }
int Model::eos_id() const { return impl_->processor.eos_id(); }
int Model::pad_id() const { return impl_->processor.pad_id(); }
int Model::unk_id() const { return impl_->processor.unk_id(); }

bool Model::Encode(std::string_view text, std::vector<int>* ids, std::string* error) const {
  ids->clear();
  const sentencepiece::util::Status status = impl_->processor.Encode(text, ids);
  if (!status.ok()) {
    *error = status.ToString();
    return false;
  }
  return true;
}

bool Model::Decode(const std::vector<int>& ids, std::string* text, std::string* error) const {
  const int size = piece_size();
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= size) {
      *error = "id " + std::to_string(ids[i]) + " at position " + std::to_string(i) +
               " is outside the vocabulary [0, " + std::to_string(size) + ")";
      return false;
    }
  }
  text->clear();
  const sentencepiece::util::Status status = impl_->processor.Decode(ids, text);
  if (!status.ok()) {
    *error = status.ToString();
    return false;
  }
  return true;
}

std::string Model::IdToPiece(int id) const {
  if (id < 0 || id >= piece_size()) return "";
  return impl_->processor.IdToPiece(id);
}

int Model::PieceToId(std::string_view piece) const { return impl_->processor.PieceToId(piece); }

float Model::Score(int id) const {
  if (id < 0 || id >= piece_size()) return 0;
  return impl_->processor.GetScore(id);
}

namespace {

// SentencePiece splits the `input` flag as CSV: a double-quoted field may hold
// commas, and "" inside it stands for one quote.
std::string QuoteCsvField(const std::string& field) {
  std::string quoted = "\"";
  for (char c : field) {
    if (c == '"') quoted += '"';
    quoted += c;
  }
  quoted += '"';
  return quoted;
}

}  // namespace

bool Train(const std::vector<std::string>& inputs,
           const std::map<std::string, std::string>& options, std::string* error) {
  if (options.count("input") != 0) {
    *error = "pass input files through `inputs`, not options";
    return false;
  }
  std::unordered_map<std::string, std::string> kwargs(options.begin(), options.end());
  std::string input;
  for (const std::string& path : inputs) {
    if (!input.empty()) input += ',';
    input += QuoteCsvField(path);
  }
  kwargs["input"] = input;
  // Training samples sentences only when the input exceeds
  // input_sentence_size; a fixed seed keeps even that reproducible.
  sentencepiece::SetRandomGeneratorSeed(20240101);
  const sentencepiece::util::Status status = sentencepiece::SentencePieceTrainer::Train(kwargs);
  if (!status.ok()) {
    *error = status.ToString();
    return false;
  }
  return true;
}

}  // namespace llamapro::spm
