"""Tables and plots of trained students' COCO metrics: the demo's printed table and its plot of what
distillation changes, and the efficacy table's per-seed plot (kdtrain/efficacy.py).

A metric is None ("n/a") when the validation set has no objects of that size.
"""

from __future__ import annotations

COLUMNS = ("mAP", "AP50", "APs", "APm", "APl")


def _cell(value) -> str:
    return f"{'n/a':>8}" if value is None else f"{value:>8.3f}"


def format_table(rows: dict) -> str:
    header = f"{'model':<22}" + "".join(f"{c:>8}" for c in COLUMNS) + f"{'params':>10}{'img/s':>8}{'s/iter':>8}"
    lines = [header, "-" * len(header)]
    for name, r in rows.items():
        spi = r.get("train_seconds_per_iter")
        lines.append(f"{name:<22}" + "".join(_cell(r[c]) for c in COLUMNS)
                     + f"{r['params'] / 1e6:>9.1f}M{r['images_per_s']:>8.1f}"
                     + (f"{spi:>8.2f}" if spi is not None else f"{'cached':>8}"))
    return "\n".join(lines)


def plotted_metrics(rows: dict) -> list[str]:
    """The columns every row has a value for (an empty size group is left out)."""
    return [c for c in COLUMNS if all(r.get(c) is not None for r in rows.values())]


def seed_gains(runs: list[dict], name: str, baseline: str, metric: str) -> list[float]:
    """Per seed: ``name``'s metric minus the baseline's of the same seed."""
    base = {r["seed"]: r[metric] for r in runs if r["name"] == baseline}
    return [r[metric] - base[r["seed"]] for r in runs if r["name"] == name and r["seed"] in base]


def _grouped_bars(ax, metrics, series: dict, seed_points: dict, colors: dict, sign: str = "") -> None:
    """One bar group per metric, one bar per series, its value on top and one dot per seed."""
    width = 0.8 / max(1, len(series))
    biggest = max([abs(v) for values in series.values() for v in values] or [0.0])
    fmt = f"{sign}.{3 if biggest >= 0.05 else 4}f"  # small APs (0.0045) keep two significant digits
    for i, (name, values) in enumerate(series.items()):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(metrics))]
        ax.bar(xs, values, width, label=name, color=colors[name])
        for x, value, points in zip(xs, values, seed_points[name]):
            if len(points) > 1:
                ax.scatter([x] * len(points), points, s=14, color="black", zorder=3, linewidths=0)
            # The label goes beyond the bar and its seed dots, so neither hides it.
            up = value >= 0
            end = max([value, *points]) if up else min([value, *points])
            ax.annotate(format(value, fmt), (x, end), xytext=(0, 3 if up else -3), textcoords="offset points",
                        ha="center", va="bottom" if up else "top", fontsize=8)
    ax.set_xticks(range(len(metrics)))
    ax.set_xticklabels(metrics)
    ax.margins(y=0.15)


def write_plot(rows: dict, runs: list[dict], path: str, title: str, baseline: str, caption: str) -> None:
    """Left: the students' COCO AP on their own scale. Right: each other student's gain over ``baseline``.

    ``rows`` are seed means (a ``teacher`` row goes into the caption), ``runs`` the per-seed records.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    metrics = plotted_metrics(rows)
    students = [n for n in rows if n != "teacher"]
    others = [n for n in students if n != baseline]
    colors = {n: ("0.6" if n == baseline else f"C{i}") for i, n in enumerate(students)}
    multi_seed = any(len(rows[n].get("seeds", ())) > 1 for n in students)

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2), gridspec_kw={"width_ratios": [1.1, 1]})
    _grouped_bars(left, metrics, {n: [rows[n][m] for m in metrics] for n in students},
                  {n: [[r[m] for r in runs if r["name"] == n] for m in metrics] for n in students}, colors)
    left.set_ylim(bottom=0.0)
    left.set_ylabel("COCO AP (mean over seeds)")
    left.set_title("students, on their own scale" + (" (dots: one per seed)" if multi_seed else ""))
    left.legend(fontsize=8, loc="upper right")

    gains = {n: [seed_gains(runs, n, baseline, m) for m in metrics] for n in others}
    _grouped_bars(right, metrics, {n: [sum(g) / len(g) if g else 0.0 for g in gains[n]] for n in others},
                  gains, colors, sign="+")
    right.axhline(0.0, color="black", linewidth=0.8)
    right.set_ylabel("AP difference (same seed)")
    right.set_title(f"gain over {baseline}" + (" (dots: one per seed)" if multi_seed else ""))
    if others:
        right.legend(fontsize=8, loc="best")

    fig.suptitle(title, fontsize=12)
    teacher = rows.get("teacher")
    notes = [caption]
    if teacher:
        notes.append("teacher (not drawn): " + ", ".join(f"{m} {teacher[m]:.3f}" for m in metrics))
    left_out = [c for c in COLUMNS if c not in metrics]
    if left_out:
        notes.append(f"{', '.join(left_out)}: n/a (no objects of that size in the validation set)")
    fig.text(0.5, 0.01, "\n".join(notes), ha="center", va="bottom", fontsize=8.5)
    fig.tight_layout(rect=(0, 0.01 + 0.03 * len(notes), 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_seed_plot(rows: dict, runs: list[dict], path: str, baseline: str, title: str, caption: str) -> None:
    """The efficacy table's spread. Left: each recipe's mAP, one dot per seed, mean +- std. Right: each seed's mAP
    gain over ``baseline`` (same seed). ``rows`` are keyed by recipe (run name), ``runs`` the per-seed records."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    names = list(rows)
    others = [n for n in names if n != baseline]
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(10, 1.3 * len(names) + 4), 5.2))
    for i, name in enumerate(names):
        values = [r["mAP"] for r in runs if r["name"] == name and r["seed"] in rows[name]["seeds"]]
        color = "0.5" if name == baseline else f"C{i}"
        left.scatter([i] * len(values), values, s=22, color=color, zorder=3)
        if len(values) > 1:
            left.errorbar(i + 0.18, rows[name]["mAP"]["mean"], yerr=rows[name]["mAP"]["std"], fmt="_", ms=14,
                          color="black", capsize=3)
    if baseline in rows:
        left.axhline(rows[baseline]["mAP"]["mean"], color="0.5", linestyle="--", linewidth=0.8,
                     label=f"{baseline} (mean)")
        left.legend(fontsize=8, loc="best")
    left.set_xticks(range(len(names)))
    left.set_xticklabels(names, rotation=30, ha="right")
    left.set_ylabel("mAP (dots: seeds; bar: mean ± std)")
    left.set_title("mAP per recipe")
    for i, name in enumerate(others):
        gains = seed_gains(runs, name, baseline, "mAP") if baseline in rows else []
        right.scatter([i] * len(gains), gains, s=22, color=f"C{names.index(name)}", zorder=3)
        if gains:
            right.plot([i - 0.25, i + 0.25], [sum(gains) / len(gains)] * 2, color="black", linewidth=1.2)
    right.axhline(0.0, color="black", linewidth=0.8)
    right.set_xticks(range(len(others)))
    right.set_xticklabels(others, rotation=30, ha="right")
    right.set_ylabel(f"mAP minus {baseline}'s, same seed (line: mean)")
    right.set_title(f"paired gain over {baseline}")
    fig.suptitle(title, fontsize=12)
    fig.text(0.5, 0.01, caption, ha="center", va="bottom", fontsize=8, wrap=True)
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
