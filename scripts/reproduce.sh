#!/usr/bin/env bash
# The paper's ablation in miniature (LLaMA Pro, Wu et al. 2024, the comparison
# of block expansion with full fine-tuning, LoRA and other placements of the
# new blocks), on the CPU, in under 45 minutes on 2 cores after the build.
# docs/results.md shows a run and what agrees with the paper.
#
#   1. Install and build (scripts/setup.sh; scripts/build.sh --target llamaproctl).
#   2. Corpora as in the quickstart: "general" (the licences in
#      /usr/share/common-licenses and /usr/share/doc/*/copyright, 4 MB) and
#      "code" (the Python standard library, 2 MB), paragraph/block documents,
#      deduplicated; every 25th document of each is set aside (never
#      tokenized into the store, never seen by the tokenizer) for the
#      multiple-choice tasks and the shift prompts. A SentencePiece tokenizer
#      (2048 pieces) trained on both; both ingested into a local token store
#      with 5 % of the documents held out for perplexity.
#   3. A base model (4 blocks, hidden 256, 4M parameters) pretrained from
#      random weights on general text only (every weight).
#   4. From that base, with the same code-only data, seed, schedule and token
#      budget (the paper post-pretrains on domain data only):
#        interleaved  expand 4 -> 6 blocks, one new block after blocks 1 and 3
#                     (the paper's layout); only the new blocks train
#        top          expand with both new blocks after block 3; only they train
#        bottom       expand with both new blocks before block 0; only they train
#        full         full fine-tuning of the base model (every weight)
#        lora         LoRA on every projection of every block of the base, its
#                     rank chosen so its trainable parameters match the 2 new
#                     blocks' (skipped, with a message, while `llamaproctl train`
#                     does not know `trainable: lora`)
#      and one extra run outside the paper's comparison:
#        interleaved-replay  as interleaved, but 30 % of the samples general
#                     text (the quickstart's mixture)
#   5. Every final model, and the base: held-out general and code perplexity
#      (eval ppl); next-line multiple choice on the set-aside general and
#      code documents (eval choice: the true next line against 3 lines of
#      similar length, for code of the same indentation, from other
#      documents); the token shift against the base on general prompts
#      (eval shift).
#   6. WORK_DIR/results.json, WORK_DIR/results.md (the table) and plots
#      (WORK_DIR/plots/*.png; scripts/plot_results.py). With --update-docs
#      the plots are copied to docs/results/ and the table in
#      docs/results.md is replaced.
#
# Usage: scripts/reproduce.sh [--update-docs] [--resume] [--ctl PATH]
#                             [--base-steps N] [--steps N] [WORK_DIR]
#                             (default WORK_DIR: out/reproduce)
#
#   --update-docs   copy the plots to docs/results/ and rewrite the table of
#                   docs/results.md (between its results-table markers)
#   --resume        keep WORK_DIR and redo only the stages that did not
#                   finish (each stage leaves a stamp when it does); e.g. the
#                   LoRA run once `trainable: lora` exists, then the report
#   --ctl PATH      use this llamaproctl instead of building one (skips
#                   scripts/setup.sh and scripts/build.sh)
#   --base-steps N  pretraining steps of the base model (default 1200)
#   --steps N       training steps of every variant (default 400)
#
# A step is 32 sequences of 128 tokens (4096 tokens). WORK_DIR is deleted and
# made afresh on every run without --resume; the script refuses to delete a
# directory it did not make. Per-stage timings are printed and kept in
# WORK_DIR/timings.tsv.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=/usr/bin/python3

log() { printf '\n== %s\n' "$*"; }
note() { printf '   %s\n' "$*"; }
die() {
  printf 'reproduce: error: %s\n' "$*" >&2
  exit 1
}
usage() { sed -n '/^# Usage:/,/^set -euo pipefail/p' "${BASH_SOURCE[0]}" | sed '$d;s/^# \{0,1\}//'; }

args=("$@")
update_docs=0
resume=0
ctl=
base_steps=1200
steps=400
work=
while (($#)); do
  case $1 in
    --update-docs) update_docs=1 ;;
    --resume) resume=1 ;;
    --ctl)
      (($# >= 2)) || die "--ctl needs a path"
      ctl=$2
      shift
      ;;
    --base-steps | --steps)
      [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || die "$1 needs a positive integer"
      if [[ $1 == --steps ]]; then steps=$2; else base_steps=$2; fi
      shift
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    -*) die "unknown option $1 (see --help)" ;;
    *)
      [[ -z $work ]] || die "more than one WORK_DIR given"
      work=$1
      ;;
  esac
  shift
done
work="${work:-$root/out/reproduce}"
command_line="scripts/reproduce.sh${args[*]:+ ${args[*]}}"

# --- 1. Build ---------------------------------------------------------------------------------------
SECONDS=0
total_start=$SECONDS
if [[ -z $ctl ]]; then
  log "Setup and build (scripts/setup.sh; scripts/build.sh --target llamaproctl; the first time: minutes)"
  "$root/scripts/setup.sh"
  "$root/scripts/build.sh" --target llamaproctl >/dev/null
  ctl="${LLAMAPRO_BUILD_DIR:-$root/build}/client/llamaproctl"
fi
[[ -x $ctl ]] || die "$ctl is missing or not executable"
ctl=$(cd "$(dirname "$ctl")" && pwd)/$(basename "$ctl")
[[ -x $python ]] || die "$python is missing (scripts/setup.sh installs python3)"
"$python" -c 'import matplotlib' 2>/dev/null ||
  die "matplotlib is missing for $python: run scripts/setup.sh (or apt-get install python3-matplotlib)"
build_seconds=$((SECONDS - total_start))

# --- The work directory -----------------------------------------------------------------------------
mkdir -p "$work"
work=$(cd "$work" && pwd)
marker="$work/.llamapro-reproduce"
stamps="$work/.stages"
settings="base_steps=$base_steps steps=$steps"
if [[ -n $(ls -A "$work") && ! -e $marker ]]; then
  die "$work is not empty and was not made by scripts/reproduce.sh; move it away or pick another WORK_DIR"
fi
if ((resume)) && [[ -e $stamps/settings ]]; then
  [[ $(<"$stamps/settings") == "$settings" ]] ||
    die "$work was made with $(<"$stamps/settings"), not $settings; run without --resume"
  log "Resuming in $work: finished stages are skipped"
else
  resume=0 # nothing to resume: a fresh run
  # Only what this script made is removed (the marker says it made the dir).
  find "$work" -mindepth 1 -maxdepth 1 ! -name .llamapro-reproduce -exec rm -rf {} +
  touch "$marker"
  mkdir -p "$stamps"
  echo "$settings" >"$stamps/settings"
fi
mkdir -p "$work"/{text,tasks,configs,models,runs,evals,logs}
store="$work/store"
timings="$work/timings.tsv"
[[ -e $timings ]] || : >"$timings"
# The machine is shared: its load at the start goes into results.json.
((resume)) || cut -d ' ' -f 1-3 /proc/loadavg >"$work/loadavg-start"
# A resumed run's own time is kept apart from the first run's total.
total_key=total
((resume)) && total_key=total-resumed

# Writes $2 into file $1 atomically (a temporary file beside it, renamed).
write_atomic() {
  local tmp
  tmp=$(mktemp "$1.tmp.XXXXXX")
  printf '%s\n' "$2" >"$tmp"
  mv -f "$tmp" "$1"
}

# Records stage $1 took $2 seconds (replacing an earlier record of it).
record_time() {
  local tmp
  tmp=$(mktemp "$timings.tmp.XXXXXX")
  awk -F '\t' -v s="$1" '$1 != s' "$timings" >"$tmp"
  printf '%s\t%s\n' "$1" "$2" >>"$tmp"
  mv -f "$tmp" "$timings"
}
record_time build "$build_seconds"

fmt_time() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

# stage NAME TITLE FUNCTION [ARGS...]: runs FUNCTION unless --resume and NAME
# finished before; prints and records its time; stamps it done unless the
# function set `skipped`. A stage that runs again makes what depends on it
# run again: the corpora, tokenizer, store and base model everything after
# them, a variant's training its evaluation.
skipped=0
foundation=(corpora tokenizer ingest base)
stage() {
  local name=$1 title=$2 start i
  shift 2
  if ((resume)) && [[ -e $stamps/$name ]]; then
    log "$title: done in an earlier run, skipped"
    return
  fi
  case $name in
    train-*) rm -f "$stamps/eval-${name#train-}" ;;
    corpora | tokenizer | ingest | base)
      for ((i = ${#foundation[@]} - 1; i >= 0; i--)); do
        [[ ${foundation[i]} == "$name" ]] && break
        rm -f "$stamps/${foundation[i]}"
      done
      rm -f "$stamps"/train-* "$stamps"/eval-*
      ;;
  esac
  log "$title"
  start=$SECONDS
  skipped=0
  "$@"
  record_time "$name" $((SECONDS - start))
  note "[$name: $(fmt_time $((SECONDS - start))), total $(fmt_time $((SECONDS - total_start)))]"
  if ((!skipped)); then touch "$stamps/$name"; else rm -f "$stamps/$name"; fi
}

# Runs a command with its stdout shown and kept in log $1, its stderr (progress
# lines) kept in $1.err; on failure, shows the end of the latter and returns
# the command's status.
run_logged() {
  local logfile=$1 status=0
  shift
  "$@" 2>"$logfile.err" | tee "$logfile" | sed 's/^/   /' || status=$?
  if ((status != 0)); then
    tail -n 5 "$logfile.err" | sed 's/^/   | /' >&2
    printf '   (exit %s: %s; logs: %s, %s.err)\n' "$status" "$*" "$logfile" "$logfile" >&2
  fi
  return "$status"
}

# --- 2. Corpora, tokenizer, token store -------------------------------------------------------------
build_corpora() {
  local stdlib
  stdlib=$("$python" -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')
  # Documents are blocks of non-blank lines (licence paragraphs, functions and
  # classes), at least 40 characters, each kept once, in file order, up to
  # the cap. Every 25th goes to the test set instead. The tasks are built from
  # the test set only. Everything is written to a temporary name and renamed.
  "$python" - "$work/text" "$work/tasks" "$stdlib" <<'EOF'
import glob, hashlib, json, os, random, sys

text_dir, task_dir, stdlib = sys.argv[1:]
CAPS = {"general": 4_000_000, "code": 2_000_000}
TEST_EVERY = 25
QUESTIONS = 300
SHIFT_PROMPTS = 16


def blocks(text):
    block = []
    for line in text.splitlines() + [""]:
        line = line.rstrip()
        if line.strip():
            block.append(line)
        elif block:
            yield "\n".join(block)
            block = []


def write(path, lines):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for line in lines:
            f.write(line + "\n")
    os.replace(tmp, path)


def corpus(name, paths):
    cap = CAPS[name]
    seen, size, train, test, files = set(), 0, [], [], 0
    for path in paths:
        if size >= cap:
            break
        try:
            with open(path, "rb") as f:
                text = f.read().decode("utf-8", "ignore")
        except OSError:
            continue
        files += 1
        for block in blocks(text):
            key = hashlib.sha256(" ".join(block.split()).encode()).digest()
            if len(block) < 40 or key in seen:
                continue
            seen.add(key)
            if len(seen) % TEST_EVERY == 0:
                test.append(block)
                continue
            train.append(block)
            size += len(block.encode()) + 1
            if size >= cap:
                break
    if size < 200_000:
        sys.exit(f"reproduce: error: only {size} bytes of {name} text found")
    write(os.path.join(text_dir, name + ".jsonl"), (json.dumps({"text": b}) for b in train))
    write(os.path.join(text_dir, name + ".txt"), train)
    print(f"   {name:8} {len(train):6} documents, {size / 1e6:.2f} MB from {files} files; "
          f"{len(test)} documents set aside for the tasks")
    return test


def indent(line):
    return len(line) - len(line.lstrip(" \t"))


def choice_task(name, docs, context_lines, same_indent, rng):
    """Next-line multiple choice: up to context_lines lines of a set-aside
    document, then its true next line against 3 lines of other set-aside
    documents of similar length and the same indentation."""
    lines = [(d, i, line) for d, doc in enumerate(docs)
             for i, line in enumerate(doc.split("\n")) if len(line.strip()) >= 20]
    by_doc = [doc.split("\n") for doc in docs]
    candidates = [(d, i, line) for d, i, line in lines if i >= 1]
    rng.shuffle(candidates)
    questions, used_docs = [], {}
    for d, i, line in candidates:
        if len(questions) >= QUESTIONS:
            break
        if used_docs.get(d, 0) >= 2:          # at most 2 questions per document
            continue
        pool = [l for dd, _, l in rng.sample(lines, min(len(lines), 400))
                if dd != d and l.strip() != line.strip()
                and (not same_indent or indent(l) == indent(line))]
        pool.sort(key=lambda l: abs(len(l) - len(line)))
        distractors = []
        for l in pool:
            if l not in distractors:
                distractors.append(l)
            if len(distractors) == 3:
                break
        if len(distractors) < 3:
            continue
        context = "\n".join(by_doc[d][max(0, i - context_lines):i])
        gold = rng.randrange(4)
        choices = distractors[:gold] + [line] + distractors[gold:]
        questions.append(json.dumps({"context": context, "choices": choices, "gold": gold}))
        used_docs[d] = used_docs.get(d, 0) + 1
    if len(questions) < 100:
        sys.exit(f"reproduce: error: only {len(questions)} {name} questions could be made")
    write(os.path.join(task_dir, name + "-choice.jsonl"), questions)
    print(f"   {name + '-choice':14} {len(questions)} next-line questions, 4 choices each")


licences = sorted(p for p in glob.glob("/usr/share/common-licenses/*") if not os.path.islink(p))
general = corpus("general", licences + sorted(glob.glob("/usr/share/doc/*/copyright")))
code = corpus("code", sorted(glob.glob(os.path.join(stdlib, "*.py"))))
rng = random.Random(1234)
choice_task("general", general, 3, True, rng)
choice_task("code", code, 4, True, rng)
# Shift prompts: the first line of set-aside general documents (ones that
# read as prose, not a list of names or file patterns).
prompts = [doc.split("\n")[0].strip() for doc in general]
prompts = [p for p in prompts if len(p) >= 40 and sum(c.isalpha() or c == " " for c in p) > 0.9 * len(p)]
prompts = rng.sample(prompts, min(SHIFT_PROMPTS, len(prompts)))
write(os.path.join(task_dir, "shift-prompts.jsonl"), (json.dumps({"prompt": p}) for p in prompts))
print(f"   shift-prompts  {len(prompts)} general prompts")
EOF
}

train_tokenizer() {
  rm -rf "$work/tokenizer"
  "$ctl" tokenizer train --input "$work/text/general.txt" "$work/text/code.txt" --vocab-size 2048 \
    --out "$work/tokenizer" | sed 's/^/   /'
}

ingest() {
  rm -rf "$store"
  local corpus
  for corpus in general code; do
    run_logged "$work/logs/ingest-$corpus.log" "$ctl" ingest --store "$store" --corpus "$corpus" \
      --tokenizer "$work/tokenizer" --held-out 0.05 --quiet "$work/text/$corpus.jsonl" ||
      die "ingesting $corpus failed"
  done
  "$ctl" corpora --store "$store" | sed 's/^/   /'
}

stage corpora "Corpora: general (licences, copyright files) and code (Python standard library)" build_corpora
stage tokenizer "Tokenizer (SentencePiece BPE, 2048 pieces, on both corpora)" train_tokenizer
stage ingest "Token store: ingest both corpora (5 % of documents held out)" ingest

# --- 3. The base model ------------------------------------------------------------------------------
# Every training: sequences of 128 tokens, 32 a step (4096 tokens), AdamW
# (wd 0.1, clip 1.0), cosine to a tenth of the peak rate, held-out
# perplexity of both corpora 4 to 8 times a run (at steps that divide the
# run, so the last step is one) on the same 256 windows (32K tokens) of each
# as the final evaluation.
seq_len=128
windows=256
lr=3.0e-3
min_lr=3.0e-4

# eval_interval STEPS: STEPS / k for the largest k in 8..4 that divides it,
# else about a sixth of the run.
eval_interval() {
  local k
  for k in 8 7 6 5 4; do
    ((($1 % k) == 0)) && { echo $(($1 / k)); return; }
  done
  echo $((($1 + 5) / 6))
}

# write_config FILE MODEL OUTPUT_DIR MIXTURE TRAINABLE STEPS WARMUP [EXTRA_YAML]
write_config() {
  local file=$1 model=$2 out=$3 mixture=$4 trainable=$5 n=$6 warmup=$7 extra=${8:-}
  write_atomic "$file" "# Written by scripts/reproduce.sh; keys: docs/config.md.
model: $model
output_dir: $out
data: {store: $store, mixture: $mixture, seq_len: $seq_len, seed: 0}
trainable: $trainable${extra:+
$extra}
optimizer: {lr: $lr, weight_decay: 0.1, clip_grad_norm: 1.0}
schedule: {warmup: $warmup, decay: cosine, min_lr: $min_lr}
batch: {sequences: 32, micro_batch: 8}
steps: $n
eval: {corpora: [general, code], general: [general], interval: $(eval_interval "$n"), windows: $windows}
checkpoint: {keep: 1}
log_interval: 5"
}

# train NAME CONFIG: a training run in runs/NAME; an interrupted one (a
# checkpoint and `latest` present) is resumed exactly, anything else redone.
# Returns the status of `llamaproctl train`.
train() {
  local name=$1 config=$2 out="$work/runs/$1"
  local -a resume_flag=()
  if [[ -e $out/latest ]]; then
    resume_flag=(--resume)
    note "resuming $out from $(<"$out/latest")"
  else
    rm -rf "$out"
  fi
  run_logged "$work/logs/train-$name.log" "$ctl" train --config "$config" "${resume_flag[@]}"
}

# The evaluations read tokenizer.model from the model directory.
ensure_tokenizer() {
  local f
  for f in tokenizer.model tokenizer_config.json special_tokens_map.json; do
    [[ -e $1/$f ]] || cp "$work/tokenizer/$f" "$1/"
  done
}

pretrain_base() {
  rm -rf "$work/models/init"
  "$ctl" synth --out "$work/models/init" --layers 4 --hidden 256 --intermediate 688 --heads 8 \
    --kv-heads 4 --vocab 2048 --max-positions 256 --dtype f32 --quiet | sed 's/^/   /'
  cp "$work/tokenizer"/* "$work/models/init/"
  write_config "$work/configs/base.yaml" "$work/models/init" "$work/runs/base" "{general: 1.0}" \
    all "$base_steps" 0.02
  note "config: $work/configs/base.yaml ($base_steps steps, $((base_steps * 4096)) tokens)"
  train base "$work/configs/base.yaml" || die "training the base model failed"
  ensure_tokenizer "$work/runs/base/$(<"$work/runs/base/latest")"
}

stage base "Base model: 4 blocks, hidden 256, pretrained on general text ($base_steps steps)" pretrain_base
base_model="$work/runs/base/$(<"$work/runs/base/latest")"

# --- 4. The variants --------------------------------------------------------------------------------
# Parameters: the 2 new blocks of an expansion vs LoRA's r x (in + out) per
# adapted W[out, in] (7 projections, 4 blocks).
read -r block_params lora_per_rank < <("$ctl" inspect --model "$base_model" --json | "$python" -c '
import json, sys
m = json.load(sys.stdin); c = m["config"]
h, f, d = c["hidden_size"], c["intermediate_size"], c["head_dim"]
q, kv = c["num_attention_heads"] * d, c["num_key_value_heads"] * d
shapes = [(q, h), (kv, h), (kv, h), (h, q), (f, h), (f, h), (h, f)]  # q k v o gate up down
print(m["parameters"]["blocks"][0], c["num_hidden_layers"] * sum(o + i for o, i in shapes))')
[[ $block_params =~ ^[0-9]+$ && $lora_per_rank =~ ^[0-9]+$ ]] || die "llamaproctl inspect $base_model failed"
new_params=$((2 * block_params))
lora_rank=$(((new_params + lora_per_rank / 2) / lora_per_rank))
lora_params=$((lora_rank * lora_per_rank))
lora_alpha=$((2 * lora_rank))

variants=(interleaved top bottom full lora interleaved-replay)
declare -A label=(
  [interleaved]="expansion, interleaved (LLaMA Pro)"
  [top]="expansion, top"
  [bottom]="expansion, bottom"
  [full]="full fine-tuning"
  [lora]="LoRA (rank $lora_rank)"
  [interleaved-replay]="expansion, interleaved, 30 % general replay"
)

write_variant_info() { # NAME STATUS TRAINABLE_PARAMS [NOTE]
  "$python" -c 'import json, sys
name, label, status, params, note = sys.argv[1:]
print(json.dumps({"name": name, "label": label, "status": status,
                  "trainable_parameters": int(params), "note": note}))' \
    "$1" "${label[$1]}" "$2" "$3" "${4:-}" >"$work/runs/$1.info.tmp"
  mv -f "$work/runs/$1.info.tmp" "$work/runs/$1.info.json"
}

expand_model() { # NAME LAYOUT
  rm -rf "$work/models/$1"
  "$ctl" expand --model "$base_model" --out "$work/models/$1" --layout "$2" --add-blocks 2 --verify \
    --quiet | sed 's/^/   /'
  ensure_tokenizer "$work/models/$1"
}

run_variant() {
  local name=$1 config="$work/configs/$1.yaml" mixture="{code: 1.0}" data="code"
  local params=$new_params status=0
  rm -f "$work/runs/$name.info.json"
  case $name in
    interleaved | top | bottom)
      expand_model "$name" "$name"
      write_config "$config" "$work/models/$name" "$work/runs/$name" "$mixture" expanded "$steps" 0.06
      ;;
    interleaved-replay)
      expand_model "$name" interleaved
      mixture="{code: 0.7, general: 0.3}"
      data="70 % code, 30 % general"
      write_config "$config" "$work/models/$name" "$work/runs/$name" "$mixture" expanded "$steps" 0.06
      ;;
    full)
      params=$("$ctl" inspect --model "$base_model" --json | "$python" -c \
        'import json, sys; print(json.load(sys.stdin)["parameters"]["total"])')
      write_config "$config" "$base_model" "$work/runs/$name" "$mixture" all "$steps" 0.06
      ;;
    lora)
      params=$lora_params
      write_config "$config" "$base_model" "$work/runs/$name" "$mixture" lora "$steps" 0.06 \
        "lora: {rank: $lora_rank, alpha: $lora_alpha, dropout: 0, targets: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj], blocks: all}"
      note "LoRA rank $lora_rank, alpha $lora_alpha: $lora_params trainable parameters" \
        "(the 2 new blocks of an expansion: $new_params)"
      ;;
  esac
  note "config: $config ($data, $steps steps, $((steps * 4096)) tokens)"
  train "$name" "$config" || status=$?
  if ((status != 0)); then
    # Until `llamaproctl train` knows `trainable: lora`, it refuses the config
    # before the first step.
    if [[ $name == lora && ! -e $work/runs/lora/latest ]] &&
      grep -Eq 'lora: unknown key|trainable:.*lora' "$work/logs/train-lora.log.err"; then
      note "SKIPPED: this llamaproctl does not support LoRA yet; it said:"
      note "  $(grep -E -m 1 'lora' "$work/logs/train-lora.log.err")"
      note "Rerun with --resume once it does: only LoRA and the report run then."
      write_variant_info lora skipped "$params" "llamaproctl train refused trainable: lora"
      skipped=1
      return
    fi
    die "training $name failed"
  fi
  ensure_tokenizer "$work/runs/$name/$(<"$work/runs/$name/latest")"
  write_variant_info "$name" trained "$params"
}

for v in "${variants[@]}"; do
  stage "train-$v" "Variant $v: ${label[$v]} ($steps steps on code)" run_variant "$v"
done

# --- 5. Evaluations ---------------------------------------------------------------------------------
evaluate() {
  local name=$1 model
  model="$2/$(<"$2/latest")"
  "$ctl" eval ppl --model "$model" --store "$store" --corpus general code --seq-len "$seq_len" \
    --windows "$windows" --json >"$work/evals/$name-ppl.json.tmp"
  mv -f "$work/evals/$name-ppl.json.tmp" "$work/evals/$name-ppl.json"
  local task
  for task in general code; do
    "$ctl" eval choice --model "$model" --tasks "$work/tasks/$task-choice.jsonl" --delimiter $'\n' \
      --results "$work/evals/$name-choice-$task.json" --quiet | sed -n "s/^\([0-9]\)/   $task choice: \1/p"
  done
  if [[ $name != base ]]; then
    "$ctl" eval shift --model "$model" --base "$base_model" --prompts "$work/tasks/shift-prompts.jsonl" \
      --max-tokens 32 --results "$work/evals/$name-shift.json" --quiet | sed -n 's/^\([0-9]\)/   shift: \1/p'
  fi
  "$python" - "$work/evals" "$name" <<'EOF' | sed 's/^/   /'
import json, os, sys
d, name = sys.argv[1:]
ppl = {r["corpus"]: r["perplexity"] for r in json.load(open(os.path.join(d, name + "-ppl.json")))}
line = f"perplexity general {ppl['general']:.2f}, code {ppl['code']:.2f}"
for task in ("general", "code"):
    r = json.load(open(os.path.join(d, f"{name}-choice-{task}.json")))
    line += f"; {task} choice acc_norm {r['acc_norm']:.3f}"
print(line)
EOF
}

stage eval-base "Evaluate: base" evaluate base "$work/runs/base"
for v in "${variants[@]}"; do
  if [[ -e $work/runs/$v/latest ]] && [[ -e $stamps/train-$v ]]; then
    stage "eval-$v" "Evaluate: $v" evaluate "$v" "$work/runs/$v"
  else
    rm -f "$stamps/eval-$v" "$work/evals/$v"{-ppl.json,-choice-general.json,-choice-code.json,-shift.json}
  fi
done

# --- 6. Report --------------------------------------------------------------------------------------
record_time "$total_key" $((SECONDS - total_start))
report() {
  local -a docs=()
  ((update_docs)) && docs=(--update-docs "$root")
  "$python" "$root/scripts/plot_results.py" "$work" --command "$command_line" \
    --setting "base_steps=$base_steps" --setting "steps=$steps" \
    --setting "lora_rank=$lora_rank" --setting "lora_alpha=$lora_alpha" \
    --setting "new_block_parameters=$new_params" --setting "lora_parameters=$lora_params" \
    "${docs[@]}"
}
rm -f "$stamps/report" # always redone
stage report "Report: results.json, results.md, plots" report
record_time "$total_key" $((SECONDS - total_start))
log "Done in $(fmt_time $((SECONDS - total_start))): $work/results.md, $work/results.json, $work/plots/"
