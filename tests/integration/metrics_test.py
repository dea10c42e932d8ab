#!/usr/bin/env python3
"""The coordinator's and the worker's /metrics pass `promtool check metrics`.

A real coordinator and worker (python_client_test.Cluster) run a small
pipeline submitted with `llamaproctl submit`: ingest a corpus, expand a tiny
model, train it with held-out evaluation. Both /metrics pages are fetched
over HTTP while the training job runs (so the per-job families, labelled by
job_id, name, kind, corpus and role, have samples), and again after it was cancelled
(`llamaproctl cancel`) and every job ended. Each page is piped into
`promtool check metrics`, which must exit 0 and print nothing (it prints one
line per problem: a counter without `_total`, a non-base unit, missing help,
...), and the expected metric families must be present with sensible values.

Usage: metrics_test.py COORDINATOR WORKER LLAMAPROCTL
Exits 77 (skipped) when promtool (Debian package prometheus) is missing.
"""
import glob
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from python_client_test import SKIP, run, run_with_cluster  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VOCAB = 512
STEPS = 1_000_000  # hours: the training job is cancelled once /metrics shows it
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def scrape(address):
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        assert response.status == 200, response.status
        return response.read().decode()


def parse(text):
    """{(name, frozenset(labels.items())): value} of every sample."""
    samples = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"unparseable sample line: {line!r}"
        labels = frozenset(LABEL.findall(m.group(2) or ""))
        samples[(m.group(1), labels)] = float(m.group(3))
    return samples


def values(samples, metric, **labels):
    """Values of the `metric` samples whose labels include `labels`."""
    want = set(labels.items())
    return [v for (n, ls), v in samples.items() if n == metric and want <= set(ls)]


def lint(text, what):
    proc = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                          text=True)
    problems = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0 or problems:
        raise AssertionError(f"promtool check metrics on {what} exited {proc.returncode}:\n"
                             f"{problems}\n--- the page ---\n{text}")
    print(f"promtool check metrics: {what} clean ({len(text.splitlines())} lines)")


def expect(samples, what, metric, predicate, description, **labels):
    got = values(samples, metric, **labels)
    shown = metric + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
                    if labels else "")
    assert got, f"{what}: no sample {shown}"
    assert all(predicate(v) for v in got), f"{what}: {shown} = {got}, expected {description}"


PIPELINE = """\
kind: ingest
name: docs
corpus: docs
tokenizer: tok
inputs: [text/docs.txt]
split_lines: true
held_out: 0.1
---
kind: expand
name: grow
model: models/base
out: models/pro
add_blocks: 2
---
kind: pretrain
name: train
depends_on: [docs, grow]
model: models/base
output_dir: runs/metrics
trainable: all
data: {mixture: {docs: 1.0}, seq_len: 32}
optimizer: {lr: 1.0e-3}
batch: {sequences: 8, micro_batch: 4}
steps: %d
eval: {corpora: [docs], interval: 20, windows: 4}
"""


def wait_for(what, fetch, ready, timeout=30):
    """Polls fetch() until ready(result); returns the result."""
    deadline = time.monotonic() + timeout
    while True:
        result = fetch()
        if ready(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s; last:\n{result}")
        time.sleep(0.1)


def metrics_checks(cluster):
    env = dict(os.environ, LLAMAPRO_COORDINATOR=cluster.address,
               LLAMAPRO_AUTH_TOKEN_FILE=cluster.token_file)
    data = cluster.data_dir
    os.makedirs(os.path.join(data, "text"))
    with open(os.path.join(data, "text", "docs.txt"), "w") as out:
        for path in sorted(glob.glob(os.path.join(REPO, "docs", "*.md"))):
            with open(path, errors="replace") as f:
                out.write(f.read())
    run([cluster.ctl, "tokenizer", "train", "--input", os.path.join(data, "text", "docs.txt"),
         "--vocab-size", str(VOCAB), "--out", os.path.join(data, "tok")])
    cluster.synth_base(vocab=VOCAB)
    pipeline = os.path.join(cluster.tmp, "pipeline.yaml")
    with open(pipeline, "w") as f:
        f.write(PIPELINE % STEPS)
    ids = run([cluster.ctl, "submit", pipeline], env=env).split()
    assert len(ids) == 3, ids
    train_id = ids[2]

    # While the training job runs (it would run for hours; it is cancelled
    # below): its per-job families have samples.
    def running(page):
        cluster.check_alive()
        samples = parse(page)
        if values(samples, "llamapro_jobs", state="failed") != [0.0]:
            raise AssertionError(f"a job failed:\n{page}")
        return values(samples, "llamapro_job_perplexity", job_id=train_id, corpus="docs")

    page = wait_for(f"job {train_id} running with a perplexity",
                    lambda: scrape(cluster.metrics_address), running, timeout=60)
    worker_page = scrape(cluster.worker_metrics_address)
    lint(page, "coordinator /metrics, job running")
    lint(worker_page, "worker /metrics, job running")
    what = "coordinator /metrics, job running"
    samples = parse(page)
    expect(samples, what, "llamapro_jobs", lambda v: v == 1, "1", state="running")
    expect(samples, what, "llamapro_jobs", lambda v: v == 2, "2", state="succeeded")
    expect(samples, what, "llamapro_job_step", lambda v: v >= 0, ">= 0", job_id=train_id,
           name="train", kind="pretrain")
    expect(samples, what, "llamapro_job_total_steps", lambda v: v == STEPS, str(STEPS),
           job_id=train_id)
    expect(samples, what, "llamapro_job_loss", lambda v: 0 <= v < 20, "in [0, 20)",
           job_id=train_id)
    expect(samples, what, "llamapro_job_tokens_total", lambda v: v >= 0, ">= 0", job_id=train_id)
    expect(samples, what, "llamapro_job_perplexity", lambda v: 1 < v < 10 * VOCAB,
           "a perplexity", job_id=train_id, corpus="docs")
    expect(samples, what, "llamapro_workers", lambda v: v == 1, "1", state="busy")
    expect(parse(worker_page), "worker /metrics, job running", "llamapro_worker_busy",
           lambda v: v == 1, "1")
    print(f"job {train_id} running: step {values(samples, 'llamapro_job_step')[0]:.0f}, "
          f"perplexity {values(samples, 'llamapro_job_perplexity')[0]:.1f}; cancelling it")

    run([cluster.ctl, "cancel", train_id], env=env)
    proc = subprocess.run([cluster.ctl, "watch", train_id], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 3, (f"watch {train_id}: exit {proc.returncode}, not 3 "
                                  f"(cancelled)\n{proc.stdout}{proc.stderr}")
    # The worker counts the task when it has stopped it.
    worker_page = wait_for(
        "the worker counting the cancelled task", lambda: scrape(cluster.worker_metrics_address),
        lambda p: values(parse(p), "llamapro_worker_tasks_total", outcome="cancelled") == [1.0])
    page = wait_for("the worker idle again", lambda: scrape(cluster.metrics_address),
                    lambda p: values(parse(p), "llamapro_workers", state="idle") == [1.0])

    # After the jobs ended: 2 succeeded (ingest in the coordinator, expand on
    # the worker), 1 cancelled (the training job on the worker).
    lint(page, "coordinator /metrics, jobs done")
    lint(worker_page, "worker /metrics, jobs done")
    what = "coordinator /metrics, jobs done"
    samples = parse(page)
    expect(samples, what, "llamapro_jobs", lambda v: v == 2, "2", state="succeeded")
    expect(samples, what, "llamapro_jobs", lambda v: v == 1, "1", state="cancelled")
    for state in ("pending", "running", "failed"):
        expect(samples, what, "llamapro_jobs", lambda v: v == 0, "0", state=state)
    for state in ("busy", "lost"):
        expect(samples, what, "llamapro_workers", lambda v: v == 0, "0", state=state)
    expect(samples, what, "llamapro_job_restarts_total", lambda v: v == 0, "0")
    assert not values(samples, "llamapro_job_step"), f"{what}: a job step of no running job"
    expect(samples, what, "llamapro_grpc_requests_total", lambda v: v == 3, "3",
           method="SubmitJob", code="OK")
    expect(samples, what, "llamapro_grpc_requests_total", lambda v: v == 1, "1",
           method="CancelJob", code="OK")
    expect(samples, what, "llamapro_grpc_requests_total", lambda v: v >= 1, ">= 1",
           method="Register", code="OK")
    expect(samples, what, "llamapro_grpc_requests_total", lambda v: v >= 1, ">= 1",
           method="Heartbeat", code="OK")
    expect(samples, what, "llamapro_grpc_request_duration_seconds_count", lambda v: v == 3,
           "3", method="SubmitJob")
    expect(samples, what, "llamapro_grpc_request_duration_seconds_bucket", lambda v: v == 3,
           "3", method="SubmitJob", le="+Inf")

    what = "worker /metrics, jobs done"
    samples = parse(worker_page)
    expect(samples, what, "llamapro_worker_info", lambda v: v == 1, "1", name="w0",
           device="cpu")
    expect(samples, what, "llamapro_worker_busy", lambda v: v == 0, "0")
    expect(samples, what, "llamapro_worker_tasks_total", lambda v: v == 1, "1",
           outcome="succeeded")
    expect(samples, what, "llamapro_worker_tasks_total", lambda v: v == 0, "0",
           outcome="failed")
    expect(samples, what, "llamapro_worker_tokens_total", lambda v: v > 0 and v % (8 * 32) == 0,
           "a positive multiple of 8 x 32")
    expect(samples, what, "llamapro_worker_step_seconds", lambda v: 0 < v < 10, "in (0, 10)")
    expect(samples, what, "llamapro_worker_resident_memory_bytes", lambda v: v > 1e6, "> 1 MB")
    print("expected families present on both pages")


def main():
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    if shutil.which("promtool") is None:
        print("skipping: promtool not on PATH; install the Debian package prometheus "
              "(scripts/setup.sh)")
        return SKIP
    coordinator, worker, llamaproctl = sys.argv[1:]
    return run_with_cluster((coordinator, worker, llamaproctl), "llamapro-metrics-",
                            lambda cluster, tmp: metrics_checks(cluster))


if __name__ == "__main__":
    sys.exit(main())
