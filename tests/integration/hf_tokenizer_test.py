#!/usr/bin/env python3
"""transformers' LlamaTokenizer (slow, SentencePiece) and LlamaTokenizerFast
(converted from it) load a `llamaproctl tokenizer train` output directory as
is and encode every line of the multilingual fixture exactly as `llamaproctl
tokenizer encode --specials` does (BOS included, as tokenizer_config.json
says); the fast tokenizer decodes the ids back to the line. (The slow one's
decode mangles a leading whitespace-only piece such as "▁▁▁▁" in
transformers 4.44, for LLaMA-2's own vocabulary too, so it is not checked.)

Usage: hf_tokenizer_test.py PATH/TO/llamaproctl PATH/TO/multilingual.txt.
Exits 77 (skip) when transformers or sentencepiece is not importable.
"""
import json
import os
import subprocess
import sys
import tempfile

try:
    import sentencepiece  # noqa: F401  (LlamaTokenizer needs it)
    import transformers
    from transformers import LlamaTokenizer, LlamaTokenizerFast
except ImportError as e:  # pragma: no cover
    print(f"skipping: transformers/sentencepiece not importable ({e})")
    sys.exit(77)

transformers.logging.set_verbosity_error()
LLAMAPROCTL, FIXTURE = sys.argv[1], sys.argv[2]


def run(*args):
    proc = subprocess.run([LLAMAPROCTL, *args], capture_output=True)
    if proc.returncode != 0:
        raise AssertionError(f"llamaproctl {' '.join(args)} failed:\n{proc.stderr.decode()}")
    return proc.stdout.decode("utf-8")


def main():
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "tok")
        run("tokenizer", "train", "--input", FIXTURE, "--vocab-size", "1000", "--out", out)
        hf = LlamaTokenizer.from_pretrained(out)
        fast = LlamaTokenizerFast.from_pretrained(out, from_slow=True)
        info = json.loads(run("tokenizer", "info", "--tokenizer", out, "--json"))
        assert hf.bos_token_id == info["bos"]["id"] and hf.eos_token_id == info["eos"]["id"]
        assert len(hf) == info["vocab_size"], (len(hf), info["vocab_size"])

        with open(FIXTURE, encoding="utf-8") as f:
            lines = f.read().split("\n")[:-1]
        line_file = os.path.join(tmp, "line.txt")
        mismatches = 0
        for number, line in enumerate(lines, start=1):
            with open(line_file, "w", encoding="utf-8") as f:
                f.write(line)
            ours = json.loads(run("tokenizer", "encode", "--tokenizer", out, "--file", line_file,
                                  "--specials", "--json"))["ids"]
            for name, tokenizer in (("slow", hf), ("fast", fast)):
                theirs = tokenizer(line)["input_ids"]
                if ours != theirs:
                    mismatches += 1
                    print(f"line {number}: {line!r}\n  llamaproctl  {ours}\n  {name:12s} {theirs}")
            back = fast.decode(ours, skip_special_tokens=True)
            if back != line:
                mismatches += 1
                print(f"line {number}: transformers decodes to {back!r}")
        if mismatches:
            print(f"FAIL: {mismatches} mismatches over {len(lines)} lines")
            return 1
        print(f"OK: {len(lines)} lines encode identically in transformers "
              f"{transformers.__version__} (LlamaTokenizer, LlamaTokenizerFast) and llamaproctl")
        return 0


if __name__ == "__main__":
    sys.exit(main())
