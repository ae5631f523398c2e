"""Every JSON file the tool reads is checked against its schema: a malformed one ends in an error
that names the file, the key and what was expected (a table of the malformed files users met),
and no generated JSON makes a reader fail any other way (a property-based test)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asdseg.active.sparse_labels import (
    SparseLabels,
    read_slice_effort,
    read_sparse_labels,
    slices_json_path,
    write_sparse_labels,
)
from asdseg.active.suggestion_report import read_suggestions
from asdseg.errors import AsdsegError
from asdseg.io.datasets import read_dataset
from asdseg.io.labels import Label, labels_json, read_labels_json
from asdseg.phantoms import write_synthetic_pelvis_dataset
from asdseg.registry.model_card import ModelCard
from asdseg.training.case_cache import load_cached_split
from asdseg.training.config import load_config
from asdseg.training.dataset_training import read_split_file

from conftest import tiny_card

LABELS = [Label(0, "background", (0, 0, 0)), Label(1, "organ", (200, 0, 0))]
SHAPE = (8, 8, 6)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_pelvis_dataset(tmp_path_factory.mktemp("dataset"), cases=3, shape=(16, 16, 8))


@pytest.fixture(scope="module")
def sparse_label_map(tmp_path_factory: pytest.TempPathFactory) -> Path:
    label = np.zeros(SHAPE, dtype=np.int64)
    label[2:5, 2:5, 1:4] = 1
    reference = sitk.GetImageFromArray(np.zeros(SHAPE[::-1], dtype=np.float32))
    path = tmp_path_factory.mktemp("sparse") / "labels.nii.gz"
    write_sparse_labels(SparseLabels(label, {1, 2}), reference, LABELS, path)
    return path


def valid_documents(dataset: Path) -> dict[str, Any]:
    """A well-formed document of each kind, the starting point of the malformed ones."""
    return {
        "splits": {"labelled": ["synthpelvis_000"], "validation": ["synthpelvis_002"]},
        "labelled_slices": {
            "version": 1,
            "size": list(SHAPE),
            "labelled_slices": [1, 2],
            "effort": {"1": {"prefilled": True, "added": 3, "removed": 1, "dice": 0.8}},
        },
        "dataset": json.loads((dataset / "dataset.json").read_text()),
        "training_config": {"recipe": "supervised", "steps": 4, "data": {"labelled": 2, "validation": 1}},
        "model_card": tiny_card(),
        "suggestions": {
            "strategy": "p-dsc",
            "suggested": [{"slice": 1, "p_dsc": 0.5, "p_accuracy": 0.9, "entropy": 3.0}],
            "mean_p_dsc": 0.5,
            "mean_p_accuracy": 0.9,
            "slices": [{"slice": 1, "p_dsc": 0.5, "p_accuracy": 0.9, "entropy": 3.0}],
        },
        "label_sidecar": json.loads(labels_json(LABELS)),
        "case_cache": {
            "normalization": "zscore",
            "cases": {"a": {"role": "labelled", "part": "part01.npz", "spacing": [1, 1, 1]}},
        },
    }


def readers(dataset: Path, sparse_label_map: Path, folder: Path) -> dict[str, tuple[Path, Callable]]:
    """Per kind: the file a document is written to and the reader that reads it."""
    return {
        "splits": (folder / "splits.json", lambda path: read_split_file(path, read_dataset(dataset))),
        "labelled_slices": (
            slices_json_path(sparse_label_map),
            lambda path: (read_sparse_labels(sparse_label_map), read_slice_effort(sparse_label_map)),
        ),
        "dataset": (folder / "own-dataset" / "dataset.json", lambda path: read_dataset(path.parent)),
        "training_config": (folder / "config.json", load_config),
        "model_card": (folder / "model" / "card.json", ModelCard.load),
        "suggestions": (folder / "suggestions.json", read_suggestions),
        "label_sidecar": (folder / "labels.json", read_labels_json),
        "case_cache": (folder / "cache" / "index.json", lambda path: load_cached_split(path.parent)),
    }


def read_document(
    kind: str, document: Any, dataset: Path, sparse_label_map: Path, folder: Path
) -> tuple[Path, Callable[[], Any]]:
    path, reader = readers(dataset, sparse_label_map, folder)[kind]
    if kind == "dataset" and not path.parent.exists():
        path.parent.mkdir()
        for part in ("imagesTr", "labelsTr"):
            (path.parent / part).symlink_to(dataset / part)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return path, lambda: reader(path)


MALFORMED = [
    # (kind, key path and value to put there (an empty path: the whole document), phrase)
    ("splits", ((), "abc"), r"at the top level, 'abc' is not of type 'object'"),
    ("splits", (("labelled",), None), r"at labelled, None is not of type 'array'"),
    ("splits", (("labelled", 0), 7), r"at labelled\[0\], 7 is not of type 'string'"),
    ("splits", (("training",), []), r"'training' was unexpected"),
    (
        "labelled_slices",
        (("labelled_slices", 0), "a"),
        r"at labelled_slices\[0\], 'a' is not of type 'integer'",
    ),
    ("labelled_slices", (("size",), [8, 8]), r"at size, \[8, 8\] is too short"),
    ("dataset", (("numTraining",), "zero"), r"at numTraining, 'zero' is not of type 'integer'"),
    ("dataset", (("numTraining",), "6"), r"at numTraining, '6' is not of type 'integer'"),
    ("dataset", (("labels",), ["bladder"]), r"at labels, \['bladder'\] is not of type 'object'"),
    ("training_config", ((), [1, 2]), r"at the top level, \[1, 2\] is not of type 'object'"),
    ("training_config", (("data",), "cases"), r"at data, 'cases' is not of type 'object'"),
    ("model_card", (("weights", "url"), "file:///etc/passwd"), r"at weights.url, 'file:///etc/passwd' does"),
    ("suggestions", (("slices", 0, "slice"), -1), r"at slices\[0\].slice, -1 is less than the minimum"),
    ("label_sidecar", (("labels", 0, "color"), [1, 2]), r"at labels\[0\].color, \[1, 2\] is too short"),
    ("case_cache", (("cases", "a", "role"), "test"), r"at cases.a.role, 'test' is not one of"),
]


def replaced(document: Any, path: tuple, value: Any) -> Any:
    """``document`` with the value at key path ``path`` (keys and list indices) set to ``value``."""
    if not path:
        return value
    document = copy.deepcopy(document)
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return document


@pytest.mark.parametrize(
    ("kind", "change", "phrase"), MALFORMED, ids=[f"{kind}-{phrase[:30]}" for kind, _, phrase in MALFORMED]
)
def test_a_malformed_file_is_refused_naming_file_key_and_expectation(
    kind: str, change: tuple, phrase: str, dataset: Path, sparse_label_map: Path, tmp_path: Path
) -> None:
    document = replaced(valid_documents(dataset)[kind], *change)
    path, read = read_document(kind, document, dataset, sparse_label_map, tmp_path)
    with pytest.raises(AsdsegError, match=phrase) as error:
        read()
    assert str(path) in str(error.value)


def test_the_valid_documents_are_read(dataset: Path, sparse_label_map: Path, tmp_path: Path) -> None:
    """The starting points of the malformed documents are well formed (apart from the case cache,
    whose parts are absent), so each refusal above is the malformed value's."""
    for kind, document in valid_documents(dataset).items():
        _, read = read_document(kind, document, dataset, sparse_label_map, tmp_path)
        if kind == "case_cache":
            with pytest.raises(AsdsegError, match=r"part part01\.npz of the case cache is missing"):
                read()
        else:
            read()


def key_paths(document: Any, prefix: tuple = ()) -> Iterator[tuple]:
    yield prefix
    if isinstance(document, dict):
        for key, value in document.items():
            yield from key_paths(value, (*prefix, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            yield from key_paths(value, (*prefix, index))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)


KINDS = [
    "splits",
    "labelled_slices",
    "dataset",
    "training_config",
    "model_card",
    "suggestions",
    "label_sidecar",
    "case_cache",
]


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_generated_malformed_json_gets_a_clean_error(
    kind: str, data: st.DataObject, dataset: Path, sparse_label_map: Path, tmp_path: Path
) -> None:
    """A valid document with any one value (or the whole) replaced by generated JSON is read or
    refused with the tool's own error, never a traceback."""
    valid = valid_documents(dataset)[kind]
    path_in_document = data.draw(st.sampled_from(list(key_paths(valid))), label="key path")
    document = replaced(valid, path_in_document, data.draw(JSON_VALUES, label="value"))
    path, read = read_document(kind, document, dataset, sparse_label_map, tmp_path)
    try:
        read()
    except AsdsegError as error:
        assert str(path) in str(error) or str(path.parent) in str(error)
