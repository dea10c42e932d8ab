#!/usr/bin/env python3
"""Hugging Face transformers against llamaproctl, end to end.

For several architectures (MHA/GQA, tied/untied, biases, Mistral's sliding
window, linear and llama3 RoPE scaling, explicit head_dim, sharded output):
  * `llamaproctl synth` writes a random checkpoint, `llamaproctl expand
    --verify` expands it;
  * transformers loads both as is; the expanded model's logits equal the
    original's exactly (transformers' own forward pass, fp32; with
    `expand --dtype`, against the original rounded to that dtype);
  * `llamaproctl score --json` log-probabilities agree with transformers'
    within 1e-4 (an independent implementation of the same semantics);
  * parameter counts of `inspect --json` equal transformers'.

Usage: hf_compat_test.py PATH/TO/llamaproctl. Exits 77 (skip) when
transformers is not importable.
"""
import json
import os
import random
import subprocess
import sys
import tempfile

try:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM
except ImportError as e:  # pragma: no cover
    print(f"skipping: transformers/torch not importable ({e}); run scripts/setup.sh")
    sys.exit(77)

transformers.logging.set_verbosity_error()
LLAMAPROCTL = sys.argv[1]


def run(*args):
    proc = subprocess.run([LLAMAPROCTL, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"llamaproctl {' '.join(args)} failed:\n{proc.stderr}")
    return proc.stdout


def edit_config(model_dir, **changes):
    path = os.path.join(model_dir, "config.json")
    with open(path) as f:
        config = json.load(f)
    config.update(changes)
    with open(path, "w") as f:
        json.dump(config, f, indent=2)


TORCH_DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def hf_logits(model_dir, tokens, round_to=torch.float32):
    """Logits in fp32; with `round_to`, the weights are first rounded to that dtype."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=round_to).float()
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0]
    return model, logits


CASES = [
    # name, synth flags, config edits, expand flags
    ("llama-mha-untied-f32", ["--heads", "4", "--kv-heads", "4", "--dtype", "f32"], {},
     ["--add-blocks", "2"]),
    ("llama-gqa-tied-biases-bf16",
     ["--heads", "4", "--kv-heads", "2", "--tied", "--attention-bias", "--mlp-bias"], {},
     ["--add-blocks", "4", "--groups", "2"]),
    ("mistral-sliding-window", ["--arch", "mistral", "--sliding-window", "7", "--dtype", "f16"],
     {}, ["--layout", "top", "--add-blocks", "1"]),
    ("llama-linear-rope", ["--dtype", "f32"], {"rope_scaling": {"type": "linear", "factor": 4.0}},
     ["--layout", "bottom", "--add-blocks", "1"]),
    ("llama3-rope", ["--hidden", "96", "--heads", "2", "--kv-heads", "1", "--dtype", "f32"],
     {"rope_theta": 500000.0,
      "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                       "high_freq_factor": 4.0, "original_max_position_embeddings": 32}},
     ["--layout", "positions", "--positions", "0,3", "--shard-size", "150KB"]),
    # transformers honours an explicit head_dim for Mistral from 4.42, for Llama from 4.45.
    ("mistral-explicit-head-dim", ["--arch", "mistral", "--hidden", "96", "--heads", "3",
                                   "--kv-heads", "1", "--head-dim", "48", "--dtype", "f32"],
     {}, ["--add-blocks", "2", "--dtype", "bf16"]),
]


def check_case(tmp, name, synth_flags, config_edits, expand_flags):
    base = os.path.join(tmp, name)
    pro = base + "-pro"
    run("synth", "--out", base, "--layers", "4", "--vocab", "320", "--quiet", *synth_flags)
    if config_edits:
        edit_config(base, **config_edits)
    run("expand", "--model", base, "--out", pro, "--verify", "--quiet", *expand_flags)

    rng = random.Random(name)
    tokens = [rng.randrange(320) for _ in range(24)]
    # `expand --dtype X` rounds the weights: compare with the original rounded the same way.
    round_to = torch.float32
    if "--dtype" in expand_flags:
        round_to = TORCH_DTYPES[expand_flags[expand_flags.index("--dtype") + 1]]
    base_model, base_logits = hf_logits(base, tokens, round_to)
    pro_model, pro_logits = hf_logits(pro, tokens)
    assert pro_model.config.num_hidden_layers > base_model.config.num_hidden_layers, name
    assert torch.equal(base_logits, pro_logits), (
        f"{name}: transformers' logits differ after expansion "
        f"(max diff {(base_logits - pro_logits).abs().max().item()})")

    ours = json.loads(run("score", "--model", pro, "--tokens", ",".join(map(str, tokens)),
                          "--json"))
    hf_logprobs = torch.log_softmax(pro_logits.double(), dim=-1)
    expected = [hf_logprobs[i, tokens[i + 1]].item() for i in range(len(tokens) - 1)]
    diff = max(abs(a - b) for a, b in zip(ours["logprobs"], expected))
    assert diff < 1e-4, f"{name}: llamaproctl score differs from transformers by {diff}"

    inspect = json.loads(run("inspect", "--model", pro, "--json"))
    assert inspect["parameters"]["total"] == pro_model.num_parameters(), (
        f"{name}: inspect counts {inspect['parameters']['total']} parameters, "
        f"transformers {pro_model.num_parameters()}")
    print(f"ok  {name}: {base_model.config.num_hidden_layers} -> "
          f"{pro_model.config.num_hidden_layers} blocks, logits identical in transformers, "
          f"max |logprob diff| vs llamaproctl {diff:.2e}")


def main():
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="llamapro-hf-") as tmp:
        for case in CASES:
            check_case(tmp, *case)


if __name__ == "__main__":
    main()
