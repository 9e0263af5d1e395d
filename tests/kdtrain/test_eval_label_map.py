"""eval maps the model's labels with the checkpoint's categories, never the evaluation json's."""

import json

import pytest
import torch

from kdtrain.cli import main
from kdtrain.data.coco import CocoDetection
from kdtrain.distributed import DistInfo
from kdtrain.evaluate import run_inference
from kdtrain.commands.eval import checkpoint_label_map


def _val_json(tiny_data, tmp_path, edit):
    data = json.load(open(tiny_data["val"]["ann"]))
    edit(data)
    path = tmp_path / "val.json"
    path.write_text(json.dumps(data))
    return str(path)


def _without_category_1(data):
    data["categories"] = [c for c in data["categories"] if c["id"] != 1]
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] != 1]


class _SaysLabel1(torch.nn.Module):
    """A detector that finds one object of label 1 in every image."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(()))

    def forward(self, images):
        return [{"boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0]]), "scores": torch.tensor([0.9]),
                 "labels": torch.tensor([1])} for _ in images]


def test_a_json_missing_a_category_keeps_the_checkpoint_ids(tiny_data, tmp_path):
    ckpt = {"label_to_cat_id": {i: i for i in range(1, 6)},
            "categories": json.load(open(tiny_data["train"]["ann"]))["categories"]}
    dataset = CocoDetection(tiny_data["val"]["images"], _val_json(tiny_data, tmp_path, _without_category_1))
    assert dataset.label_to_cat_id[1] == 2  # the json's own numbering would call label 1 "ring"
    label_map = checkpoint_label_map(ckpt, "model.pth", dataset)
    results, _ = run_inference(_SaysLabel1(), dataset, DistInfo(), progress=False, label_to_cat_id=label_map)
    assert results and {r["category_id"] for r in results} == {1}  # "disc", as trained


@pytest.mark.parametrize("edit, named", [
    (lambda d: d["categories"][0].update(name="green"), "1:green"),
    (lambda d: d["categories"].append({"id": 9, "name": "hexagon"}), "9:hexagon"),
])
def test_categories_the_checkpoint_does_not_have_are_refused(tiny_data, teacher_ckpt, tmp_path, capsys, edit, named):
    ann = _val_json(tiny_data, tmp_path, edit)
    with pytest.raises(SystemExit) as e:
        main(["eval", "--checkpoint", teacher_ckpt, "--images", tiny_data["val"]["images"], "--ann", ann,
              "--workers", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"categories {named} are not among the checkpoint's (1:disc, 2:ring" in err


def test_a_checkpoint_without_a_label_map_uses_the_json_with_a_warning(tiny_data):
    dataset = CocoDetection(tiny_data["val"]["images"], tiny_data["val"]["ann"])
    said = []
    assert checkpoint_label_map({}, "foreign.pth", dataset, warn=said.append) == dataset.label_to_cat_id
    assert "foreign.pth holds no label map" in said[0]
