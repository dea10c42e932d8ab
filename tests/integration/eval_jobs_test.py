#!/usr/bin/env python3
"""Eval jobs of every task run on a real worker, submitted to a real coordinator.

A coordinator and a worker (python_client_test.Cluster) run a pipeline of
`choice`, `code`, `generate` and `shift` eval jobs on a tiny model with a
real tokenizer (docs/eval.md), submitted with `llamaproctl submit --watch`.
Checked: every job succeeds; its result (shown by `llamaproctl get --json`)
holds the task's headline numbers and agrees with the results JSON the worker
wrote beside the checkpoint (MODEL/eval/TASK-INPUT.json); the model against
itself is 100 % unshifted; every code completion ran in the sandbox and
pass@1 is the fraction that passed; the coordinator's /metrics exports the
results as llamapro_eval_result; a key of another task is refused at submit.

Usage: eval_jobs_test.py COORDINATOR WORKER LLAMAPROCTL
"""
import glob
import json
import os
import subprocess
import sys
import urllib.request

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from python_client_test import run, run_with_cluster  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PIPELINE = """\
kind: eval
name: arc
model: models/m
task: choice
tasks: tasks/choice.jsonl
shots: 1
---
kind: eval
name: humaneval
model: models/m
task: code
tasks: tasks/code.jsonl
max_tokens: 8
timeout: 5
---
kind: eval
name: complete
model: models/m
task: generate
prompts: tasks/prompts.jsonl
max_tokens: 6
---
kind: eval
name: drift
model: models/m
task: shift
base: models/m
prompts: tasks/prompts.jsonl
max_tokens: 6
"""

CHOICE = [
    {"context": "Question: what is two plus two?\nAnswer:", "choices": ["four", "five", "twenty two"],
     "gold": 0},
    {"context": "Question: which colour is the sky?\nAnswer:", "choices": ["blue", "green"],
     "gold": 0},
    {"context": "Question: how many legs has a spider?\nAnswer:", "choices": ["six", "eight"],
     "gold": 1},
]
CHECK = "def check(f):\n    assert f(2, 3) == 5\n"
CODE = [
    {"task_id": "right", "prompt": "def add(a, b):\n    return a + b\n# ", "test": CHECK,
     "entry_point": "add"},
    {"task_id": "empty", "prompt": "def add(a, b):\n", "test": CHECK, "entry_point": "add"},
    {"task_id": "mbpp", "text": "Add two numbers.", "test_list": ["assert add(1, 1) == 2"]},
]
PROMPTS = [{"prompt": "The coordinator"}, {"prompt": "A worker"}]


def write_jsonl(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def checks(cluster):
    env = dict(os.environ, LLAMAPRO_COORDINATOR=cluster.address,
               LLAMAPRO_AUTH_TOKEN_FILE=cluster.token_file)
    data = cluster.data_dir
    text = os.path.join(cluster.tmp, "text.txt")
    with open(text, "w") as out:
        for path in sorted(glob.glob(os.path.join(REPO, "docs", "*.md"))):
            with open(path, errors="replace") as f:
                out.write(f.read())
    run([cluster.ctl, "tokenizer", "train", "--input", text, "--vocab-size", "512", "--out",
         os.path.join(cluster.tmp, "tok")])
    cluster.synth_base(rel="models/m", vocab=512)
    model = os.path.join(data, "models", "m")
    with open(os.path.join(cluster.tmp, "tok", "tokenizer.model"), "rb") as src, \
            open(os.path.join(model, "tokenizer.model"), "wb") as dst:
        dst.write(src.read())
    write_jsonl(os.path.join(data, "tasks", "choice.jsonl"), CHOICE)
    write_jsonl(os.path.join(data, "tasks", "code.jsonl"), CODE)
    write_jsonl(os.path.join(data, "tasks", "prompts.jsonl"), PROMPTS)

    # A key of another task is refused before anything is submitted.
    bad = os.path.join(cluster.tmp, "bad.yaml")
    with open(bad, "w") as f:
        f.write("kind: eval\nmodel: models/m\ntask: choice\ntasks: t.jsonl\ncorpora: [x]\n")
    proc = subprocess.run([cluster.ctl, "submit", bad], env=env, capture_output=True, text=True)
    assert proc.returncode == 1 and "corpora: does not apply to task choice" in proc.stderr, (
        proc.returncode, proc.stderr)

    pipeline = os.path.join(cluster.tmp, "pipeline.yaml")
    with open(pipeline, "w") as f:
        f.write(PIPELINE)
    proc = subprocess.run([cluster.ctl, "submit", "--watch", pipeline], env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"submit --watch exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    jobs = json.loads(run([cluster.ctl, "jobs", "--json"], env=env).splitlines()[0])["jobs"]
    by_name = {j["spec"]["name"]: j for j in jobs}

    def results_json(task, stem):
        with open(os.path.join(model, "eval", f"{task}-{stem}.json")) as f:
            return json.load(f)

    arc = by_name["arc"]
    choice = results_json("choice", "choice")
    assert choice["questions"] == 3, choice
    for key in ("acc", "acc_norm", "acc_stderr", "acc_norm_stderr"):
        assert abs(arc["result"][key] - choice[key]) < 1e-12, (key, arc["result"], choice)
    predicted = [d["predicted"] == d["gold"] for d in choice["details"]]
    assert abs(choice["acc"] - sum(predicted) / 3) < 1e-12, choice
    print(f"choice: acc {choice['acc']:.3f}, acc_norm {choice['acc_norm']:.3f}")

    code = results_json("code", "code")
    outcomes = [d["outcomes"][0] for d in code["details"]]
    assert len(outcomes) == 3 and all(o in ("passed", "failed", "timed_out", "memory_exceeded",
                                            "killed") for o in outcomes), outcomes
    assert abs(code["pass@1"] - outcomes.count("passed") / 3) < 1e-12, code
    assert abs(by_name["humaneval"]["result"]["pass@1"] - code["pass@1"]) < 1e-12
    assert outcomes[1] == "failed", outcomes  # An empty body is a syntax error.
    print(f"code: pass@1 {code['pass@1']:.3f} ({outcomes})")

    generate = results_json("generate", "prompts")
    assert [o["prompt"] for o in generate["outputs"]] == [p["prompt"] for p in PROMPTS]
    assert all(0 < o["tokens"] <= 6 for o in generate["outputs"]), generate
    assert by_name["complete"]["result"]["tokens_per_second"] > 0

    shift = results_json("shift", "prompts")
    assert shift["unshifted"] == 1.0 and shift["positions"] > 0, shift
    assert by_name["drift"]["result"]["unshifted"] == 1.0

    with urllib.request.urlopen(f"http://{cluster.metrics_address}/metrics", timeout=10) as r:
        page = r.read().decode()
    for task, metric in (("choice", "acc"), ("code", "pass@1"), ("shift", "unshifted"),
                         ("generate", "tokens_per_second")):
        needle = f'task="{task}",metric="{metric}"}}'
        assert needle in page, f"/metrics has no llamapro_eval_result {needle}:\n{page}"
    print("results agree with the JSON beside the checkpoint and are on /metrics")


def main():
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    return run_with_cluster(sys.argv[1:], "llamapro-eval-jobs-", lambda cluster, tmp: checks(cluster))


if __name__ == "__main__":
    sys.exit(main())
