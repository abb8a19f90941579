"""Tables of a method benchmark: per method, mean +- std over seeds of the COCO metrics, the AP
gain over the plain student paired by seed, seconds per iteration and its ratio to the plain
student's; as Markdown, CSV and a PNG plot (used by ``tools/benchmark_methods.py``).

A run record is the dict written by :func:`kd_det2.engine.runs.train_and_record` ("metrics",
"step_seconds", and the benchmark's "distillers").
"""

import csv
import math
import os
import statistics
from typing import Dict, List, Sequence, Tuple

from .runs import METRICS

__all__ = ["mean_std", "format_mean_std", "plot_ap", "render_markdown", "summarize", "write_csv"]


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (NaN when undefined; NaN values propagate)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = math.fsum(values) / n
    if n == 1:
        return mean, math.nan
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def format_mean_std(values: Sequence[float], signed: bool = False) -> str:
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "—" if not values else "nan"
    text = f"{mean:+.2f}" if signed else f"{mean:.2f}"
    return text if math.isnan(std) else f"{text} ± {std:.2f}"


def summarize(
    methods: Sequence, seeds: Sequence[int], records: Dict[Tuple[str, int], dict], teacher: dict
) -> Tuple[List[dict], List[str]]:
    """Per method (the teacher first) the per-seed values of every column, and notes.

    Args:
        methods: objects with ``label`` and ``spec``, the plain student first.
        seeds: the planned seeds.
        records: (label, seed) -> finished run record.
        teacher: the teacher's record (metrics, optionally step_seconds).

    Returns:
        rows with "role", "method", "spec", "distillers", "seeds" (finished), "metrics" (name ->
        per-seed values), "gain" (AP - plain AP, per seed present in both), "s_per_iter"
        (per seed), "cost" (ratio of mean s/iter to the plain student's); and notes.
    """
    plain = methods[0].label

    def values(label, get):
        return [get(records[(label, s)]) for s in seeds if (label, s) in records]

    plain_ap = {s: records[(plain, s)]["metrics"]["AP"] for s in seeds if (plain, s) in records}
    plain_speed = values(plain, lambda r: r["step_seconds"]["mean"])
    rows = []
    t_speed = teacher.get("step_seconds", {}).get("mean")
    rows.append({
        "role": "teacher", "method": "teacher", "spec": "", "distillers": "", "seeds": [],
        "metrics": {k: [teacher["metrics"][k]] for k in METRICS}, "gain": [],
        "s_per_iter": [t_speed] if t_speed is not None else [], "cost": math.nan,
    })  # fmt: skip
    for m in methods:
        done = [s for s in seeds if (m.label, s) in records]
        speed = values(m.label, lambda r: r["step_seconds"]["mean"])
        cost = math.nan
        if speed and plain_speed:
            cost = statistics.fmean(speed) / statistics.fmean(plain_speed)
        distillers = values(m.label, lambda r: "+".join(r.get("distillers", [])))
        rows.append({
            "role": "plain" if m.label == plain else "method",
            "method": m.label, "spec": m.spec, "distillers": distillers[0] if distillers else "",
            "seeds": done,
            "metrics": {k: values(m.label, lambda r, k=k: r["metrics"][k]) for k in METRICS},
            "gain": [] if m.label == plain else [
                records[(m.label, s)]["metrics"]["AP"] - plain_ap[s] for s in done if s in plain_ap
            ],
            "s_per_iter": speed, "cost": cost,
        })  # fmt: skip
    notes = []
    if plain_ap:
        plain_mean = statistics.fmean(plain_ap.values())
        t_ap = teacher["metrics"]["AP"]
        if not t_ap > plain_mean:
            rows[0]["method"] = "teacher (!)"
            notes.append(
                f"(!) WARNING: the teacher's AP ({t_ap:.2f}) is not above the plain student's "
                f"mean AP ({plain_mean:.2f}): train the teacher longer or make it larger, or the "
                "gains below measure regularisation, not distillation."
            )
    missing = [f"{m.label} seed {s}" for m in methods for s in seeds if (m.label, s) not in records]
    if missing:
        notes.append(f"Missing or failed runs: {', '.join(missing)}.")
    return rows, notes


def render_markdown(rows, notes, seeds, test: str, devices: Sequence[str], skip: str) -> str:
    """The Markdown table with its legend; ``skip`` says which first iterations s/iter leaves
    out (e.g. "5")."""
    plain = next(r["method"] for r in rows if r["role"] == "plain")
    table = [
        "| method | distillers | seeds | "
        + " | ".join(METRICS)
        + " | ΔAP vs plain | s/iter | × plain |",
        "|---|---|---|" + "---:|" * (len(METRICS) + 3),
    ]
    for r in rows:
        n = f"{len(r['seeds'])}/{len(seeds)}" if r["role"] != "teacher" else "—"
        speed = r["s_per_iter"]
        cells = [r["method"].replace("|", "\\|"), r["distillers"] or "—", n]
        cells += [format_mean_std(r["metrics"][k]) for k in METRICS]
        cells.append(format_mean_std(r["gain"], signed=True) if r["role"] == "method" else "—")
        cells.append(f"{statistics.fmean(speed):.3f}" if speed else "—")
        cells.append("—" if math.isnan(r["cost"]) else f"{r['cost']:.2f}×")
        table.append("| " + " | ".join(cells) + " |")
    text = [
        f"COCO bbox metrics (%) on {test}, seeds {', '.join(map(str, seeds))}: mean ± sample std "
        f"over seeds. ΔAP vs plain: AP − the plain student's ('{plain}') AP of the same seed.",
        "",
        *table,
        "",
        f"s/iter: mean seconds per training iteration (batch loading, forward, backward, "
        f"optimizer step; first {skip} iterations left out), measured on this machine "
        f"({'; '.join(devices) or 'unknown device'}) and noisy: compare within this table only. "
        "× plain: the method's s/iter over the plain student's (the teacher's s/iter is its own "
        "training).",
    ]
    return "\n".join((text + ["", *notes]) if notes else text) + "\n"


def write_csv(path: str, rows, seeds) -> None:
    head = ["role", "method", "spec", "distillers", "n_seeds", "seeds"]
    for k in METRICS + ("dAP",):
        head += [f"{k}_mean", f"{k}_std"]
    head += ["s_per_iter", "cost_vs_plain", "AP_per_seed"]
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(head)
        for r in rows:
            line = [r["role"], r["method"], r["spec"], r["distillers"], len(r["seeds"])]
            line.append(";".join(map(str, r["seeds"])))
            for k in METRICS:
                line += [f"{v:.4f}" for v in mean_std(r["metrics"][k])]
            line += [f"{v:.4f}" for v in mean_std(r["gain"])]
            speed = r["s_per_iter"]
            line += [f"{statistics.fmean(speed):.5f}" if speed else "nan", f"{r['cost']:.4f}"]
            ap = r["metrics"]["AP"]
            line.append(";".join(f"{s}:{v:.4f}" for s, v in zip(r["seeds"], ap)))
            writer.writerow(line)
    os.replace(tmp, path)


def plot_ap(path: str, rows, seeds, title: str) -> None:
    """AP per method, one point per seed, mean +- std bars; teacher and plain as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    students = [r for r in rows if r["role"] != "teacher"]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(students) + 2), 4.0))
    colours = plt.get_cmap("tab10")
    for i, r in enumerate(students):
        for s, v in zip(r["seeds"], r["metrics"]["AP"]):
            k = seeds.index(s)
            x = i + (k - (len(seeds) - 1) / 2) * 0.08
            ax.scatter(x, v, color=colours(k % 10), s=24, zorder=3, label=f"seed {s}")
        mean, std = mean_std(r["metrics"]["AP"])
        if not math.isnan(mean):
            ax.errorbar(i + 0.3, mean, yerr=0 if math.isnan(std) else std, fmt="_", color="black",
                        markersize=14, capsize=4, zorder=2, label="mean ± std")  # fmt: skip
    teacher_ap = rows[0]["metrics"]["AP"][0]
    if not math.isnan(teacher_ap):
        ax.axhline(teacher_ap, color="tab:red", linestyle="--", label=f"teacher {teacher_ap:.2f}")
    plain_mean = mean_std(students[0]["metrics"]["AP"])[0]
    if not math.isnan(plain_mean):
        ax.axhline(plain_mean, color="grey", linestyle=":", label=f"plain mean {plain_mean:.2f}")
    ax.set_xticks(range(len(students)))
    ax.set_xticklabels([r["method"] for r in students], rotation=20, ha="right")
    ax.set_ylabel("AP (%)")
    ax.set_title(title, fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=8, loc="best")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
