#!/usr/bin/python3
"""Collects the results of scripts/reproduce.sh and plots them.

Usage: plot_results.py WORK_DIR [--command TEXT] [--setting KEY=VALUE ...]
                       [--update-docs REPO_ROOT]

Reads WORK_DIR/runs/*.info.json (the variants), WORK_DIR/runs/*/metrics.jsonl
(training logs), WORK_DIR/evals/*.json (llamaproctl eval results) and
WORK_DIR/timings.tsv, and writes (each atomically):

  WORK_DIR/results.json     every number below, plus machine, settings, timings
  WORK_DIR/results.md       the table (Markdown) and the timings
  WORK_DIR/plots/loss.png   training loss of every variant against tokens
  WORK_DIR/plots/pareto.png general vs code perplexity, one point per model
  WORK_DIR/plots/ppl_curves.png  held-out general and code perplexity during
                            training (the forgetting monitor)

With --update-docs ROOT the plots are copied to ROOT/docs/results/ and the
table replaces the text between the results-table markers of
ROOT/docs/results.md. Needs matplotlib (Debian: python3-matplotlib).
"""
import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

ORDER = ["interleaved", "top", "bottom", "full", "lora", "interleaved-replay"]
COLOURS = {
    "base": "black",
    "interleaved": "tab:blue",
    "top": "tab:orange",
    "bottom": "tab:green",
    "full": "tab:red",
    "lora": "tab:purple",
    "interleaved-replay": "tab:cyan",
}
BEGIN = "<!-- results-table:begin (scripts/reproduce.sh --update-docs writes this) -->"
END = "<!-- results-table:end -->"
PLOTS = ("loss.png", "pareto.png", "ppl_curves.png")


def atomic_write(path, data, mode="w"):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=directory)
    try:
        with os.fdopen(fd, mode) as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def save_figure(fig, path):
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".png",
                               dir=directory)
    os.close(fd)
    try:
        # No software version or date in the file: a rerun with the same
        # numbers gives the same bytes.
        fig.savefig(tmp, dpi=110, metadata={"Software": None})
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    plt.close(fig)


def load_json(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return default


def read_metrics(path):
    """Training records and evaluation records of a metrics.jsonl; a resumed
    run may repeat steps: the last record of a step wins."""
    steps, evals = {}, {}
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                r = json.loads(line)
                if "eval" in r:
                    evals[r["step"]] = r["eval"]
                elif "loss" in r:
                    steps[r["step"]] = r
    except FileNotFoundError:
        pass
    return [steps[k] for k in sorted(steps)], [(k, evals[k]) for k in sorted(evals)]


def machine(work):
    cpu = "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = {}
    for key, path in (("start", os.path.join(work, "loadavg-start")), ("end", "/proc/loadavg")):
        try:
            with open(path) as f:
                load[key] = " ".join(f.read().split()[:3])
        except OSError:
            pass
    return {"cpu": cpu, "cores": os.cpu_count(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "load_average_1_5_15_min": load}


def collect(work, command, settings):
    evals = os.path.join(work, "evals")
    models = {}
    names = ["base"] + [n for n in ORDER if os.path.exists(os.path.join(work, "runs", n + ".info.json"))]
    for name in names:
        if name == "base":
            info = {"name": "base", "label": "base (4 blocks, general text only)",
                    "status": "trained", "trainable_parameters": None, "note": ""}
        else:
            info = load_json(os.path.join(work, "runs", name + ".info.json"))
        m = dict(info)
        ppl = load_json(os.path.join(evals, name + "-ppl.json"))
        if ppl is not None:
            m["perplexity"] = {r["corpus"]: r["perplexity"] for r in ppl}
        for task in ("general", "code"):
            r = load_json(os.path.join(evals, f"{name}-choice-{task}.json"))
            if r is not None:
                m.setdefault("choice", {})[task] = {
                    k: r[k] for k in ("questions", "acc", "acc_stderr", "acc_norm", "acc_norm_stderr")}
        shift = load_json(os.path.join(evals, name + "-shift.json"))
        if shift is not None:
            m["shift"] = {k: shift[k] for k in ("positions", "unshifted", "marginal", "shifted")}
        records, eval_records = read_metrics(os.path.join(work, "runs", name, "metrics.jsonl"))
        if records:
            tail = records[-max(1, len(records) // 10):]
            m["training"] = {
                "steps": records[-1]["step"],
                "tokens": records[-1]["tokens"],
                "seconds": records[-1]["seconds"],
                "tokens_per_second": records[-1]["tokens"] / max(records[-1]["seconds"], 1e-9),
                "final_loss": sum(r["loss"] for r in tail) / len(tail),
                "final_loss_steps": [tail[0]["step"], tail[-1]["step"]],
            }
        if eval_records:
            m["perplexity_during_training"] = [
                {"step": step, **{c: v["perplexity"] for c, v in e.items()}} for step, e in eval_records]
        models[name] = m
    timings = {}
    try:
        with open(os.path.join(work, "timings.tsv")) as f:
            for line in f:
                if "\t" in line:
                    k, v = line.rstrip("\n").split("\t")
                    timings[k] = int(v)
    except FileNotFoundError:
        pass
    return {"command": command, "machine": machine(work), "settings": settings,
            "timings_seconds": timings, "models": models}


def fmt_params(n):
    if n is None:
        return "-"
    return f"{n / 1e6:.2f}M"


def table(results):
    models = results["models"]
    base = models["base"].get("perplexity", {})
    lines = [
        "| model | trainable params | general ppl | code ppl | general next-line acc_norm "
        "| code next-line acc_norm | shift vs base: unshifted / marginal / shifted | final train loss |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in models.items():
        label = f"**{m['label']}**" if name == "interleaved" else m["label"]
        if m["status"] != "trained":
            lines.append(f"| {label} | {fmt_params(m['trainable_parameters'])} | "
                         f"not run: {m.get('note', m['status'])} | | | | | |")
            continue
        ppl = m.get("perplexity", {})
        cells = [label, fmt_params(m["trainable_parameters"])]
        for corpus in ("general", "code"):
            v = ppl.get(corpus)
            if v is None:
                cells.append("-")
            elif name == "base" or corpus not in base:
                cells.append(f"{v:.2f}")
            else:
                cells.append(f"{v:.2f} ({v / base[corpus] - 1:+.0%})")
        for task in ("general", "code"):
            c = m.get("choice", {}).get(task)
            cells.append("-" if c is None else f"{c['acc_norm']:.3f} ± {c['acc_norm_stderr']:.3f}")
        s = m.get("shift")
        cells.append("-" if s is None else
                     f"{s['unshifted']:.0%} / {s['marginal']:.0%} / {s['shifted']:.0%}")
        t = m.get("training")
        cells.append("-" if t is None or name == "base" else f"{t['final_loss']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def timings_table(results):
    t = results["timings_seconds"]
    rows = ["| stage | time |", "|---|---:|"]
    for k, v in t.items():
        rows.append(f"| {k} | {v // 60}m{v % 60:02d}s |")
    return "\n".join(rows)


def markdown(results):
    m = results["machine"]
    load = " / ".join(m["load_average_1_5_15_min"].get(k, "?") for k in ("start", "end"))
    s = results["settings"]
    return f"""# Results of scripts/reproduce.sh

Command: `{results['command']}`; {m['cpu']}, {m['cores']} cores; {m['date']}
(load average at the start and the end: {load});
Base: {s.get('base_steps', '?')} steps on general text; every variant {s.get('steps', '?')} steps
(x 4096 tokens) on code. Perplexities on 32K held-out tokens of each corpus
(relative change against the base); next-line multiple choice: {choice_count(results)}
questions per domain, 4 choices (chance 0.25); token shift on 16 general prompts
x 32 greedy tokens. Final train loss: mean of the last 10 % of the logged steps.

{table(results)}

Timings:

{timings_table(results)}
"""


def choice_count(results):
    base = results["models"]["base"].get("choice", {})
    counts = sorted({c["questions"] for c in base.values()})
    return "/".join(str(c) for c in counts) or "?"


def smooth(values, window):
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def trained(results):
    return [(n, m) for n, m in results["models"].items() if m["status"] == "trained"]


def plot_loss(results, work, path):
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, m in trained(results):
        if name == "base":
            continue
        records, _ = read_metrics(os.path.join(work, "runs", name, "metrics.jsonl"))
        if not records:
            continue
        x = [r["tokens"] / 1e6 for r in records]
        y = [r["loss"] for r in records]
        ax.plot(x, y, color=COLOURS[name], alpha=0.2, linewidth=0.8)
        label = m["label"] + (" (loss on its mixture)" if name.endswith("replay") else "")
        ax.plot(x, smooth(y, 10), color=COLOURS[name], label=label, linewidth=1.6)
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("training loss (nats/token)")
    ax.set_title("Training loss on the domain data, from the same base model\n"
                 "(faint: logged steps; solid: moving mean of 10)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    lo = min((ln.get_ydata().min() for ln in ax.get_lines()), default=0)
    ax.set_ylim(bottom=max(0, lo - 0.2), top=lo + 3.5)
    fig.tight_layout()
    save_figure(fig, path)


def plot_pareto(results, path):
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    points = [(n, m) for n, m in trained(results) if "perplexity" in m]
    # Points sorted by general perplexity get their short names alternately
    # above and below, so that neighbours' names do not overlap.
    ranked = sorted(points, key=lambda p: p[1]["perplexity"]["general"])
    for i, (name, m) in enumerate(ranked):
        x, y = m["perplexity"]["code"], m["perplexity"]["general"]
        ax.scatter([x], [y], color=COLOURS[name], s=70, zorder=3, label=m["label"],
                   marker="*" if name == "base" else "o")
        ax.annotate(name, (x, y), textcoords="offset points", fontsize=8,
                    xytext=(7, -11 if i % 2 else 5))
    ax.legend(fontsize=8, loc="upper right")
    ax.set_xscale("log")
    ys = [m["perplexity"]["general"] for _, m in points]
    if ys and max(ys) / min(ys) > 3:
        ax.set_yscale("log")
    ax.set_xlabel("code perplexity (lower: learned the domain)")
    ax.set_ylabel("general perplexity (lower: forgot less)")
    ax.set_title("General vs domain perplexity after training on code\n"
                 "(best: bottom left; base: before any code)")
    ax.grid(True, which="both", alpha=0.3)
    xs = [m["perplexity"]["code"] for _, m in points]
    if xs:
        ax.set_xlim(min(xs) / 1.3, max(xs) * 2.5)
    fig.tight_layout()
    save_figure(fig, path)


def plot_curves(results, path):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    base = results["models"]["base"].get("perplexity", {})
    for name, m in trained(results):
        curve = list(m.get("perplexity_during_training", []))
        if name == "base" or not curve:
            continue
        # The final evaluation (eval ppl, same windows) ends the curve when the
        # run's last step was not an evaluation step.
        last = m.get("training", {}).get("steps")
        if last is not None and curve[-1]["step"] != last and "perplexity" in m:
            curve.append({"step": last, **m["perplexity"]})
        steps = [r["step"] for r in curve]
        for ax, corpus in zip(axes, ("general", "code")):
            ax.plot(steps, [r[corpus] for r in curve], marker="o", markersize=3,
                    color=COLOURS[name], label=m["label"])
    for ax, corpus in zip(axes, ("general", "code")):
        if corpus in base:
            ax.axhline(base[corpus], color="black", linestyle="--", linewidth=0.8, label="base")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(f"held-out {corpus} perplexity")
        ax.set_title(f"{corpus} perplexity during training on code")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def update_docs(root, work, table_md):
    docs = os.path.join(root, "docs", "results")
    os.makedirs(docs, exist_ok=True)
    for name in PLOTS:
        src = os.path.join(work, "plots", name)
        fd, tmp = tempfile.mkstemp(prefix="." + name + ".", dir=docs)
        os.close(fd)
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, os.path.join(docs, name))
    print(f"   copied {', '.join(PLOTS)} to {docs}/")
    md = os.path.join(root, "docs", "results.md")
    try:
        with open(md) as f:
            text = f.read()
    except FileNotFoundError:
        print(f"   warning: {md} does not exist; table not written", file=sys.stderr)
        return
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        print(f"   warning: {md} has no results-table markers; table not written", file=sys.stderr)
        return
    text = pattern.sub(lambda _: BEGIN + "\n" + table_md + "\n" + END, text, count=1)
    atomic_write(md, text)
    print(f"   table written to {md} (the text around it is not: check it against the numbers)")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("work")
    p.add_argument("--command", default="scripts/reproduce.sh")
    p.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--update-docs", metavar="ROOT")
    a = p.parse_args()
    settings = {}
    for s in a.setting:
        k, _, v = s.partition("=")
        settings[k] = int(v) if re.fullmatch(r"-?\d+", v) else v
    results = collect(a.work, a.command, settings)
    if "perplexity" not in results["models"]["base"]:
        sys.exit(f"plot_results: error: no evaluation of the base model in {a.work}/evals")
    os.makedirs(os.path.join(a.work, "plots"), exist_ok=True)
    atomic_write(os.path.join(a.work, "results.json"), json.dumps(results, indent=2) + "\n")
    md = markdown(results)
    atomic_write(os.path.join(a.work, "results.md"), md)
    plot_loss(results, a.work, os.path.join(a.work, "plots", "loss.png"))
    plot_pareto(results, os.path.join(a.work, "plots", "pareto.png"))
    plot_curves(results, os.path.join(a.work, "plots", "ppl_curves.png"))
    print(table(results))
    print(f"\n   written: {a.work}/results.json, {a.work}/results.md, "
          f"{a.work}/plots/{{{','.join(PLOTS)}}}")
    if a.update_docs:
        update_docs(a.update_docs, a.work, table(results))


if __name__ == "__main__":
    main()
