"""The label-scarce demo variant end to end at toy size: rows, budget split, cached pseudo-labels."""

import json

import pytest
from pycocotools.coco import COCO

from kdtrain.demo import DemoConfig, run_demo
from kdtrain.demo.label_scarce import run_label_scarce_demo


def _toy(tmp_path, **kw):
    return DemoConfig(output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"), image_size=64,
                      train_images=8, val_images=3, teacher_iterations=2, student_iterations=3,
                      batch_size=2, pretrain_steps=0, trust_teacher=True, workers=0, progress=False, distill_warmup=1, variant="label-scarce",
                      labeled_fraction=0.25, step1_share=0.5, pseudo_score_threshold=0.0, **kw)


@pytest.mark.slow
def test_label_scarce_demo_compares_two_step_with_supervised(tmp_path):
    lines = []
    result = run_label_scarce_demo(_toy(tmp_path), log=lines.append)
    assert set(result["rows"]) == {"teacher", "student (labeled 25%)", "student pseudo-only", "student two-step"}
    assert result["budget_iterations"] == {"supervised": 3, "step1": 2, "step2": 1}  # equal budget
    for row in result["rows"].values():
        assert 0.0 <= row["mAP"] <= 1.0 and row["params"] > 1e6
    assert COCO(result["pseudo_labels"]).getImgIds()  # the teacher's labels are valid COCO
    assert any(line.startswith("model") for line in lines)
    saved = json.load(open(tmp_path / "out" / "demo_results.json"))
    assert saved["variant"] == "label-scarce" and saved["rows"].keys() == result["rows"].keys()

    lines.clear()
    run_demo(_toy(tmp_path), log=lines.append)  # run_demo dispatches on the variant
    assert any("reusing pseudo-labels" in line for line in lines)


@pytest.mark.parametrize("field,value", [("labeled_fraction", 1.0), ("step1_share", 0.0)])
def test_label_scarce_demo_rejects_bad_split(tmp_path, field, value):
    with pytest.raises(ValueError, match=field):
        run_label_scarce_demo(DemoConfig(**{field: value}))


def test_unknown_demo_variant_is_clear():
    with pytest.raises(ValueError, match="variant"):
        run_demo(DemoConfig(variant="tiny"))
