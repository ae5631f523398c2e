"""Each module's .ui loaded with Qt (PySide6's QUiLoader), checked against what its .py looks up.

Slicer's own widgets (qMRML*, ctk*) are not available outside Slicer; QUiLoader builds them as
the base class their <customwidget> entry names, which keeps their object names and dynamic
properties, and that is what these checks need.
"""

from __future__ import annotations

import ast
import os
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from PySide6.QtCore import QFile, QObject
from PySide6.QtUiTools import QUiLoader
from PySide6.QtWidgets import QApplication, QComboBox

ROOT = Path(__file__).resolve().parents[2]
#: Per module: the parameters its widget writes itself instead of through a SlicerParameterName
#: binding (``roi``: ASDSegLib.panel.ParameterNodeWidget binds it, see there), and widgets the test requires.
MODULES = {
    "ASDSeg": ({"modelName", "roi"}, {"segmentButton", "progressBar", "statusLabel", "exportButton"}),
    "ActiveAnnotate": (
        {"modelName", "roi"},
        {
            "suggestButton",
            "suggestionsTable",
            "markLabelledButton",
            "fineTuneButton",
            "progressBar",
            "exportButton",
        },
    ),
}


#: The widget base both modules' widgets build on: its ``self.ui`` lookups are each module's too.
SHARED_WIDGET_FILES = (ROOT / "ASDSeg" / "ASDSegLib" / "panel.py",)


def ui_file(module: str) -> Path:
    return ROOT / module / "Resources" / "UI" / f"{module}.ui"


@pytest.fixture(scope="module", params=sorted(MODULES))
def module(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def panel(module: str):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # no screen on CI
    application = QApplication.instance() or QApplication([])
    file = QFile(str(ui_file(module)))
    assert file.open(QFile.OpenModeFlag.ReadOnly)
    loader = QUiLoader()
    widget = loader.load(file)
    file.close()
    assert widget is not None, loader.errorString()
    yield widget
    widget.deleteLater()
    application.processEvents()


def module_tree(module: str) -> ast.Module:
    return ast.parse((ROOT / module / f"{module}.py").read_text(encoding="utf-8"))


def ui_names_looked_up(module: str) -> set[str]:
    """Every ``self.ui.<name>`` in the module's .py and in the widget base it builds on."""
    shared = [ast.parse(path.read_text(encoding="utf-8")) for path in SHARED_WIDGET_FILES]
    trees = [module_tree(module), *shared]
    return {
        node.attr
        for tree in trees
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "ui"
        and isinstance(node.value.value, ast.Name)
        and node.value.value.id == "self"
    }


def parameter_fields(module: str) -> dict[str, list[str] | None]:
    """Fields of the module's parameter node class, with the values of their Choice(...) when
    they have one (a list literal or a module-level list constant)."""
    tree = module_tree(module)
    constants = {
        target.id: [element.value for element in statement.value.elts]
        for statement in tree.body
        if isinstance(statement, ast.Assign) and isinstance(statement.value, ast.List)
        for target in statement.targets
        if isinstance(target, ast.Name)
    }
    parameter_class = next(
        node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == f"{module}ParameterNode"
    )
    fields: dict[str, list[str] | None] = {}
    for statement in parameter_class.body:
        if isinstance(statement, ast.AnnAssign):
            choices = [
                [element.value for element in call.args[0].elts]
                if isinstance(call.args[0], ast.List)
                else constants[call.args[0].id]
                for call in ast.walk(statement.annotation)
                if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "Choice"
            ]
            fields[statement.target.id] = choices[0] if choices else None
    return fields


def bound_widgets(panel) -> dict[str, QObject]:
    widgets = {}
    for child in panel.findChildren(QObject):
        name = child.property("SlicerParameterName")
        if name:
            assert name not in widgets, f"two widgets bound to {name!r}"
            widgets[name] = child
    return widgets


def test_every_widget_the_module_looks_up_exists(module: str, panel) -> None:
    names = ui_names_looked_up(module)
    assert MODULES[module][1] <= names
    missing = sorted(name for name in names if panel.findChild(QObject, name) is None)
    assert not missing, f"{module}.py uses widgets that {module}.ui does not have: {missing}"


def test_every_parameter_is_bound_to_one_widget_and_every_binding_to_a_parameter(module: str, panel) -> None:
    fields = parameter_fields(module)
    bound = bound_widgets(panel)
    assert set(bound) == set(fields) - MODULES[module][0]


def test_choice_parameters_offer_exactly_their_choices(module: str, panel) -> None:
    bound = bound_widgets(panel)
    for name, choices in parameter_fields(module).items():
        if choices is None:
            continue
        combo = bound[name]
        assert isinstance(combo, QComboBox), f"{name} is a choice; bind it to a QComboBox"
        assert [combo.itemText(index) for index in range(combo.count())] == choices


def test_the_roi_selector_offers_markups_rois_only(module: str, panel) -> None:
    """The parameter node's ``roi`` is annotated with a core base class (Slicer 5.8 loads the ROI
    class later), so the .ui's node types are what keeps the selector to ROIs."""
    selector = panel.findChild(QObject, "roiSelector")
    assert selector.property("nodeTypes") == ["vtkMRMLMarkupsROINode"]
    assert selector.property("SlicerParameterName") is None  # connectGui would reset the types


def test_slicer_widgets_are_declared_as_custom_widgets(module: str) -> None:
    """Slicer builds the panel from these declarations; an undeclared class would not load."""
    root = ElementTree.parse(ui_file(module)).getroot()
    declared = {element.findtext("class") for element in root.iter("customwidget")}
    used = {element.get("class") for element in root.iter("widget")}
    slicer_classes = {name for name in used if name.startswith(("qMRML", "qSlicer", "ctk"))}
    assert slicer_classes <= declared
    assert root.find("widget").get("class") == "qMRMLWidget"


def test_active_annotate_offers_every_query_strategy_of_the_engine() -> None:
    """ActiveAnnotate.py keeps its own list, since Slicer loads it before the engine's
    dependencies may be installed; it must not drift from the engine's, in names or order."""
    from asdseg.active.strategies import DEFAULT_STRATEGY, STRATEGIES

    assert parameter_fields("ActiveAnnotate")["strategy"] == list(STRATEGIES)
    default = next(
        statement.value.value
        for node in module_tree("ActiveAnnotate").body
        if isinstance(node, ast.ClassDef) and node.name == "ActiveAnnotateParameterNode"
        for statement in node.body
        if isinstance(statement, ast.AnnAssign) and statement.target.id == "strategy"
    )
    assert default == DEFAULT_STRATEGY


def calls_on(tree: ast.AST, function: str, receiver: str) -> list[tuple[str, list]]:
    """(method, literal arguments) of each ``self.<receiver>.<method>(...)`` in ``function``."""
    body = next(
        node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name == function
    )
    return [
        (node.func.attr, [getattr(argument, "value", None) for argument in node.args])
        for node in ast.walk(body)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Attribute)
        and node.func.value.attr == receiver
    ]


def test_the_embedded_segment_editor_is_bound_to_the_rounds_nodes_only() -> None:
    """ActiveAnnotate's Segment Editor hides its own segmentation and volume selectors (so the
    annotator cannot paint into another node) and is bound to the round's labels and volume, or
    to nothing. qMRMLSegmentEditorWidget in Slicer 5.8 and 5.10 (read in their source) has these
    setters; the "master volume" names they replace were deprecated in 5.2."""
    tree = module_tree("ActiveAnnotate")
    setup = calls_on(tree, "setupPanel", "segmentEditorWidget")
    assert ("setSegmentationNodeSelectorVisible", [False]) in setup
    assert ("setSourceVolumeNodeSelectorVisible", [False]) in setup
    every_call = {
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    }
    assert not {name for name in every_call if "MasterVolume" in name}
    binding = [method for method, _ in calls_on(tree, "bindSegmentEditor", "segmentEditorWidget")]
    assert binding == ["setSegmentationNode", "setSourceVolumeNode"]
    setters = {
        function.name
        for function in ast.walk(tree)
        if isinstance(function, ast.FunctionDef)
        for node in ast.walk(function)
        if isinstance(node, ast.Call)
        and getattr(node.func, "attr", "") in {"setSegmentationNode", "setSourceVolumeNode"}
    }
    assert setters == {"bindSegmentEditor", "onSceneStartClose"}
