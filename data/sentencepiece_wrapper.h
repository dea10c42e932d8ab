// The one doorway to the SentencePiece library. Only sentencepiece_wrapper.cc
// includes SentencePiece's headers: sentencepiece_processor.h declares
// `namespace absl { using std::string_view; }`, which breaks any translation
// unit that also includes Abseil (BUILD-NOTES, "Trap: SentencePiece"). So
// this header is plain C++: no Abseil, no SentencePiece types, errors as
// std::string. data/tokenizer.h is the API the rest of llamapro uses.
#ifndef LLAMAPRO_DATA_SENTENCEPIECE_WRAPPER_H_
#define LLAMAPRO_DATA_SENTENCEPIECE_WRAPPER_H_

#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace llamapro::spm {

// A loaded SentencePiece model (sentencepiece::SentencePieceProcessor).
// Immutable after Load; every method is const and thread-safe (SentencePiece's
// Encode/Decode are const and keep no mutable state).
class Model {
 public:
  // Parses a serialized ModelProto (the bytes of a tokenizer.model file).
  // Returns nullptr and sets *error (SentencePiece's message) on failure.
  static std::unique_ptr<Model> Load(std::string_view serialized, std::string* error);
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  int piece_size() const;
  int bos_id() const;  // -1 where the model has none (likewise below).
  int eos_id() const;
  int pad_id() const;
  int unk_id() const;

  // Token ids of `text` (no BOS/EOS), replacing *ids. The text is not
  // validated here: SentencePiece replaces invalid UTF-8 with U+FFFD, so the
  // caller checks it first. False with *error set on failure.
  bool Encode(std::string_view text, std::vector<int>* ids, std::string* error) const;
  // Text of `ids` (control pieces such as BOS/EOS decode to nothing), replacing
  // *text. Every id must be in [0, piece_size()); false with *error otherwise.
  bool Decode(const std::vector<int>& ids, std::string* text, std::string* error) const;
  // The piece of `id`; "" when `id` is out of range.
  std::string IdToPiece(int id) const;
  // The id of `piece`, or unk_id() when the vocabulary has no such piece.
  int PieceToId(std::string_view piece) const;
  // Score of `id` (0 when out of range).
  float Score(int id) const;

 private:
  struct Impl;
  explicit Model(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Runs sentencepiece::SentencePieceTrainer::Train with `inputs` (file paths,
// passed through exactly: spaces, commas and quotes in paths are safe) and
// `options` (trainer flags without the leading "--", e.g. {"vocab_size",
// "1000"}; must not contain "input"). SentencePiece writes
// `<model_prefix>.model` and `<model_prefix>.vocab`. False with *error set to
// SentencePiece's message on failure. Not safe to call concurrently:
// SentencePiece's trainer has process-wide settings (log level, pretokenizer).
bool Train(const std::vector<std::string>& inputs,
           const std::map<std::string, std::string>& options, std::string* error);

}  // namespace llamapro::spm

#endif  // LLAMAPRO_DATA_SENTENCEPIECE_WRAPPER_H_
