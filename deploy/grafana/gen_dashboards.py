#!/usr/bin/env python3
"""Writes the Grafana dashboards of llamapro (dashboards/*.json) from the
panel lists below, so every panel has the same datasource wiring and layout.

Usage: gen_dashboards.py [--check]
  --check: write nothing; exit 1 when a dashboard file is stale.

The PromQL of every panel is evaluated against a live coordinator and worker
by tests/integration/prometheus_test.py (each must return data).
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RUNNING_JOB_LABELS = "{{job_id}} {{name}}"


def target(expr, legend="", ref="A", instant=False):
    t = {"datasource": DATASOURCE, "refId": ref, "expr": expr, "legendFormat": legend,
         "range": not instant, "instant": instant}
    return t


def panel(title, kind, targets, w=12, h=8, unit=None, description="", decimals=None,
          thresholds=None, options=None, overrides=None, min_value=None):
    defaults = {}
    if unit:
        defaults["unit"] = unit
    if decimals is not None:
        defaults["decimals"] = decimals
    if min_value is not None:
        defaults["min"] = min_value
    if thresholds:
        defaults["thresholds"] = {"mode": "absolute", "steps": thresholds}
    if kind == "timeseries":
        defaults["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10,
                              "showPoints": "never", "spanNulls": False}
    p = {"type": kind, "title": title, "description": description, "datasource": DATASOURCE,
         "gridPos": {"w": w, "h": h},
         "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
         "options": options or {}, "targets": [
             dict(t, refId=chr(ord("A") + i)) for i, t in enumerate(targets)]}
    if kind == "timeseries":
        p["options"] = dict({"legend": {"displayMode": "list", "placement": "bottom",
                                        "showLegend": True},
                             "tooltip": {"mode": "multi", "sort": "none"}}, **(options or {}))
    return p


def row(title):
    return {"type": "row", "title": title, "collapsed": False, "gridPos": {"w": 24, "h": 1},
            "panels": []}


def layout(panels):
    """Assigns ids and x/y positions: panels flow left to right in rows of 24."""
    x = y = row_h = 0
    for i, p in enumerate(panels, start=1):
        p["id"] = i
        w, h = p["gridPos"]["w"], p["gridPos"]["h"]
        if p["type"] == "row" or x + w > 24:
            x, y, row_h = 0, y + row_h, 0
        p["gridPos"].update({"x": x, "y": y})
        x += w
        row_h = max(row_h, h)
        if p["type"] == "row":
            x, y, row_h = 0, y + h, 0
    return panels


def dashboard(uid, title, description, panels, variables=()):
    datasource_var = {"name": "datasource", "label": "Data source", "type": "datasource",
                      "query": "prometheus", "current": {}, "hide": 0, "refresh": 1,
                      "options": [], "includeAll": False, "multi": False}
    return {
        "uid": uid, "title": title, "description": description,
        "tags": ["llamapro"], "timezone": "browser", "editable": True,
        "graphTooltip": 1, "refresh": "30s", "schemaVersion": 39, "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [datasource_var, *variables]},
        "annotations": {"list": []},
        "links": [{"title": "llamapro dashboards", "type": "dashboards", "tags": ["llamapro"],
                   "asDropdown": True, "includeVars": False, "keepTime": True}],
        "panels": layout(panels),
    }


def query_variable(name, label, metric, description):
    query = f"label_values({metric}, {name})"
    return {"name": name, "label": label, "description": description, "type": "query",
            "datasource": DATASOURCE, "query": {"query": query, "refId": "vars"},
            "definition": query, "refresh": 2, "sort": 1, "current": {}, "hide": 0,
            "includeAll": False, "multi": False, "options": [], "regex": ""}


def overview():
    return dashboard(
        "llamapro-overview", "llamapro / Overview",
        "Jobs, workers and the coordinator's gRPC traffic.",
        [
            row("Jobs and workers"),
            panel("Jobs by state", "stat", [target("llamapro_jobs", "{{state}}", instant=True)],
                  w=8, h=5, decimals=0,
                  options={"reduceOptions": {"calcs": ["lastNotNull"], "values": False},
                           "textMode": "value_and_name", "colorMode": "none"}),
            panel("Workers by state", "stat",
                  [target("llamapro_workers", "{{state}}", instant=True)], w=8, h=5, decimals=0,
                  options={"reduceOptions": {"calcs": ["lastNotNull"], "values": False},
                           "textMode": "value_and_name", "colorMode": "none"}),
            panel("Attempts restarted (all jobs)", "stat",
                  [target("llamapro_job_restarts_total", "restarts", instant=True)], w=8, h=5,
                  decimals=0, description="Attempts restarted after a lost worker or a "
                  "transient rank failure, since the coordinator's database was created.",
                  options={"reduceOptions": {"calcs": ["lastNotNull"], "values": False},
                           "colorMode": "value"},
                  thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 1}]),
            panel("Running jobs: progress", "bargauge",
                  [target("llamapro:job_progress:ratio", RUNNING_JOB_LABELS, instant=True)],
                  unit="percentunit", min_value=0,
                  options={"orientation": "horizontal", "displayMode": "basic",
                           "reduceOptions": {"calcs": ["lastNotNull"], "values": False}}),
            panel("Running jobs: tokens/s", "timeseries",
                  [target("llamapro_job_tokens_per_second", RUNNING_JOB_LABELS)],
                  unit="short", min_value=0),
            panel("Jobs by state over time", "timeseries",
                  [target("llamapro_jobs", "{{state}}")], decimals=0, min_value=0),
            panel("Workers: busy", "timeseries",
                  [target("llamapro_worker_busy", "{{instance}}")], min_value=0, decimals=0,
                  description="From each worker's own /metrics: 1 while it runs a task."),
            panel("Workers: resident memory", "timeseries",
                  [target("llamapro_worker_resident_memory_bytes", "{{instance}}")],
                  unit="bytes", min_value=0),
            panel("Workers: peak FLOP/s (MFU denominator)", "timeseries",
                  [target("llamapro_worker_peak_flops", "{{worker}}")], unit="flops",
                  min_value=0),
            row("Coordinator gRPC"),
            panel("Requests by method", "timeseries",
                  [target("sum by (method) (rate(llamapro_grpc_requests_total[$__rate_interval]))",
                          "{{method}}")], unit="reqps", min_value=0),
            panel("Requests by status code", "timeseries",
                  [target("sum by (code) (rate(llamapro_grpc_requests_total[$__rate_interval]))",
                          "{{code}}")], unit="reqps", min_value=0,
                  description="Anything but OK: UNAUTHENTICATED is a wrong token, "
                  "INVALID_ARGUMENT a rejected spec, UNAVAILABLE the coordinator stopping."),
            panel("Latency p99 by method", "timeseries",
                  [target("histogram_quantile(0.99, sum by (method, le) "
                          "(rate(llamapro_grpc_request_duration_seconds_bucket[$__rate_interval])))",
                          "{{method}}")], unit="s", min_value=0,
                  description="Streams (WatchJob, ReadSamples) count until they end."),
            panel("Latency p50 by method", "timeseries",
                  [target("histogram_quantile(0.5, sum by (method, le) "
                          "(rate(llamapro_grpc_request_duration_seconds_bucket[$__rate_interval])))",
                          "{{method}}")], unit="s", min_value=0),
            panel("Scrape targets up", "timeseries",
                  [target("up{component=~\"coordinator|worker\"}", "{{component}} {{instance}}")],
                  w=24, h=6, decimals=0, min_value=0),
        ])


def job():
    sel = '{job_id="$job_id"}'
    return dashboard(
        "llamapro-job", "llamapro / Job",
        "One running job: training curves, throughput, MFU and the forgetting monitor "
        "(general vs domain perplexity).",
        [
            row("Training"),
            panel("Progress", "gauge", [target(f"llamapro:job_progress:ratio{sel}", "",
                                               instant=True)],
                  w=6, h=6, unit="percentunit", min_value=0,
                  options={"reduceOptions": {"calcs": ["lastNotNull"], "values": False}}),
            panel("Step", "stat", [target(f"llamapro_job_step{sel}", "step", instant=True),
                                   target(f"llamapro_job_total_steps{sel}", "of",
                                          instant=True)],
                  w=6, h=6, decimals=0,
                  options={"reduceOptions": {"calcs": ["lastNotNull"], "values": False},
                           "textMode": "value_and_name", "colorMode": "none"}),
            panel("Restarts", "stat", [target(f"llamapro_job_attempt_restarts{sel}", "restarts",
                                              instant=True)],
                  w=6, h=6, decimals=0,
                  options={"reduceOptions": {"calcs": ["lastNotNull"], "values": False},
                           "colorMode": "value"},
                  thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 1},
                              {"color": "red", "value": 3}]),
            panel("Tokens trained", "stat", [target(f"llamapro_job_tokens_total{sel}", "tokens",
                                                    instant=True)],
                  w=6, h=6, unit="short",
                  options={"reduceOptions": {"calcs": ["lastNotNull"], "values": False},
                           "colorMode": "none"}),
            panel("Loss (nats/token)", "timeseries",
                  [target(f"llamapro_job_loss{sel}", "loss")], w=8),
            panel("Learning rate", "timeseries",
                  [target(f"llamapro_job_learning_rate{sel}", "lr")], w=8, unit="sci"),
            panel("Gradient norm (before clipping)", "timeseries",
                  [target(f"llamapro_job_grad_norm{sel}", "grad norm")], w=8),
            row("Throughput"),
            panel("Tokens/s", "timeseries",
                  [target(f"llamapro_job_tokens_per_second{sel}", "last step"),
                   target(f"llamapro:job_tokens_per_second:avg5m{sel}", "5 min average")],
                  w=8, unit="short", min_value=0),
            panel("MFU", "timeseries", [target(f"llamapro_job_mfu{sel}", "MFU")], w=8,
                  unit="percentunit", min_value=0,
                  description="Model FLOP/s over the summed peak FLOP/s of the job's workers "
                  "(--peak-flops; on CPU, measured at worker start)."),
            panel("Model FLOP/s", "timeseries",
                  [target(f"llamapro_job_model_flops_per_second{sel}", "FLOP/s")], w=8,
                  unit="flops", min_value=0),
            panel("Worker step time", "timeseries",
                  [target("llamapro_worker_step_seconds and on (instance) "
                          "(llamapro_worker_busy == 1)", "{{instance}}")],
                  unit="s", min_value=0,
                  description="Busy workers' own step time (all running jobs)."),
            panel("Worker resident memory", "timeseries",
                  [target("llamapro_worker_resident_memory_bytes and on (instance) "
                          "(llamapro_worker_busy == 1)", "{{instance}}")],
                  unit="bytes", min_value=0),
            row("Forgetting monitor"),
            panel("Held-out perplexity: general vs domain", "timeseries",
                  [target(f"llamapro_job_perplexity{sel}", "{{corpus}} ({{role}})"),
                   target(f"llamapro_job_initial_perplexity{sel}",
                          "{{corpus}} ({{role}}) at expansion")],
                  w=16, h=9, min_value=0,
                  description="Latest held-out perplexity by corpus, and (dashed) its value at "
                  "the job's first evaluation: the model as expanded, before training. The "
                  "domain's should fall; the general ones should hold.",
                  overrides=[{"matcher": {"id": "byFrameRefID", "options": "B"},
                              "properties": [{"id": "custom.lineStyle",
                                              "value": {"fill": "dash", "dash": [10, 10]}}]}]),
            panel("General perplexity vs at expansion", "timeseries",
                  [target(f"llamapro:job_perplexity:ratio_to_initial{sel}",
                          "{{corpus}} ({{role}})")],
                  w=8, h=9, unit="percentunit",
                  description="Ratio to the value at expansion; the alert "
                  "LlamaproGeneralPerplexityDrift fires above 1.05 for general corpora.",
                  thresholds=[{"color": "green", "value": None},
                              {"color": "orange", "value": 1.05},
                              {"color": "red", "value": 1.15}],
                  options={"thresholdsStyle": {"mode": "line"}}),
        ],
        variables=[query_variable("job_id", "Job", "llamapro_job_step",
                                  "A running job (per-job series exist only while it runs).")])


def render():
    return {"llamapro-overview.json": overview(), "llamapro-job.json": job()}


def main():
    check = sys.argv[1:] == ["--check"]
    stale = []
    for name, board in render().items():
        path = os.path.join(HERE, "dashboards", name)
        text = json.dumps(board, indent=2) + "\n"
        if check:
            try:
                with open(path, encoding="utf-8") as f:
                    if f.read() != text:
                        stale.append(path)
            except FileNotFoundError:
                stale.append(path)
            continue
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
        print(f"wrote {path}")
    if stale:
        sys.exit(f"stale: {', '.join(stale)}: run {os.path.relpath(__file__)} to regenerate")
    if check:
        print("dashboards are up to date")


if __name__ == "__main__":
    main()
