#!/usr/bin/env python3
"""A LoRA run's checkpoints load in Hugging Face transformers and PEFT.

`llamaproctl train` trains LoRA adapters (rank 4 on every projection) on a
tiny model twice, identically, once with `lora.export: merged` and once with
`lora.export: adapter`. Then:
  * transformers loads the merged checkpoint as a plain LlamaForCausalLM;
  * PEFT (PeftModel.from_pretrained) loads the adapter checkpoint on top of
    the base model: its logits equal the merged model's within 1e-4, and the
    trained adapters changed the function (the base model's logits differ);
  * PEFT's own merge_and_unload gives the same weights as ours.

Usage: peft_lora_test.py PATH/TO/llamaproctl. Exits 77 (skip) when
transformers or peft is not importable (scripts/setup.sh installs both).
"""
import glob
import os
import subprocess
import sys
import tempfile

try:
    import torch
    import transformers
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
except ImportError as e:  # pragma: no cover
    print(f"skipping: transformers/peft not importable ({e}); run scripts/setup.sh")
    sys.exit(77)

transformers.logging.set_verbosity_error()
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LLAMAPROCTL = sys.argv[1] if len(sys.argv) == 2 else None

CONFIG = """\
model: {base}
output_dir: {out}
data: {{store: {store}, mixture: {{docs: 1}}, seq_len: 32, seed: 1}}
trainable: lora
lora: {{rank: 4, alpha: 8, targets: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj],
        export: {export}}}
optimizer: {{name: adamw, lr: 0.02}}
batch: {{sequences: 4, micro_batch: 2}}
steps: 8
threads: 2
"""


def run(*args):
    proc = subprocess.run([LLAMAPROCTL, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"llamaproctl {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].double()


def main():
    if LLAMAPROCTL is None:
        print(__doc__, file=sys.stderr)
        return 2
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="llamapro-peft-") as tmp:
        text = os.path.join(tmp, "docs.txt")
        with open(text, "w") as out:
            for path in sorted(glob.glob(os.path.join(REPO, "docs", "*.md"))):
                with open(path, errors="replace") as f:
                    out.write(f.read())
        run("tokenizer", "train", "--input", text, "--vocab-size", "512", "--out",
            os.path.join(tmp, "tok"))
        base = os.path.join(tmp, "base")
        run("synth", "--out", base, "--layers", "2", "--hidden", "64", "--intermediate", "128",
            "--heads", "4", "--kv-heads", "2", "--vocab", "512", "--dtype", "f32", "--quiet")
        store = os.path.join(tmp, "store")
        run("ingest", "--store", store, "--corpus", "docs", "--tokenizer",
            os.path.join(tmp, "tok"), "--split-lines", text)
        checkpoints = {}
        for export in ("merged", "adapter"):
            config = os.path.join(tmp, f"{export}.yaml")
            out = os.path.join(tmp, f"run-{export}")
            with open(config, "w") as f:
                f.write(CONFIG.format(base=base, out=out, store=store, export=export))
            run("train", "--config", config)
            with open(os.path.join(out, "latest")) as f:
                checkpoints[export] = os.path.join(out, f.read().strip())

        adapter_dir = checkpoints["adapter"]
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            assert os.path.exists(os.path.join(adapter_dir, name)), f"{name} missing"
        tokens = [1, 17, 250, 3, 99, 42, 8, 100, 7, 300, 12, 5]
        merged = AutoModelForCausalLM.from_pretrained(checkpoints["merged"],
                                                      torch_dtype=torch.float32).eval()
        plain = AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32).eval()
        peft_model = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32),
            adapter_dir).eval()
        want = logits(merged, tokens)
        got = logits(peft_model, tokens)
        moved = (logits(plain, tokens) - want).abs().max().item()
        err = ((got - want).abs().max() / want.abs().max()).item()
        print(f"PEFT adapter vs merged checkpoint: max relative logit error {err:.2e}; "
              f"the adapters moved the logits by up to {moved:.3f}")
        assert err < 1e-4, err
        assert moved > 1e-3, f"the trained adapters did not change the model ({moved})"

        # PEFT's merge equals ours.
        peft_merged = peft_model.merge_and_unload()
        ours = dict(merged.named_parameters())
        worst = 0.0
        for name, value in peft_merged.named_parameters():
            worst = max(worst, (value.double() - ours[name].double()).abs().max().item())
        print(f"PEFT merge_and_unload vs our merged weights: max abs difference {worst:.2e}")
        assert worst < 1e-5, worst
    print("peft_lora_test: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
