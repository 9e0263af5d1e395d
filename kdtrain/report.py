"""The demo's printed table and matplotlib plot."""

from __future__ import annotations

COLUMNS = ("mAP", "AP50", "APs", "APm", "APl")


def format_table(rows: dict) -> str:
    header = f"{'model':<22}" + "".join(f"{c:>8}" for c in COLUMNS) + f"{'params':>10}{'img/s':>8}{'s/iter':>8}"
    lines = [header, "-" * len(header)]
    for name, r in rows.items():
        spi = r.get("train_seconds_per_iter")
        lines.append(f"{name:<22}" + "".join(f"{r[c]:>8.3f}" for c in COLUMNS)
                     + f"{r['params'] / 1e6:>9.1f}M{r['images_per_s']:>8.1f}"
                     + (f"{spi:>8.2f}" if spi is not None else f"{'cached':>8}"))
    return "\n".join(lines)


def write_plot(rows: dict, path: str, title: str = "kdtrain demo: teacher vs student vs distilled student") -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(1, len(rows))
    for i, (name, r) in enumerate(rows.items()):
        xs = [j + i * width for j in range(len(COLUMNS))]
        ax.bar(xs, [r[c] for c in COLUMNS], width, label=name)
    ax.set_xticks([j + width * (len(rows) - 1) / 2 for j in range(len(COLUMNS))])
    ax.set_xticklabels(COLUMNS)
    ax.set_ylabel("COCO AP")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
