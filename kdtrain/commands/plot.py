"""``python -m kdtrain plot RUN_DIR``: loss curves of a training run from its metrics.jsonl.

Left: each detection loss (torchvision's names) and the total; middle: each weighted distillation
term (``distill_*``, as added to the total); right: each term's gradient on the student as a ratio to
the detection loss's (the ``grad_ratio`` records, --grad-ratio-every), with the distillation check's
bounds. Learning rate, timings and the unweighted ``raw_*`` values are not losses of the objective
and are left out.
"""

from __future__ import annotations

import os

from kdtrain.commands.flags import add, config_from
from kdtrain.config import PlotConfig
from kdtrain.errors import UsageError, require_dir, require_writable_file
from kdtrain.metrics_log import read_jsonl

NOT_LOSSES = {"kind", "iteration", "epoch", "lr", "seconds_per_iter"}
TOTAL = "loss"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("plot", help="loss curves of a training run from its metrics.jsonl",
                              usage="%(prog)s RUN_DIR [--output PNG]",
                              description="Draws each detection loss and the total (left) and each weighted "
                                          "distillation term distill_* (right) of RUN_DIR/metrics.jsonl against the "
                                          "iteration.")
    add(p, "run_dir", "a train run's --output-dir (two-step: its step1/ or step2/)", metavar="RUN_DIR")
    add(p, "--output", "PNG to write; unset: RUN_DIR/losses.png", PlotConfig, metavar="PNG")
    p.set_defaults(run=run)


def run(args) -> int:
    path, _lines = plot_run(config_from(PlotConfig, args))
    print(f"loss curves written to {path}")
    return 0


def run_records(run_dir: str) -> tuple[list[dict], list[dict], list[dict]]:
    """(training records, evaluation records, gradient-ratio records) of RUN_DIR/metrics.jsonl."""
    require_dir(run_dir, "RUN_DIR")
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise UsageError(f"RUN_DIR: no metrics.jsonl in {run_dir} (a train run's --output-dir has one; a two-step "
                         "run has one in step1/ and in step2/)")
    records = read_jsonl(path)
    train = [r for r in records if r.get("kind", "train") == "train" and "iteration" in r]
    for r in train:
        if isinstance(r["iteration"], bool) or not isinstance(r["iteration"], int):
            raise UsageError(f"RUN_DIR: {path} has a training record whose iteration is {r['iteration']!r}, not an "
                             "integer; it was not written by kdtrain train")
    if not train:
        raise UsageError(f"RUN_DIR: {path} has no training records yet (one is written every --log-every "
                         "iterations)")
    return train, [r for r in records if r.get("kind") == "eval"], [r for r in records if r.get("kind") == "grad_ratio"]


def loss_keys(records: list[dict]) -> tuple[list[str], list[str]]:
    """(detection keys with the total first, distill_* keys): the numeric keys of the losses."""
    keys = sorted({k for r in records for k, v in r.items()
                   if k not in NOT_LOSSES and not k.startswith("raw_") and isinstance(v, (int, float))
                   and not isinstance(v, bool)})
    distill = [k for k in keys if k.startswith("distill_")]
    detection = [k for k in keys if k not in distill and k != TOTAL]
    return ([TOTAL] if TOTAL in keys else []) + detection, distill


def check_output(path: str) -> None:
    """UsageError unless matplotlib writes ``path``'s extension and the file can be written."""
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    extension = os.path.splitext(path)[1].lstrip(".").lower()
    if extension not in formats:
        raise UsageError(f"--output {path}: {'.' + extension if extension else 'no'} extension; the plot is written "
                         f"as one of: {', '.join('.' + f for f in sorted(formats))}")
    require_writable_file(path, "--output")


def plot_run(cfg: PlotConfig) -> tuple[str, dict]:
    """Write the figure; returns (its path, {loss key: its matplotlib Line2D})."""
    records, evals, ratios = run_records(cfg.run_dir)
    path = cfg.output or os.path.join(cfg.run_dir, "losses.png")
    check_output(path)
    from matplotlib.figure import Figure  # here: --help loads no matplotlib

    detection, distill = loss_keys(records)
    panels = [("detection losses", detection)] + ([("distillation terms (weighted)", distill)] if distill else [])
    columns = len(panels) + bool(ratios)
    fig = Figure(figsize=(6.5 * columns, 4.5), dpi=100, layout="constrained")
    lines = {}
    for i, (title, keys) in enumerate(panels):
        ax = fig.add_subplot(1, columns, i + 1)
        for key in keys:
            points = [(r["iteration"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
            xs, ys = zip(*points)
            style = dict(color="black", linestyle="--", label="loss (total)") if key == TOTAL else dict(label=key)
            lines[key], = ax.plot(xs, ys, marker="." if len(xs) < 50 else None, linewidth=1.2, **style)
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel("loss (mean over each logging window)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if ratios:
        _plot_ratios(fig.add_subplot(1, len(panels) + 1, len(panels) + 1), ratios, lines)
    final = f"; final eval mAP {evals[-1]['mAP']:.4f}" if evals and evals[-1].get("mAP") is not None else ""
    fig.suptitle(f"{os.path.abspath(cfg.run_dir)}: {records[-1]['iteration']} iterations{final}", fontsize=10)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    return path, lines


def _plot_ratios(ax, ratios: list[dict], lines: dict) -> None:
    """Each term's gradient ratio over training, log scale, between the check's warning bounds."""
    from kdtrain.distill.check import NEGLIGIBLE, SWAMP

    for key in sorted({k for r in ratios for k in r["ratios"]}):
        points = [(r["iteration"], r["ratios"][key]) for r in ratios if (r["ratios"].get(key) or 0) > 0]
        if points:
            xs, ys = zip(*points)
            lines[f"ratio_{key}"], = ax.plot(xs, ys, marker=".", linewidth=1.2, label=key)
    for bound, what in ((SWAMP, "swamps detection"), (NEGLIGIBLE, "does nothing")):
        ax.axhline(bound, color="grey", linestyle=":", linewidth=1)
        ax.annotate(what, (0, bound), xycoords=("axes fraction", "data"), fontsize=7, color="grey")
    ax.set_yscale("log")
    ax.set_title("term gradient / detection gradient (weighted)")
    ax.set_xlabel("iteration")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
