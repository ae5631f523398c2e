"""ASDSeg.ui loaded with Qt (PySide6's QUiLoader), checked against what ASDSeg.py looks up.

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

MODULE_DIR = Path(__file__).resolve().parents[1] / "ASDSeg"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "ASDSeg.ui"
MODULE_FILE = MODULE_DIR / "ASDSeg.py"
#: Parameters the widget writes itself instead of through a SlicerParameterName binding.
MANUALLY_BOUND_PARAMETERS = {"modelName"}


@pytest.fixture(scope="module")
def panel():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # no screen on CI
    application = QApplication.instance() or QApplication([])
    ui_file = QFile(str(UI_FILE))
    assert ui_file.open(QFile.OpenModeFlag.ReadOnly)
    loader = QUiLoader()
    widget = loader.load(ui_file)
    ui_file.close()
    assert widget is not None, loader.errorString()
    yield widget
    widget.deleteLater()
    application.processEvents()


def module_tree() -> ast.Module:
    return ast.parse(MODULE_FILE.read_text(encoding="utf-8"))


def ui_names_looked_up() -> set[str]:
    """Every ``self.ui.<name>`` in ASDSeg.py."""
    return {
        node.attr
        for node in ast.walk(module_tree())
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "ui"
        and isinstance(node.value.value, ast.Name)
        and node.value.value.id == "self"
    }


def parameter_fields() -> dict[str, list[str] | None]:
    """Fields of ASDSegParameterNode, with the values of their Choice(...) when they have one."""
    parameter_class = next(
        node
        for node in module_tree().body
        if isinstance(node, ast.ClassDef) and node.name == "ASDSegParameterNode"
    )
    fields: dict[str, list[str] | None] = {}
    for statement in parameter_class.body:
        if isinstance(statement, ast.AnnAssign):
            choices = [
                [element.value for element in call.args[0].elts]
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


def test_every_widget_the_module_looks_up_exists(panel) -> None:
    names = ui_names_looked_up()
    assert {"segmentButton", "progressBar", "statusLabel", "exportButton"} <= names
    missing = sorted(name for name in names if panel.findChild(QObject, name) is None)
    assert not missing, f"ASDSeg.py uses widgets that ASDSeg.ui does not have: {missing}"


def test_every_parameter_is_bound_to_one_widget_and_every_binding_to_a_parameter(panel) -> None:
    fields = parameter_fields()
    bound = bound_widgets(panel)
    assert set(bound) == set(fields) - MANUALLY_BOUND_PARAMETERS


def test_choice_parameters_offer_exactly_their_choices(panel) -> None:
    bound = bound_widgets(panel)
    for name, choices in parameter_fields().items():
        if choices is None:
            continue
        combo = bound[name]
        assert isinstance(combo, QComboBox), f"{name} is a choice; bind it to a QComboBox"
        assert [combo.itemText(index) for index in range(combo.count())] == choices


def test_slicer_widgets_are_declared_as_custom_widgets() -> None:
    """Slicer builds the panel from these declarations; an undeclared class would not load."""
    root = ElementTree.parse(UI_FILE).getroot()
    declared = {element.findtext("class") for element in root.iter("customwidget")}
    used = {element.get("class") for element in root.iter("widget")}
    slicer_classes = {name for name in used if name.startswith(("qMRML", "qSlicer", "ctk"))}
    assert slicer_classes <= declared
    assert root.find("widget").get("class") == "qMRMLWidget"
