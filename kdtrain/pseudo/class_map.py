"""Teacher classes -> the student's label space, from an optional mapping file.

A mapping file is JSON or YAML: ``{teacher class name or category id: student class name}``;
``null`` as the value drops that teacher class. With a mapping file, teacher classes it does
not name are dropped; without one, classes map to the student class of the same name.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

from kdtrain.errors import UsageError


class ClassMapError(UsageError):
    """A mapping file that does not fit the teachers or the student's categories."""


@dataclasses.dataclass
class TeacherClasses:
    """What a teacher checkpoint predicts: model label -> (COCO category id, class name)."""
    source: str
    label_to_cat_id: dict
    label_to_name: dict

    @classmethod
    def from_checkpoint(cls, source: str, ckpt: dict, num_classes: int) -> "TeacherClasses":
        names = {int(c["id"]): str(c.get("name", c["id"])) for c in ckpt.get("categories") or []}
        label_to_cat_id = {int(k): int(v) for k, v in (ckpt.get("label_to_cat_id") or {}).items()}
        if not label_to_cat_id:  # a checkpoint without categories: labels are the ids
            label_to_cat_id = {i: i for i in range(1, num_classes)}
        label_to_name = {label: names.get(cat, str(cat)) for label, cat in label_to_cat_id.items()}
        return cls(source, label_to_cat_id, label_to_name)

    def find_label(self, key) -> Optional[int]:
        """The label of a class given by name, or else by COCO category id."""
        for label, name in self.label_to_name.items():
            if name == str(key):
                return label
        try:
            cat = int(key)
        except (TypeError, ValueError):
            return None
        return next((label for label, c in self.label_to_cat_id.items() if c == cat), None)


def read_mapping_file(path: str) -> dict:
    if not os.path.isfile(path):
        raise ClassMapError(f"class mapping file not found: {path}")
    with open(path) as f:
        text = f.read()
    if path.endswith((".yaml", ".yml")):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ClassMapError(f"corrupt YAML in class mapping file {path}: {e}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ClassMapError(f"corrupt json in class mapping file {path}: {e}") from None
    if not isinstance(data, dict) or not all(v is None or isinstance(v, str) for v in data.values()):
        raise ClassMapError(f"{path}: expected a mapping of teacher class (name or id) -> student class name or null")
    return {str(k): v for k, v in data.items()}


def student_categories(teachers: list[TeacherClasses], mappings: list[Optional[dict]],
                       given: Optional[list[dict]] = None) -> list[dict]:
    """The student's categories: ``given`` (from a COCO json), else every mapped name in first-seen order."""
    if given:
        return [{"id": int(c["id"]), "name": str(c.get("name", c["id"]))} for c in given]
    names: list[str] = []
    for teacher, mapping in zip(teachers, mappings):
        targets = teacher.label_to_name.values() if mapping is None else mapping.values()
        for name in targets:
            if name is not None and name not in names:
                names.append(name)
    return [{"id": i + 1, "name": n} for i, n in enumerate(names)]


def resolve_label_maps(teachers: list[TeacherClasses], mappings: list[Optional[dict]], categories: list[dict],
                       mapping_paths: list[Optional[str]]) -> list[dict]:
    """Per teacher: {teacher model label: student category id}; unknown classes raise ClassMapError.

    One mapping file shared by several teachers may name classes of any of them;
    a file given for one teacher may only name that teacher's classes.
    """
    name_to_id = {c["name"]: c["id"] for c in categories}
    shared = len(mappings) > 1 and mappings[0] is not None and all(m is mappings[0] for m in mappings)
    out, known_somewhere = [], set()
    for teacher, mapping, path in zip(teachers, mappings, mapping_paths):
        label_map = {}
        if mapping is None:
            for label, name in teacher.label_to_name.items():
                if name in name_to_id:
                    label_map[label] = name_to_id[name]
        else:
            for key, target in mapping.items():
                label = teacher.find_label(key)
                if label is None:
                    if not shared:
                        raise ClassMapError(f"{path}: unknown class {key!r}: teacher {teacher.source} has classes "
                                            f"{sorted(teacher.label_to_name.values())}")
                    continue
                known_somewhere.add(key)
                if target is None:
                    continue
                if target not in name_to_id:
                    raise ClassMapError(f"{path}: {key!r} maps to unknown student class {target!r}; student classes "
                                        f"are {sorted(name_to_id)}")
                label_map[label] = name_to_id[target]
        out.append(label_map)
    if shared:
        unknown = [k for k in mappings[0] if k not in known_somewhere]
        if unknown:
            raise ClassMapError(f"{mapping_paths[0]}: unknown class {unknown[0]!r}: no teacher has it (teachers' "
                                f"classes: {sorted({n for t in teachers for n in t.label_to_name.values()})})")
    return out
