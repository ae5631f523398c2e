"""Both modules load in 3D Slicer 5.8 and 5.10+, and from a fresh source checkout.

Slicer 5.8 instantiates modules in the order of their names (``instantiateModules`` walks a
QMap, Base/QTCore/qSlicerAbstractModuleFactoryManager.cxx) and runs a scripted module's file when
it instantiates it. A loadable module's Python classes (its MRML and logic libraries:
``vtkMRMLMarkups*``, ``vtkSlicer*ModuleLogic``, ``qSlicer*Module*``...) join the ``slicer``
namespace only when that module is instantiated (``importModulePythonExtensions``,
Base/QTCore/qSlicerScriptedUtils.cxx). "ASDSeg" and "ActiveAnnotate" sort before "Markups" and
"Segmentations", so what their files evaluate while Slicer runs them may take from ``slicer``
only what it has from the start: among the ``vtkMRML*`` classes, those of MRML core
(``slicer_5_8_mrml_core_classes.txt``, generated from Slicer's source at v5.8.0). In 5.8
``vtkMRMLMarkupsROINode`` is a Markups module class; 5.10 moved it into MRML core.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_FOLDERS = ("ASDSeg", "ActiveAnnotate")
#: Everything of the two modules that Slicer runs in its own process.
SLICER_SIDE_FILES = sorted(path for folder in MODULE_FOLDERS for path in (ROOT / folder).rglob("*.py"))
CORE_CLASSES_FILE = Path(__file__).with_name("slicer_5_8_mrml_core_classes.txt")
#: Classes 5.8 adds to ``slicer`` only when it loads the module that defines them.
LOADED_WITH_A_MODULE = re.compile(r"vtkMRMLMarkups|vtkSlicer|vtkMRMLSegmentEditor|qSlicer.*Module")
#: Class decorators that evaluate the class's annotations (typing.get_type_hints) at once.
ANNOTATION_READERS = {"parameterNodeWrapper", "parameterPack"}


def mrml_core_classes() -> set[str]:
    lines = CORE_CLASSES_FILE.read_text(encoding="utf-8").splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def missing_at_import(name: str, core: set[str]) -> bool:
    """True for a name that ``slicer`` lacks while Slicer 5.8 runs a scripted module's file."""
    if LOADED_WITH_A_MODULE.match(name):
        return True
    return name.startswith("vtkMRML") and name not in core


def _decorator_name(decorator: ast.expr) -> str:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")


def _annotation(node: ast.expr) -> ast.expr:
    """A quoted annotation as the expression it names."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        expression = ast.parse(node.value, mode="eval").body
        return ast.increment_lineno(expression, node.lineno - 1)
    return node


def _function_header(function: ast.FunctionDef | ast.AsyncFunctionDef, postponed: bool) -> Iterator[ast.AST]:
    """What ``def`` evaluates: decorators, defaults, and annotations unless postponed."""
    yield from function.decorator_list
    yield from function.args.defaults
    yield from (default for default in function.args.kw_defaults if default is not None)
    if not postponed:
        arguments = function.args
        every = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
        every += [argument for argument in (arguments.vararg, arguments.kwarg) if argument]
        yield from (argument.annotation for argument in every if argument.annotation)
        if function.returns:
            yield function.returns


def run_on_import(statements: list[ast.stmt], postponed: bool, annotations_read: bool) -> Iterator[ast.AST]:
    """The nodes Python evaluates when it runs ``statements``: everything but function bodies.
    ``postponed``: the file has ``from __future__ import annotations``; ``annotations_read``: the
    enclosing class's decorator evaluates its annotations anyway."""
    for statement in statements:
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from _function_header(statement, postponed)
        elif isinstance(statement, ast.ClassDef):
            yield from (*statement.decorator_list, *statement.bases, *statement.keywords)
            reads = any(
                _decorator_name(decorator) in ANNOTATION_READERS for decorator in statement.decorator_list
            )
            yield from run_on_import(statement.body, postponed, reads)
        elif isinstance(statement, ast.AnnAssign):
            if annotations_read or not postponed:
                yield _annotation(statement.annotation)
            if statement.value is not None:
                yield statement.value
        else:
            yield from _evaluated_parts(statement, postponed)


def _evaluated_parts(node: ast.AST, postponed: bool) -> Iterator[ast.AST]:
    """A statement other than ``def``/``class``: itself (for imports), its expressions and the
    statements nested in it (``if``, ``try``, ``with`` bodies run on import too)."""
    yield node
    for _, value in ast.iter_fields(node):
        for child in value if isinstance(value, list) else [value]:
            if isinstance(child, ast.stmt):
                yield from run_on_import([child], postponed, False)
            elif isinstance(child, ast.expr):
                yield child
            elif isinstance(child, ast.AST):
                yield from _evaluated_parts(child, postponed)


def _walk_evaluated(node: ast.AST) -> Iterator[ast.AST]:
    """``ast.walk`` without lambda bodies, which run only when called."""
    yield node
    for child in ast.iter_child_nodes(node):
        if isinstance(node, ast.Lambda) and child is node.body:
            continue
        yield from _walk_evaluated(child)


def names_taken_from_slicer_on_import(source: str) -> list[tuple[int, str]]:
    """(line, name) for each ``from slicer import NAME`` and ``slicer.NAME`` that runs on import."""
    tree = ast.parse(source)
    postponed = any(
        isinstance(statement, ast.ImportFrom)
        and statement.module == "__future__"
        and any(alias.name == "annotations" for alias in statement.names)
        for statement in tree.body
    )
    slicer_names = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
        if alias.name == "slicer"
    }
    taken = []
    for evaluated in run_on_import(tree.body, postponed, False):
        for node in _walk_evaluated(evaluated):
            if isinstance(node, ast.ImportFrom) and node.module == "slicer" and node.level == 0:
                taken += [(node.lineno, alias.name) for alias in node.names]
            elif isinstance(node, ast.Attribute) and getattr(node.value, "id", None) in slicer_names:
                taken.append((node.lineno, node.attr))
    return sorted(set(taken))


def test_the_core_class_list_is_slicer_5_8s() -> None:
    """A sanity check of the tracked list: it has the core classes the modules rely on and not
    the Markups module's ROI class (which 5.10 moved into core)."""
    core = mrml_core_classes()
    assert {"vtkMRMLScalarVolumeNode", "vtkMRMLSegmentationNode", "vtkMRMLDisplayableNode"} <= core
    assert "vtkMRMLMarkupsROINode" not in core
    assert len(core) > 90


SCANNER_CASES = {
    "from-import at module level": (
        "from slicer import vtkMRMLMarkupsROINode",
        [(1, "vtkMRMLMarkupsROINode")],
    ),
    "attribute at module level": (
        "import slicer\nNODE = slicer.vtkSlicerMarkupsLogic",
        [(2, "vtkSlicerMarkupsLogic")],
    ),
    "inside a function body": ("import slicer\ndef f():\n    return slicer.vtkMRMLMarkupsROINode()", []),
    "from-import in a function": ("def f():\n    from slicer import qSlicerMarkupsModule", []),
    "core class": ("from slicer import vtkMRMLScalarVolumeNode", [(1, "vtkMRMLScalarVolumeNode")]),
    "decorator": (
        "import slicer\n@slicer.qSlicerSegmentationsModule\ndef f(): pass",
        [(2, "qSlicerSegmentationsModule")],
    ),
    "default argument": (
        "import slicer\ndef f(x=slicer.vtkMRMLSegmentEditorNode): pass",
        [(2, "vtkMRMLSegmentEditorNode")],
    ),
    "postponed function annotation": (
        "from __future__ import annotations\nimport slicer\ndef f(x: slicer.vtkMRMLMarkupsROINode): pass",
        [],
    ),
    "annotation read by parameterNodeWrapper": (
        "from __future__ import annotations\nimport slicer\n@parameterNodeWrapper\nclass P:\n"
        "    roi: slicer.vtkMRMLMarkupsROINode",
        [(5, "vtkMRMLMarkupsROINode")],
    ),
    "postponed annotation of a plain class": (
        "from __future__ import annotations\nimport slicer\nclass P:\n    roi: slicer.vtkMRMLMarkupsROINode",
        [],
    ),
    "quoted annotation read by parameterNodeWrapper": (
        "import slicer\n@parameterNodeWrapper\nclass P:\n    roi: 'slicer.vtkMRMLMarkupsROINode'",
        [(4, "vtkMRMLMarkupsROINode")],
    ),
    "lambda body": ("import slicer\nmake = lambda: slicer.vtkSlicerMarkupsLogic()", []),
    "if body at module level": (
        "import slicer\nif True:\n    X = slicer.vtkSlicerVolumesLogic",
        [(3, "vtkSlicerVolumesLogic")],
    ),
}


@pytest.mark.parametrize("case", sorted(SCANNER_CASES))
def test_the_scanner_finds_what_runs_on_import_and_only_that(case: str) -> None:
    source, expected = SCANNER_CASES[case]
    assert names_taken_from_slicer_on_import(textwrap.dedent(source)) == expected


@pytest.mark.parametrize("path", SLICER_SIDE_FILES, ids=lambda path: str(path.relative_to(ROOT)))
def test_nothing_that_runs_on_import_needs_a_module_slicer_5_8_loads_later(path: Path) -> None:
    core = mrml_core_classes()
    taken = names_taken_from_slicer_on_import(path.read_text(encoding="utf-8"))
    missing = [f"line {line}: slicer.{name}" for line, name in taken if missing_at_import(name, core)]
    assert not missing, f"{path.name} takes from slicer on import what 5.8 does not have yet: {missing}"


#: Run in a child Python: the interpreter's own packages and slicer-core, this checkout's module
#: folders appended to sys.path as Slicer does for "Additional module paths", and no asdseg
#: (the test environment's editable install put out of reach).
FRESH_CHECKOUT = """
import importlib, importlib.util, json, sys
source_tree = sys.argv[1]
sys.path[:] = [entry for entry in sys.path if not entry.startswith(source_tree)]
sys.meta_path[:] = [finder for finder in sys.meta_path if "editable" not in type(finder).__module__]
before = importlib.util.find_spec("asdseg") is not None
sys.path += sys.argv[3:]
importlib.import_module(sys.argv[2])
import asdseg
print(json.dumps({"asdseg_before": before, "asdseg": asdseg.__file__}))
"""


@pytest.mark.parametrize("library", ["ASDSegLib.segmentation_logic", "ActiveAnnotateLib.annotation_logic"])
def test_each_module_library_opens_from_a_fresh_checkout(library: str) -> None:
    """Opening a module from a source checkout (nothing installed) must find the engine in
    ``src/`` before any of the module's code imports it."""
    folders = [str(ROOT / folder) for folder in MODULE_FOLDERS]
    command = [sys.executable, "-c", FRESH_CHECKOUT, str(ROOT / "src"), library, *folders]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT.parent, timeout=300)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.splitlines()[-1])
    assert found["asdseg_before"] is False
    assert Path(found["asdseg"]).resolve().is_relative_to(ROOT / "src" / "asdseg")


@pytest.mark.parametrize("module", MODULE_FOLDERS)
def test_each_module_file_makes_the_engine_importable_before_anything_imports_it(module: str) -> None:
    """The module files themselves need Slicer's Qt (not in slicer-core), so this part is read:
    they import the engine only inside functions, and import ASDSegLib (whose import puts a
    source checkout's engine on sys.path) on import, before anything can call those functions."""
    tree = ast.parse((ROOT / module / f"{module}.py").read_text(encoding="utf-8"))
    top_level_imports = [
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in tree.body
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    ]
    assert not [name for name in top_level_imports if name and name.split(".")[0] == "asdseg"]
    assert {"ASDSegLib", "ASDSeg"} & {name.split(".")[0] for name in top_level_imports if name}
