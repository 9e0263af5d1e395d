"""Turns pytest-benchmark JSON into a markdown table and a speed-up plot.

    python benchmarks/report.py results.json [more.json ...] --out DIR

Writes DIR/benchmarks.md (median fwd+bwd time per implementation, speed-up of each fused backend
over the eager reference and over torch.compile(reference), achieved GB/s and its share of the
measured copy bandwidth, peak extra memory) and DIR/benchmarks.png, plus DIR/preferred.json: the
faster of the cuda and triton backends per op (for kdops._backend's automatic choice, which takes cuda
until a GPU run has measured them).
"""

import argparse
import collections
import json
import os


def load(paths):
    rows = []
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        for bench in data["benchmarks"]:
            info = bench.get("extra_info", {})
            if "impl" in info:
                rows.append({**info, "median_s": bench["stats"]["median"]})
    return rows


def group(rows):
    cases = collections.OrderedDict()
    for row in rows:
        key = (row["op"], row["level"], row["batch"], row["dtype"])
        cases.setdefault(key, {})[row["impl"]] = row
    return cases


def _cell(value, fmt):
    return fmt.format(value) if value is not None else "-"


def markdown(cases):
    lines = ["| op | level | batch | dtype | impl | median ms | vs reference | vs compiled | GB/s | % copy BW | peak extra MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    device = None
    for (op, level, batch, dtype), impls in cases.items():
        ref = impls.get("reference", {}).get("median_s")
        comp = impls.get("compiled", {}).get("median_s")
        for impl, row in impls.items():
            device = row.get("device", device)
            t = row["median_s"]
            gbps, bw, peak = row.get("achieved_gbps"), row.get("copy_bandwidth_gbps"), row.get("peak_extra_bytes")
            fused = impl not in ("reference", "compiled")
            cells = [op, level, batch, dtype, impl, _cell(t * 1e3, "{:.3f}"),
                     _cell(ref / t if ref else None, "{:.2f}x"), _cell(comp / t if comp else None, "{:.2f}x"),
                     _cell(gbps, "{:.1f}"), _cell(100 * gbps / bw if fused and gbps and bw else None, "{:.0f}%"),
                     _cell(peak / 2**20 if peak is not None else None, "{:.1f}")]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    header = f"Device: {device}. Times are medians of forward + backward.\n\n"
    return header + "\n".join(lines) + "\n"


def preferred(cases):
    """Per op, the GPU backend that wins more cases (ties: cuda)."""
    wins = collections.defaultdict(collections.Counter)
    for (op, *_), impls in cases.items():
        gpu = {k: v["median_s"] for k, v in impls.items() if k in ("cuda", "triton")}
        if len(gpu) == 2:
            wins[op][min(gpu, key=gpu.get)] += 1
    return {op: ("triton" if c["triton"] > c["cuda"] else "cuda") for op, c in wins.items()}


def plot(cases, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, series = [], collections.defaultdict(list)
    fused = sorted({i for impls in cases.values() for i in impls if i not in ("reference", "compiled")})
    for (op, level, batch, dtype), impls in cases.items():
        ref = impls.get("reference", {}).get("median_s")
        if not ref:
            continue
        labels.append(f"{op}\n{level} b{batch} {dtype}")
        for impl in ["compiled", *fused]:
            t = impls.get(impl, {}).get("median_s")
            series[impl].append(ref / t if t else 0.0)
    if not labels:
        return
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(labels)), 5))
    for k, (impl, values) in enumerate(series.items()):
        ax.bar([i + k * width for i in range(len(labels))], values, width, label=impl)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(labels))])
    ax.set_xticklabels(labels, rotation=90, fontsize=7)
    ax.set_ylabel("speed-up over eager reference (fwd+bwd)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", nargs="+", help="pytest-benchmark JSON files")
    parser.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    cases = group(load(args.json))
    with open(os.path.join(args.out, "benchmarks.md"), "w") as f:
        f.write(markdown(cases))
    with open(os.path.join(args.out, "preferred.json"), "w") as f:
        json.dump(preferred(cases), f, indent=2)
    plot(cases, os.path.join(args.out, "benchmarks.png"))
    print(f"wrote {args.out}/benchmarks.md, benchmarks.png, preferred.json ({len(cases)} cases)")


if __name__ == "__main__":
    main()
