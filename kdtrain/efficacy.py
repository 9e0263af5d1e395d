"""The efficacy table (``python -m kdtrain efficacy``): what each distillation recipe does to a student's mAP.

Every (recipe, seed) pair trains the same student at the same budget from one shared teacher; the
table gives per recipe the mean +- std over seeds of mAP, AP50 and APs, the paired per-seed gain over
the undistilled student (``none``, same seed), the wall time of a run and what the distillation terms
cost per training step. OUTPUT_DIR/efficacy_results.json is rewritten after every finished run, so
a killed efficacy run started again with the same settings skips the finished runs and restarts the one
it was in. A run that fails (its loss goes non-finite, it runs out of memory, ...) is recorded as
failed with its one-line reason, listed under the table, and the others go on; started again, the
table retries it. The data, teacher and student default to the demo's (kdtrain/demo/common.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import statistics
import time

from tqdm import tqdm

from kdtrain.config import EfficacyConfig, check_efficacy_config, split_spec
from kdtrain.demo import distill, prepare_data_and_teacher, profile_terms, run_record, student_config
from kdtrain.engine import train
from kdtrain.errors import UsageError, one_line
from kdtrain.result_plots import seed_gains, write_seed_plot

RESULTS, TABLE, PLOT = "efficacy_results.json", "efficacy_results.md", "efficacy_results.png"
BASELINE = "none"
METRICS = ("mAP", "AP50", "APs")
# Settings every run of one results file must share (recipes and seeds may be added between invocations).
SHARED_SETTINGS = ("iterations", "train_images", "train_ann", "val_images", "val_ann", "teacher", "image_size",
                   "student_anchors", "student_scale", "batch_size", "lr", "distill_warmup", "imitation_mask",
                   "distill_auto_ratio", "distill_auto_iters", "generated_train_images", "generated_val_images",
                   "teacher_iterations", "pretrain_steps")


def _data_and_teacher(b: EfficacyConfig, log) -> tuple[dict, str, dict]:
    """(data, teacher checkpoint, teacher's table row): the user's, or the demo's generated data and cached teacher."""
    if not b.teacher:
        return prepare_data_and_teacher(b.demo_config(), log)
    from kdtrain.data.coco import CocoDetection
    from kdtrain.distributed import DistInfo
    from kdtrain.evaluate import evaluate
    from kdtrain.models import count_parameters, load_detector

    data = {"train": {"images": b.train_images, "ann": b.train_ann}, "val": {"images": b.val_images, "ann": b.val_ann}}
    teacher, _, _ = load_detector(b.teacher)
    val_set = CocoDetection(b.val_images, b.val_ann, require_annotations=False, scoring=True)
    metrics = evaluate(teacher, val_set, DistInfo(), 8, 0, b.progress, desc="eval[teacher]")
    return data, b.teacher, {**metrics, "params": count_parameters(teacher)}


def _run_dir(b: EfficacyConfig, spec: str, seed: int) -> str:
    return os.path.join(b.output_dir, "runs", f"{re.sub(r'[^A-Za-z0-9]+', '_', spec)}-seed{seed}")


def _settings(b: EfficacyConfig) -> dict:
    values = {name: getattr(b, name) for name in SHARED_SETTINGS}
    return json.loads(json.dumps(values))  # tuples as lists, as they come back from the file


def _load_results(b: EfficacyConfig, log) -> dict:
    """The results of an earlier invocation with the same settings, or a fresh record."""
    path = os.path.join(b.output_dir, RESULTS)
    fresh = {"settings": _settings(b), "runs": [], "overhead": {}}
    if not os.path.isfile(path):
        return fresh
    try:
        with open(path) as f:
            results = json.load(f)
        old = results["settings"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UsageError(f"{path}: not an efficacy results file ({type(e).__name__}: {e}); delete it or use "
                         "another --output-dir") from None
    if old != fresh["settings"]:
        changed = ", ".join(f"{k} {old.get(k)!r} -> {v!r}" for k, v in fresh["settings"].items() if old.get(k) != v)
        raise UsageError(f"{path} holds runs of an efficacy table with other settings ({changed}); their numbers would not "
                         "compare. Use another --output-dir, or delete it to start over")
    log(f"[efficacy] {len(results['runs'])} finished run(s) in {path} are kept")
    return {**fresh, "runs": results["runs"], "overhead": results.get("overhead", {})}


def _write_json(path: str, obj) -> None:
    """Written to a temporary file and renamed: a kill mid-write leaves the previous results."""
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(path + ".tmp", path)


def _train_one(b: EfficacyConfig, data: dict, teacher: str, spec: str, seed: int, log) -> tuple[dict, dict]:
    """Train and evaluate one student from scratch (a run folder left by a killed invocation is replaced)."""
    recipe, weights = split_spec(spec)
    d = b.demo_config()
    cfg = student_config(d, data, _run_dir(b, spec, seed), seed, log)
    cfg.distill_auto_ratio, cfg.distill_auto_iters = b.distill_auto_ratio, b.distill_auto_iters
    if recipe != BASELINE:
        distill(cfg, d, recipe, teacher, weights)
    started = time.perf_counter()
    summary = train(cfg, log=log)
    record = {**run_record(spec, seed, summary), "recipe": recipe, "weights": weights or "default",
              "wall_seconds": time.perf_counter() - started, "distill_weights": summary["distill_weights"],
              "auto_weights": summary["auto_weights"]}
    return record, summary


def failed_record(spec: str, seed: int, error: Exception, seconds: float) -> dict:
    """A run that raised: its name, seed and one-line reason (the error's type and first line)."""
    return {"name": spec, "seed": seed, "recipe": split_spec(spec)[0], "weights": split_spec(spec)[1] or "default",
            "failed": one_line(error), "wall_seconds": seconds}


def finished(runs: list[dict]) -> list[dict]:
    return [r for r in runs if "failed" not in r]


def failed_runs(b: EfficacyConfig, runs: list[dict]) -> list[dict]:
    """The runs of this table (its recipes and seeds) that failed."""
    return [r for r in runs if "failed" in r and r["name"] in b.recipes and r["seed"] in b.seeds]


def failed_runs_table(failed: list[dict]) -> str:
    """The failed runs under the table, or "" when none failed."""
    if not failed:
        return ""
    lines = ["Failed runs (in no row above; the next invocation with the same settings retries them):", "",
             "| recipe | seed | reason |", "| --- | --- | --- |"]
    lines += [f"| {r['name']} | {r['seed']} | {r['failed'].replace('|', '/')} |" for r in failed]
    return "\n" + "\n".join(lines) + "\n"


def _overhead(b: EfficacyConfig, data: dict, teacher: str, recipe: str, student_path: str) -> dict:
    """Seconds of a whole student step and of each term in it (forward + backward), and their ratio."""
    d = dataclasses.replace(b.demo_config(), recipe=recipe, distill_weights=None)  # timing does not depend on weights
    cost = profile_terms(d, data, teacher, student_path)
    terms = sum(v for k, v in cost.items() if k != "step")
    return {"seconds": cost, "fraction_of_step": terms / cost["step"]}


def _stats(values: list) -> dict:
    """Mean and sample std over seeds; None where a seed has no value (an AP group without objects)."""
    if not values or None in values:
        return {"mean": None, "std": None, "per_seed": values}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "per_seed": values}


# Student's t quantile t(0.975, df) for df = 1..30; above 30 the Cornish-Fisher series in 1/df.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    """The two-sided 95% quantile of Student's t with ``df`` degrees of freedom."""
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def gain_stats(gains: list) -> dict:
    """_stats of the paired per-seed gains plus the 95% t-interval of their mean (None under 2 seeds)."""
    out = _stats(gains)
    low = high = None
    if out["mean"] is not None and len(gains) >= 2:
        half = t975(len(gains) - 1) * out["std"] / math.sqrt(len(gains))
        low, high = out["mean"] - half, out["mean"] + half
    return {**out, "ci95_low": low, "ci95_high": high}


def summarize(b: EfficacyConfig, runs: list[dict], overhead: dict) -> dict:
    """One row per recipe of ``b.recipes`` over the seeds of ``b.seeds`` that have finished."""
    runs = [r for r in runs if r["seed"] in b.seeds]
    rows = {}
    for spec in b.recipes:
        mine = sorted((r for r in runs if r["name"] == spec), key=lambda r: b.seeds.index(r["seed"]))
        if not mine:
            continue
        row = {"recipe": spec, "seeds": [r["seed"] for r in mine],
               **{m: _stats([r[m] for r in mine]) for m in METRICS},
               "wall_seconds": statistics.fmean(r["wall_seconds"] for r in mine),
               "train_seconds_per_iter": statistics.fmean(r["train_seconds_per_iter"] for r in mine),
               "distill_overhead": overhead.get(split_spec(spec)[0], {}).get("fraction_of_step"),
               "distill_weights": [r["distill_weights"] for r in mine]}
        if spec != BASELINE and any(r["name"] == BASELINE for r in runs):
            for m in METRICS:
                gains = seed_gains(runs, spec, BASELINE, m) if all(r[m] is not None for r in runs) else []
                row[f"gain_{m}"] = gain_stats(gains)
            row["seeds_better"] = sum(g > 0 for g in row["gain_mAP"]["per_seed"])
            row["gain_ci95_low"], row["gain_ci95_high"] = row["gain_mAP"]["ci95_low"], row["gain_mAP"]["ci95_high"]
        rows[spec] = row
    return rows


def _pm(stat: dict | None, sign: str = "") -> str:
    if not stat or stat["mean"] is None:
        return "n/a"
    return f"{stat['mean']:{sign}.4f} ± {stat['std']:.4f}"


def _interval(row: dict) -> str:
    if row.get("gain_mAP") is None:
        return "—"
    if row["gain_ci95_low"] is None:
        return "n/a (1 seed)"
    return f"[{row['gain_ci95_low']:+.4f}, {row['gain_ci95_high']:+.4f}]"


def markdown_table(rows: dict, teacher: dict, caption: str) -> str:
    lines = [f"| recipe | seeds | mAP | AP50 | APs | mAP gain vs {BASELINE} (same seed) | 95% interval of the gain | "
             "seeds better | wall/run (min) | s/iter | distillation / step |", "|" + " --- |" * 11]
    for spec, r in rows.items():
        gain = r.get("gain_mAP")
        better = f"{r['seeds_better']}/{len(gain['per_seed'])}" if gain and gain["per_seed"] else "—"
        overhead = "—" if r["distill_overhead"] is None else f"{r['distill_overhead']:.1%}"
        lines.append(f"| {spec} | {len(r['seeds'])} | {_pm(r['mAP'])} | {_pm(r['AP50'])} | {_pm(r['APs'])} | "
                     f"{_pm(gain, '+') if gain else '—'} | {_interval(r)} | {better} | {r['wall_seconds'] / 60:.1f} | "
                     f"{r['train_seconds_per_iter']:.2f} | {overhead} |")
    auto = [(spec, r["distill_weights"]) for spec, r in rows.items() if "auto" in spec.partition(":")[2]]
    notes = [caption, "teacher: " + ", ".join(f"{m} {teacher[m]:.3f}" for m in METRICS if teacher.get(m) is not None),
             "gain: the distilled student's mAP minus the undistilled one's of the same seed; its 95% interval is "
             "Student's t-interval of the mean of those paired gains (none with fewer than 2 seeds)"]
    for spec, per_seed in auto:
        notes.append(f"{spec} weights chosen per seed: " + "; ".join(
            ", ".join(f"{k}={w:.3g}" for k, w in weights.items()) for weights in per_seed))
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def _caption(b: EfficacyConfig, teacher: str) -> str:
    data = f"{b.train_ann}" if b.train_ann else (f"built-in shapes ({b.generated_train_images} train / "
                                                 f"{b.generated_val_images} val images, {b.image_size} px)")
    return (f"budget: {b.iterations} iterations per student, batch {b.batch_size}, lr {b.lr:g}; data: {data}; "
            f"teacher: {teacher}; distillation warm-up {b.distill_warmup} it; auto weights: gradient ratio "
            f"{b.distill_auto_ratio:g} over {b.distill_auto_iters} it")


def _save(b: EfficacyConfig, results: dict, teacher_row: dict, started: float) -> None:
    """The rows so far and every run, to OUTPUT_DIR/efficacy_results.json."""
    results.update(config=dataclasses.asdict(b), teacher=teacher_row,
                   rows=summarize(b, finished(results["runs"]), results["overhead"]),
                   compute_seconds=sum(r["wall_seconds"] for r in results["runs"]),
                   wall_seconds_this_invocation=time.perf_counter() - started)
    _write_json(os.path.join(b.output_dir, RESULTS), results)


def run_efficacy(b: EfficacyConfig, log=print) -> dict:
    b = dataclasses.replace(b, recipes=tuple(b.recipes), seeds=tuple(b.seeds))
    check_efficacy_config(b)
    os.makedirs(b.output_dir, exist_ok=True)
    results = _load_results(b, log)  # before the teacher: a settings clash fails at once
    data, teacher, teacher_row = _data_and_teacher(b, log)
    done = {(r["name"], r["seed"]) for r in finished(results["runs"])}
    # Seed-major: an interrupted run has whole seeds, whose gains pair up.
    plan = [(spec, seed) for seed in b.seeds for spec in b.recipes]
    todo = [p for p in plan if p not in done]
    if len(todo) < len(plan):
        log(f"[efficacy] {len(plan) - len(todo)} of {len(plan)} runs already finished; running the other {len(todo)}")
    bar = tqdm(total=len(plan), initial=len(plan) - len(todo), desc="efficacy", unit="run",
               disable=not b.progress, dynamic_ncols=True)
    started = time.perf_counter()
    for spec, seed in todo:
        bar.set_postfix_str(f"{spec} seed {seed}")
        log(f"[efficacy] {spec} seed {seed}: {b.iterations} iterations")
        run_started = time.perf_counter()
        try:
            record, summary = _train_one(b, data, teacher, spec, seed, log)
        except UsageError:
            raise  # the settings: every run would fail the same way
        except Exception as e:  # this run only: recorded, and the table goes on
            record, summary = failed_record(spec, seed, e, time.perf_counter() - run_started), None
            log(f"[efficacy] {spec} seed {seed} failed: {record['failed']}")
        recipe = split_spec(spec)[0]
        if summary is not None:
            if recipe != BASELINE and recipe not in results["overhead"]:  # once per recipe: weights do not change it
                results["overhead"][recipe] = _overhead(b, data, teacher, recipe, summary["final_checkpoint"])
            if not b.keep_models:
                os.remove(summary["final_checkpoint"])
        results["runs"] = [r for r in results["runs"] if (r["name"], r["seed"]) != (spec, seed)] + [record]
        _save(b, results, teacher_row, started)
        bar.update(1)
    bar.close()
    _save(b, results, teacher_row, started)
    caption = _caption(b, teacher)
    failed = failed_runs(b, results["runs"])
    table = markdown_table(results["rows"], teacher_row, caption) + failed_runs_table(failed)
    with open(os.path.join(b.output_dir, TABLE), "w") as f:
        f.write(table)
    write_seed_plot(results["rows"], finished(results["runs"]), os.path.join(b.output_dir, PLOT), BASELINE,
                    f"kdtrain efficacy: {len(b.recipes)} recipes x {len(b.seeds)} seed(s)", caption)
    log(table)
    log(f"[efficacy] results in {', '.join(os.path.join(b.output_dir, n) for n in (RESULTS, TABLE, PLOT))}")
    return results
