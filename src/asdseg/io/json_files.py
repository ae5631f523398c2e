"""Reading the JSON files a user gives the tool (dataset.json, splits, labelled-slices files,
training configs, model cards, slice suggestions, label sidecars), and writing JSON whole.

Each file is parsed and checked against its JSON schema in ``asdseg/schemas`` before any of its
values is used, so that a malformed file, whatever is wrong in it, ends in one kind of error:
the file, the key and what was expected, never a traceback or a value taken for something else
(a JSON string read as a list of case names).
"""

from __future__ import annotations

import json
import math
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.exceptions import best_match

from asdseg.errors import AsdsegError, InputError
from asdseg.io.atomic_write import atomic_path


@cache
def schema(name: str) -> dict[str, Any]:
    """The schema ``asdseg/schemas/<name>.schema.json``."""
    text = resources.files("asdseg").joinpath(f"schemas/{name}.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def key_path(parts: Any) -> str:
    """``labelled_slices[0]`` from jsonschema's path ``["labelled_slices", 0]``."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "the top level"


def check_json(
    value: Any, schema_name: str, source: str | Path, what: str, error: type[AsdsegError] = InputError
) -> None:
    """Raise ``error`` naming ``source``, the key and what the schema expects there when
    ``value`` breaks schema ``schema_name``."""
    problem = best_match(jsonschema.Draft202012Validator(schema(schema_name)).iter_errors(value))
    if problem is not None:
        hint = schema(schema_name).get("hint", "")
        raise error(
            f"{source}: not a valid {what}: at {key_path(problem.absolute_path)}, {problem.message}. {hint}"
        )


#: Parts of a document that report measurements rather than settings: an infinite distance
#: there (HD95 of an empty prediction) is a result, not a typo.
MEASUREMENTS = {"model_card": ("metrics",)}


def non_finite_key(value: Any, parts: tuple = ()) -> tuple | None:
    """The key path of the first NaN or infinity in ``value``. Python's json reads NaN and
    Infinity, which JSON does not have and no setting may be: they pass every bound a schema
    sets and fail later, deep in the engine."""
    if isinstance(value, float) and not math.isfinite(value):
        return parts
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = non_finite_key(item, (*parts, key))
        if found is not None:
            return found
    return None


def read_json(path: str | Path, schema_name: str, what: str, error: type[AsdsegError] = InputError) -> Any:
    """The contents of JSON file ``path``, checked against schema ``schema_name``; a file that
    cannot be read, is not JSON or breaks the schema raises ``error`` naming the file."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as problem:
        raise error(f"{path}: cannot read the {what}: {problem}") from problem
    checked = value
    if isinstance(value, dict) and schema_name in MEASUREMENTS:
        checked = {key: item for key, item in value.items() if key not in MEASUREMENTS[schema_name]}
    where = non_finite_key(checked)
    if where is not None:
        raise error(
            f"{path}: not a valid {what}: at {key_path(where)}, numbers must be finite (not NaN or Infinity)."
        )
    check_json(value, schema_name, path, what, error)
    return value


def write_json(path: str | Path, value: Any, indent: int = 2) -> None:
    """``value`` as JSON (UTF-8, a newline at the end) at ``path``, written atomically: a reader
    finds the old file or the new one, never half of it."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(value, indent=indent) + "\n", encoding="utf-8")
