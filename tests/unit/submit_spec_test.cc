// The translation of `llamaproctl submit` files into SubmitJobRequests
// (client/submit_spec.h), without a coordinator.
#include "client/submit_spec.h"

#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "rpc/rpc.h"
#include "train/config.h"

namespace llamapro::client {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::MatchesRegex;
using ::testing::Not;

// A valid pretrain config of `llamaproctl train` (docs/config.md), without
// data.store: the coordinator's store serves the data.
constexpr char kTrainConfig[] = R"(model: models/tiny-pro
output_dir: runs/tiny
data:
  mixture: {code: 0.7, math: 0.3}
  seq_len: 16
optimizer:
  lr: 2.0e-4
  betas: [0.9, 0.95]
batch: {sequences: 4, micro_batch: 2}
steps: 10
)";

std::vector<SubmitDocument> ParseOk(const std::string& yaml) {
  auto documents = ParseSubmitFile(yaml, "jobs.yaml");
  EXPECT_TRUE(documents.ok()) << documents.status() << "\n" << yaml;
  return documents.ok() ? *std::move(documents) : std::vector<SubmitDocument>();
}

std::string ErrorOf(const std::string& yaml) {
  auto documents = ParseSubmitFile(yaml, "jobs.yaml");
  if (documents.ok()) return "ok";
  EXPECT_EQ(documents.status().code(), absl::StatusCode::kInvalidArgument);
  return std::string(documents.status().message());
}

TEST(SubmitSpecTest, PipelineNamesInDependsOnBecomeTheIdsOfEarlierDocuments) {
  const std::string yaml = R"(kind: expand
name: grow
model: models/llama
out: models/llama-pro
add_blocks: 8
---
kind: pretrain
name: train
depends_on: [grow, job-from-yesterday]
world_size: 2
max_restarts: 5
)" + std::string(kTrainConfig) +
                           R"(---
kind: eval
depends_on: train
model: runs/tiny/final
corpora: [code, general]
)";
  std::vector<SubmitDocument> documents = ParseOk(yaml);
  ASSERT_EQ(documents.size(), 3u);
  EXPECT_EQ(documents[0].document, 1);
  EXPECT_EQ(documents[2].document, 3);
  EXPECT_THAT(documents[1].depends_on_documents, ElementsAre(0, -1));
  EXPECT_THAT(documents[2].depends_on_documents, ElementsAre(1));

  const std::vector<std::string> ids = {"id-expand", "id-train"};
  const v1::SubmitJobRequest train = ResolveDependencies(documents[1], ids);
  EXPECT_THAT(train.spec().depends_on(), ElementsAre("id-expand", "job-from-yesterday"));
  EXPECT_EQ(train.spec().world_size(), 2);
  EXPECT_EQ(train.spec().max_restarts(), 5);
  EXPECT_EQ(train.spec().name(), "train");
  const v1::SubmitJobRequest eval = ResolveDependencies(documents[2], ids);
  EXPECT_THAT(eval.spec().depends_on(), ElementsAre("id-train"));
  // The unresolved request keeps the names as written.
  EXPECT_THAT(documents[2].request.spec().depends_on(), ElementsAre("train"));
}

TEST(SubmitSpecTest, DependsOnALaterOrTheSameDocumentIsRejected) {
  EXPECT_THAT(ErrorOf("kind: eval\nmodel: m\ncorpora: c\ndepends_on: late\n---\n"
                      "kind: eval\nname: late\nmodel: m\ncorpora: c\n"),
              HasSubstr("jobs.yaml: document 1: depends_on: \"late\" names document 2, which "
                        "comes later"));
  EXPECT_THAT(ErrorOf("kind: eval\nname: me\nmodel: m\ncorpora: c\ndepends_on: me\n"),
              HasSubstr("document 1: depends_on: \"me\" is this document's own name"));
}

TEST(SubmitSpecTest, DuplicateNamesInOneFileAreRejected) {
  EXPECT_THAT(ErrorOf("kind: eval\nname: a\nmodel: m\ncorpora: c\n---\n"
                      "kind: eval\nname: a\nmodel: m\ncorpora: c\n"),
              HasSubstr("jobs.yaml: document 2: name: \"a\" is already the name of document 1"));
}

TEST(SubmitSpecTest, UnknownKeysOfExpandEvalIngestAreRejectedWithDocumentAndKey) {
  EXPECT_THAT(ErrorOf("kind: eval\nmodel: m\ncorpora: c\n---\n"
                      "kind: expand\nmodel: m\nout: o\nadd_block: 8\n"),
              HasSubstr("jobs.yaml: document 2: add_block: unknown key for kind expand (it "
                        "takes model, out, add_blocks"));
  EXPECT_THAT(ErrorOf("kind: eval\nmodel: m\ncorpora: c\nbatch: 4\n"),
              HasSubstr("document 1: batch: unknown key for kind eval"));
  EXPECT_THAT(ErrorOf("kind: ingest\ncorpus: c\ntokenizer: t\ninputs: [a]\ntemplate: plain\n"),
              HasSubstr("document 1: template: unknown key for kind ingest"));
}

TEST(SubmitSpecTest, UnknownTrainConfigKeysAreRejectedByTheConfigValidationNamingTheDocument) {
  const std::string yaml = "kind: eval\nmodel: m\ncorpora: c\n---\nkind: sft\n" +
                           std::string(kTrainConfig) + "learning_rate: 1\n";
  EXPECT_THAT(ErrorOf(yaml), HasSubstr("jobs.yaml: document 2: learning_rate: unknown key"));
}

TEST(SubmitSpecTest, TrainConfigIsPassedThroughWithoutTheSubmitKeys) {
  std::vector<SubmitDocument> documents =
      ParseOk("kind: pretrain\nname: p\nworld_size: 4\nmax_restarts: 1\ndepends_on: [x]\n" +
              std::string(kTrainConfig));
  ASSERT_EQ(documents.size(), 1u);
  const v1::JobSpec& spec = documents[0].request.spec();
  EXPECT_EQ(spec.kind(), v1::JOB_KIND_PRETRAIN);
  EXPECT_EQ(spec.world_size(), 4);
  EXPECT_FALSE(spec.has_expand());
  EXPECT_FALSE(spec.has_eval());
  EXPECT_FALSE(spec.has_ingest());
  const std::string& yaml = spec.train_config_yaml();
  for (const char* key : {"kind", "name", "world_size", "max_restarts", "depends_on"}) {
    EXPECT_THAT(yaml, Not(HasSubstr(key))) << yaml;
  }
  // The same config, key for key; relative paths kept as written.
  auto config = ParseJobConfig(yaml, "passed");
  ASSERT_TRUE(config.ok()) << config.status() << "\n" << yaml;
  EXPECT_EQ(config->model, "models/tiny-pro");
  EXPECT_EQ(config->output_dir, "runs/tiny");
  EXPECT_EQ(config->data.store, "");
  EXPECT_EQ(config->data.seq_len, 16);
  ASSERT_EQ(config->data.mixture.size(), 2u);
  EXPECT_EQ(config->data.mixture[0].corpus, "code");
  EXPECT_DOUBLE_EQ(config->data.mixture[0].weight, 0.7);
  EXPECT_DOUBLE_EQ(config->optimizer.lr, 2.0e-4);
  EXPECT_EQ(config->steps, 10);
  EXPECT_EQ(config->batch.global_sequences, 4);
  // Key order is kept.
  EXPECT_LT(yaml.find("model:"), yaml.find("output_dir:"));
  EXPECT_LT(yaml.find("output_dir:"), yaml.find("steps:"));
}

TEST(SubmitSpecTest, MissingOrUnknownKindIsRejected) {
  EXPECT_THAT(ErrorOf(kTrainConfig),
              HasSubstr("jobs.yaml: document 1: kind: is required: one of expand, pretrain, sft, "
                        "eval, ingest"));
  EXPECT_THAT(ErrorOf("kind: train\nmodel: m\n"),
              HasSubstr("document 1: kind: must be one of expand, pretrain, sft, eval, ingest, "
                        "got \"train\""));
  EXPECT_THAT(ErrorOf("kind: eval\nmodel: m\ncorpora: c\n---\nname: x\n"),
              HasSubstr("document 2: kind: is required"));
}

TEST(SubmitSpecTest, ExpandEvalAndIngestKeysFillTheirMessagesWithDefaults) {
  std::vector<SubmitDocument> documents = ParseOk(R"(kind: expand
model: in
out: out
positions: [0, 15]
dtype: bf16
verify: true
---
kind: eval
model: ckpt
corpora: code, general
windows: 64
---
kind: ingest
corpus: chat
tokenizer: models/llama
inputs: data/chat.jsonl
sft_format: sharegpt
held_out: 0.01
)");
  ASSERT_EQ(documents.size(), 3u);
  const v1::ExpandJob& expand = documents[0].request.spec().expand();
  EXPECT_EQ(documents[0].request.spec().kind(), v1::JOB_KIND_EXPAND);
  EXPECT_EQ(documents[0].request.spec().world_size(), 1);
  EXPECT_EQ(expand.model(), "in");
  EXPECT_EQ(expand.out(), "out");
  EXPECT_EQ(expand.layout(), "positions");  // Implied by positions.
  EXPECT_THAT(expand.positions(), ElementsAre(0, 15));
  EXPECT_EQ(expand.dtype(), "bf16");
  EXPECT_TRUE(expand.verify());
  EXPECT_FALSE(expand.force());
  EXPECT_TRUE(documents[0].request.spec().train_config_yaml().empty());

  const v1::EvalJob& eval = documents[1].request.spec().eval();
  EXPECT_EQ(eval.model(), "ckpt");
  EXPECT_THAT(eval.corpora(), ElementsAre("code", "general"));
  EXPECT_EQ(eval.seq_len(), 2048);
  EXPECT_EQ(eval.windows(), 64);

  const v1::IngestJob& ingest = documents[2].request.spec().ingest();
  EXPECT_EQ(ingest.corpus(), "chat");
  EXPECT_THAT(ingest.inputs(), ElementsAre("data/chat.jsonl"));
  EXPECT_EQ(ingest.format(), "auto");
  EXPECT_EQ(ingest.text_field(), "text");
  EXPECT_DOUBLE_EQ(ingest.held_out(), 0.01);
  EXPECT_EQ(ingest.sft_format(), "sharegpt");
  EXPECT_EQ(ingest.chat_template(), "llama2-chat");
}

TEST(SubmitSpecTest, EvalTasksTakeTheirOwnKeysWithDefaults) {
  std::vector<SubmitDocument> documents = ParseOk(R"(kind: eval
model: m
task: choice
tasks: arc.jsonl
shots: 5
---
kind: eval
model: m
task: code
tasks: humaneval.jsonl
samples: 4
temperature: 0.8
top_p: 0.95
---
kind: eval
model: m
task: shift
base: base
prompts: p.jsonl
max_tokens: 32
---
kind: eval
model: m
task: generate
prompts: p.jsonl
stop: ["\n\n", END]
)");
  ASSERT_EQ(documents.size(), 4u);
  const v1::EvalJob& choice = documents[0].request.spec().eval();
  EXPECT_EQ(choice.task(), "choice");
  EXPECT_EQ(choice.tasks(), "arc.jsonl");
  EXPECT_EQ(choice.shots(), 5);
  EXPECT_EQ(choice.seed(), 1234u);
  EXPECT_EQ(choice.seq_len(), 0);  // A ppl key, left unset.
  const v1::EvalJob& code = documents[1].request.spec().eval();
  EXPECT_EQ(code.samples(), 4);
  EXPECT_DOUBLE_EQ(code.temperature(), 0.8);
  EXPECT_DOUBLE_EQ(code.top_p(), 0.95);
  EXPECT_DOUBLE_EQ(code.timeout(), 10);
  const v1::EvalJob& shift = documents[2].request.spec().eval();
  EXPECT_EQ(shift.base(), "base");
  EXPECT_EQ(shift.max_tokens(), 32);
  EXPECT_THAT(documents[3].request.spec().eval().stop(), ElementsAre("\n\n", "END"));
  // Keys of another task, a missing required key, an unknown task.
  EXPECT_THAT(ErrorOf("kind: eval\nmodel: m\ntask: choice\ntasks: t\ncorpora: c\n"),
              HasSubstr("corpora: does not apply to task choice (it takes tasks, fewshot"));
  EXPECT_THAT(ErrorOf("kind: eval\nmodel: m\ntask: shift\nprompts: p\n"),
              HasSubstr("base: is required for task shift"));
  EXPECT_THAT(ErrorOf("kind: eval\nmodel: m\ntask: mmlu\n"), HasSubstr("task: must be one of"));
  EXPECT_THAT(ErrorOf("kind: eval\nmodel: m\ntask: code\ntasks: t\ntop_p: 0\n"),
              HasSubstr("top_p: must be a number in (0, 1]"));
}

TEST(SubmitSpecTest, WrongValuesNameTheDocumentKeyAndValue) {
  EXPECT_THAT(ErrorOf("kind: expand\nmodel: m\nout: o\nadd_blocks: many\n"),
              HasSubstr("document 1: add_blocks: must be an integer >= 0, got \"many\""));
  EXPECT_THAT(ErrorOf("kind: expand\nmodel: m\nout: o\nlayout: sideways\n"),
              HasSubstr("layout: must be one of interleaved, top, bottom, positions"));
  EXPECT_THAT(ErrorOf("kind: expand\nmodel: m\n"), HasSubstr("document 1: out: is required"));
  EXPECT_THAT(
      ErrorOf("kind: eval\nmodel: m\ncorpora: c\nworld_size: 2\n"),
      HasSubstr("document 1: world_size: a job of kind eval runs on one worker; must be 1"));
  EXPECT_THAT(ErrorOf("kind: ingest\ncorpus: c\ntokenizer: t\ninputs: a\nchat_template: plain\n"),
              HasSubstr("chat_template: goes with sft_format"));
  EXPECT_THAT(ErrorOf("kind: eval\nkind: eval\nmodel: m\ncorpora: c\n"),
              HasSubstr("document 1: kind: duplicate key"));
  EXPECT_THAT(ErrorOf("- kind: eval\n"), HasSubstr("document 1: must be a map of keys"));
}

TEST(SubmitSpecTest, EmptyDocumentsAreSkippedButKeepTheirPlaceInTheNumbering) {
  std::vector<SubmitDocument> documents = ParseOk(
      "---\nkind: eval\nmodel: m\ncorpora: c\n---\n---\nkind: eval\nmodel: m\n"
      "corpora: c\n");
  ASSERT_EQ(documents.size(), 2u);
  EXPECT_EQ(documents[0].document, 1);
  EXPECT_EQ(documents[1].document, 3);
  EXPECT_THAT(ErrorOf("# nothing here\n"), HasSubstr("jobs.yaml: no job documents"));
}

TEST(SubmitSpecTest, InvalidYamlNamesTheLineAndColumn) {
  EXPECT_THAT(ErrorOf("kind: eval\nmodel: [m\n"), MatchesRegex("jobs\\.yaml:[0-9]+:[0-9]+: "
                                                               "invalid YAML: .*"));
}

TEST(SubmitSpecTest, RequestIdsAreDistinctVersion4Uuids) {
  const std::string a = NewRequestId();
  const std::string b = NewRequestId();
  EXPECT_NE(a, b);
  EXPECT_THAT(a, MatchesRegex("[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-"
                              "[0-9a-f]{12}"));
}

TEST(SubmitSpecTest, JobKindNamesRoundTrip) {
  for (v1::JobKind kind : {v1::JOB_KIND_EXPAND, v1::JOB_KIND_PRETRAIN, v1::JOB_KIND_SFT,
                           v1::JOB_KIND_EVAL, v1::JOB_KIND_INGEST}) {
    EXPECT_EQ(ParseJobKind(rpc::JobKindName(kind)), kind);
  }
  EXPECT_EQ(ParseJobKind("Expand"), v1::JOB_KIND_UNSPECIFIED);
}

}  // namespace
}  // namespace llamapro::client
