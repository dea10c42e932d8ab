#!/usr/bin/env python3
"""Every PromQL expression of deploy/ runs against a real Prometheus that
scrapes a real coordinator and worker while a tiny job trains.

A coordinator and a worker (python_client_test.Cluster) run a pipeline
submitted with `llamaproctl submit`: ingest a general corpus (the docs) and a
code corpus (Python sources), expand a tiny model, post-pretrain it on the
mixture with held-out evaluation of both. Debian's `prometheus` server is
started on loopback with a 1 s scrape and evaluation interval, scraping both
daemons' /metrics and loading deploy/prometheus/rules (their group intervals
dropped, so they run every second). Then, through Prometheus's HTTP API:

  * every recording and alert rule is loaded and evaluated with health "ok"
    (/api/v1/rules), and its expression parses (/api/v1/query);
  * every panel target of every Grafana dashboard in deploy/grafana/dashboards
    (Grafana's variables substituted: $job_id by the training job,
    $__rate_interval by 10s) parses and returns data, and each query
    variable's label_values() finds the job;
  * the forgetting monitor holds together: the general corpus is labelled
    role="general", the code corpus role="domain", and the ratio of each to
    its value at expansion is exported by the recording rule.

Usage: prometheus_test.py COORDINATOR WORKER LLAMAPROCTL
Exits 77 (skipped) when prometheus (Debian package prometheus) is missing.
"""
import glob
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from python_client_test import SKIP, _die_with_parent, run, run_with_cluster  # noqa: E402

import yaml  # noqa: E402  (Debian's python3-yaml)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VOCAB = 512
STEPS = 1_000_000  # hours: cancelled once everything was checked
RATE_INTERVAL = "10s"  # $__rate_interval: 10 scrapes at the test's 1 s interval

PIPELINE = """\
kind: ingest
name: docs
corpus: docs
tokenizer: tok
inputs: [text/docs.txt]
split_lines: true
held_out: 0.1
---
kind: ingest
name: code
corpus: code
tokenizer: tok
inputs: [text/code.txt]
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
name: post-pretrain
depends_on: [docs, code, grow]
model: models/pro
output_dir: runs/prometheus
data: {mixture: {code: 0.7, docs: 0.3}, seq_len: 32}
optimizer: {lr: 1.0e-3}
batch: {sequences: 8, micro_batch: 4}
steps: %d
eval: {corpora: [docs, code], interval: 10, windows: 4}
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    """Debian's prometheus server on loopback, with a throwaway TSDB."""

    def __init__(self, tmp, targets, rule_files):
        self.tmp = tmp
        self.address = f"127.0.0.1:{free_port()}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s",
                       "scrape_timeout": "1s"},
            "rule_files": rule_files,
            "scrape_configs": [
                {"job_name": f"llamapro-{component}",
                 "static_configs": [{"targets": [address], "labels": {"component": component}}]}
                for component, address in targets.items()
            ],
        }
        self.config = os.path.join(tmp, "prometheus.yml")
        with open(self.config, "w") as f:
            yaml.safe_dump(config, f)
        self.log = os.path.join(tmp, "prometheus.log")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                ["prometheus", f"--config.file={self.config}",
                 f"--storage.tsdb.path={os.path.join(tmp, 'tsdb')}",
                 f"--web.listen-address={self.address}", "--log.level=warn"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent)

    def log_tail(self, lines=30):
        with open(self.log, errors="replace") as f:
            return "".join(f.readlines()[-lines:])

    def api(self, path, **params):
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n"
                                 f"{self.log_tail()}")
        url = f"http://{self.address}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.load(response)
        except urllib.error.HTTPError as e:  # 400 for a bad query: the body says why
            return json.load(e)

    def query(self, expr):
        """(status, error, result) of an instant query at now."""
        body = self.api("query", query=expr)
        return body["status"], body.get("error", ""), body.get("data", {}).get("result", [])

    def wait_ready(self, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://{self.address}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"prometheus not ready within {timeout} s:\n{self.log_tail()}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_for(what, check, timeout=60):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last is True:
            return
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout} s; last: {last}")


def rule_files_for_test(tmp):
    """The rule files with their group intervals removed (so the 1 s global
    evaluation interval applies); everything else as shipped."""
    paths, rules = [], []
    for path in sorted(glob.glob(os.path.join(REPO, "deploy", "prometheus", "rules", "*.yml"))):
        with open(path) as f:
            doc = yaml.safe_load(f)
        for group in doc["groups"]:
            group.pop("interval", None)
            rules += group["rules"]
        copy = os.path.join(tmp, os.path.basename(path))
        with open(copy, "w") as f:
            yaml.safe_dump(doc, f)
        paths.append(copy)
    assert rules, "no rules found under deploy/prometheus/rules"
    return paths, rules


def dashboard_queries():
    """(dashboard title, panel title, expr) of every panel target, and
    (dashboard title, variable, label_values query) of every query variable."""
    targets, variables = [], []
    files = sorted(glob.glob(os.path.join(REPO, "deploy", "grafana", "dashboards", "*.json")))
    assert files, "no dashboards under deploy/grafana/dashboards"
    for path in files:
        with open(path) as f:
            board = json.load(f)
        title = board["title"]
        ids = set()
        panels = list(board["panels"])
        while panels:
            panel = panels.pop(0)
            panels += panel.get("panels", [])  # collapsed rows hold theirs
            assert panel["id"] not in ids, f"{title}: duplicate panel id {panel['id']}"
            ids.add(panel["id"])
            if panel["type"] == "row":
                continue
            assert panel.get("targets"), f"{title} / {panel['title']}: no targets"
            assert panel["datasource"]["uid"] == "${datasource}", (
                f"{title} / {panel['title']}: datasource not the dashboard's variable")
            for t in panel["targets"]:
                targets.append((title, panel["title"], t["expr"]))
        for var in board["templating"]["list"]:
            if var["type"] == "query":
                variables.append((title, var["name"], var["query"]["query"]))
    return targets, variables


def substitute(expr, job_id):
    expr = expr.replace("$__rate_interval", RATE_INTERVAL).replace("$job_id", job_id)
    leftover = re.findall(r"\$\{?\w+", expr)
    assert not leftover, f"unsubstituted Grafana variables {leftover} in {expr}"
    return expr


def repo_python_files():
    """The repository's own .py files: symlinks are not followed (bazel-*
    output links lead into /usr), build and output folders are skipped."""
    found = []
    for root, dirs, files in os.walk(REPO, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not (d.startswith(("build", "bazel-", "."))
                                                  or d == "out"))
        found += [os.path.join(root, f) for f in files
                  if f.endswith(".py") and not os.path.islink(os.path.join(root, f))]
    return sorted(found)


def write_corpora(data):
    os.makedirs(os.path.join(data, "text"))
    with open(os.path.join(data, "text", "docs.txt"), "w") as out:
        for path in sorted(glob.glob(os.path.join(REPO, "docs", "*.md"))):
            with open(path, errors="replace") as f:
                out.write(f.read())
    with open(os.path.join(data, "text", "code.txt"), "w") as out:
        for path in repo_python_files():
            with open(path, errors="replace") as f:
                out.write(f.read())
    with open(os.path.join(data, "text", "all.txt"), "w") as out:
        for name in ("docs.txt", "code.txt"):
            with open(os.path.join(data, "text", name)) as f:
                out.write(f.read())


def checks(cluster, tmp):
    env = dict(os.environ, LLAMAPRO_COORDINATOR=cluster.address,
               LLAMAPRO_AUTH_TOKEN_FILE=cluster.token_file)
    data = cluster.data_dir
    write_corpora(data)
    run([cluster.ctl, "tokenizer", "train", "--input", os.path.join(data, "text", "all.txt"),
         "--vocab-size", str(VOCAB), "--out", os.path.join(data, "tok")])
    cluster.synth_base(vocab=VOCAB)

    rule_paths, rules = rule_files_for_test(tmp)
    prometheus = Prometheus(tmp, {"coordinator": cluster.metrics_address,
                                  "worker": cluster.worker_metrics_address}, rule_paths)
    try:
        prometheus.wait_ready()
        pipeline = os.path.join(tmp, "pipeline.yaml")
        with open(pipeline, "w") as f:
            f.write(PIPELINE % STEPS)
        ids = run([cluster.ctl, "submit", pipeline], env=env).split()
        assert len(ids) == 4, ids
        job_id = ids[3]

        # Both targets up, the job running with both perplexities, its MFU
        # and the recording rule's ratio scraped, and enough samples for the
        # rate windows.
        def ready():
            cluster.check_alive()
            _, _, failed = prometheus.query('llamapro_jobs{state="failed"} > 0')
            if failed:
                raise AssertionError(f"a job failed: {failed}")
            for expr in ('count(up{component=~"coordinator|worker"} == 1) == 2',
                         f'llamapro_job_perplexity{{job_id="{job_id}",role="general"}}',
                         f'llamapro_job_perplexity{{job_id="{job_id}",role="domain"}}',
                         f'llamapro_job_mfu{{job_id="{job_id}"}}',
                         f'llamapro:job_perplexity:ratio_to_initial{{job_id="{job_id}"}}',
                         f'count_over_time(llamapro_job_step{{job_id="{job_id}"}}[{RATE_INTERVAL}])'
                         ' >= 8'):
                status, error, result = prometheus.query(expr)
                if status != "success" or not result:
                    return f"{expr}: {status} {error} {result}"
            return True

        wait_for(f"job {job_id} scraped with perplexities, MFU and {RATE_INTERVAL} of samples",
                 ready, timeout=120)

        # The forgetting monitor's labels: docs is general (the mixture
        # weights code most), code is the domain.
        for corpus, role in (("docs", "general"), ("code", "domain")):
            _, _, result = prometheus.query(
                f'llamapro_job_initial_perplexity{{job_id="{job_id}",corpus="{corpus}"}}')
            assert len(result) == 1 and result[0]["metric"]["role"] == role, (corpus, result)
        _, _, mfu = prometheus.query(f'llamapro_job_mfu{{job_id="{job_id}"}}')
        assert 0 < float(mfu[0]["value"][1]) < 1.5, f"MFU {mfu}"
        print(f"job {job_id}: MFU {float(mfu[0]['value'][1]):.3f}; docs is general, code domain")

        # Every rule loaded and evaluated without error; every expression
        # parses as a query too.
        def rules_evaluated():
            groups = prometheus.api("rules")["data"]["groups"]
            loaded = [r for g in groups for r in g["rules"]]
            if len(loaded) != len(rules):
                return f"{len(loaded)} rules loaded, {len(rules)} in the files"
            bad = [(r["name"], r["health"], r.get("lastError", "")) for r in loaded
                   if r["health"] != "ok"]
            return True if not bad else f"not ok: {bad}"

        wait_for("every rule evaluated with health ok", rules_evaluated, timeout=30)
        for rule in rules:
            name = rule.get("record") or rule.get("alert")
            status, error, _ = prometheus.query(rule["expr"])
            assert status == "success", f"rule {name}: {error}"
        print(f"{len(rules)} rules: loaded, evaluated (health ok), each expression parses")

        # Every dashboard target returns data; every query variable finds the job.
        targets, variables = dashboard_queries()
        empty = []
        for board, panel, expr in targets:
            query = substitute(expr, job_id)
            status, error, result = prometheus.query(query)
            assert status == "success", f"{board} / {panel}: {query}: {error}"
            if not result:
                empty.append(f"{board} / {panel}: {query}")
        assert not empty, "panels without data:\n  " + "\n  ".join(empty)
        for board, name, query in variables:
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
            assert m, f"{board}: variable {name}: unsupported query {query}"
            values = prometheus.api(f"label/{m.group(2)}/values",
                                    **{"match[]": m.group(1)})["data"]
            assert job_id in values, f"{board}: variable {name} ({query}) = {values}"
        print(f"{len(targets)} dashboard targets return data; {len(variables)} variables "
              "find the job")
    finally:
        prometheus.stop()
    run([cluster.ctl, "cancel", job_id], env=env)


def main():
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    if shutil.which("prometheus") is None:
        print("skipping: prometheus not on PATH; install the Debian package prometheus "
              "(scripts/setup.sh)")
        return SKIP
    return run_with_cluster(sys.argv[1:], "llamapro-prometheus-", checks)


if __name__ == "__main__":
    sys.exit(main())
