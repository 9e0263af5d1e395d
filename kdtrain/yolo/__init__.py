"""YOLO students through ultralytics (an optional, AGPL-3.0 dependency: imported only when used, never vendored).

kdtrain.yolo.trainer.DistillationTrainer is ultralytics' DetectionTrainer with kdops.nn.FeatureDistiller
on the student's and the teacher's neck outputs (the Detect head's inputs), its loss added to the
detection loss inside ultralytics' own training loop; kdtrain.yolo.data writes YOLO-format data from
COCO json (and the built-in shapes data); ``python -m kdtrain yolo`` (kdtrain/commands/yolo.py) runs it
(docs/yolo.md).
"""
