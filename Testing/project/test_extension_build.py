"""The Slicer extension's CMake files ship every file the modules and the engine need.

A file missing from a CMake list is silently absent from the installed extension, so these
lists are checked against the source tree.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULES = ("ASDSeg", "ActiveAnnotate")
#: Engine dependencies a Slicer installation already provides (or, for matplotlib, that only
#: the command-line demo's figures use), so Resources/requirements.txt does not list them.
PROVIDED_IN_SLICER = {"torch", "numpy", "SimpleITK", "matplotlib"}


def cmake_list(cmake_file: Path, variable: str, substitutions: dict[str, str] | None = None) -> list[str]:
    text = cmake_file.read_text(encoding="utf-8")
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.DOTALL)
    assert match, f"{cmake_file} does not set {variable}"
    entries = match.group(1).split()
    for name, value in (substitutions or {}).items():
        entries = [entry.replace("${" + name + "}", value) for entry in entries]
    return entries


def files_under(folder: Path, pattern: str) -> set[str]:
    return {
        path.relative_to(folder).as_posix()
        for path in folder.rglob(pattern)
        if "__pycache__" not in path.parts and "Testing" not in path.relative_to(folder).parts
    }


def test_each_module_lists_every_script_and_resource() -> None:
    for module in MODULES:
        folder = ROOT / module
        cmake_file = folder / "CMakeLists.txt"
        scripts = cmake_list(cmake_file, "MODULE_PYTHON_SCRIPTS", {"MODULE_NAME": module})
        resources = cmake_list(cmake_file, "MODULE_PYTHON_RESOURCES", {"MODULE_NAME": module})
        assert set(scripts) == files_under(folder, "*.py")
        shipped = {
            path for path in files_under(folder / "Resources", "*") if (folder / "Resources" / path).is_file()
        }
        assert set(resources) == {f"Resources/{path}" for path in shipped}
        text = cmake_file.read_text(encoding="utf-8")
        assert "WITH_GENERIC_TESTS" in text
        assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text


def test_the_engine_list_matches_the_package() -> None:
    cmake_file = ROOT / "src" / "CMakeLists.txt"
    scripts = cmake_list(cmake_file, "ENGINE_PYTHON_SCRIPTS")
    resources = cmake_list(cmake_file, "ENGINE_PYTHON_RESOURCES")
    package = ROOT / "src"
    assert set(scripts) == {f"asdseg/{path}" for path in files_under(package / "asdseg", "*.py")}
    data_files = {f"asdseg/{path}" for path in files_under(package / "asdseg", "*.json")}
    models = package / "asdseg" / "models"
    data_files |= {
        f"asdseg/models/{path}" for path in files_under(models, "*.*") if (models / path).is_file()
    } - {"asdseg/models/.gitkeep"}
    assert set(resources) == data_files
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    packaged = project["tool"]["setuptools"]["package-data"]["asdseg"]
    for path in data_files:  # the wheel ships them too
        assert any(Path(path).relative_to("asdseg").match(pattern) for pattern in packaged), path


def test_the_extension_declares_its_metadata_modules_and_pytorch() -> None:
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    for variable in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS"):
        assert re.search(rf'set\(EXTENSION_{variable} "[^"]+"\)', text), variable
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in text
    for folder in ("src", *MODULES):
        assert f"add_subdirectory({folder})" in text


def test_slicer_requirements_are_the_engine_dependencies_slicer_lacks() -> None:
    def name(requirement: str) -> str:
        return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    engine = {name(requirement) for requirement in project["dependencies"]}
    lines = (ROOT / "ASDSeg" / "Resources" / "requirements.txt").read_text(encoding="utf-8").splitlines()
    listed = {name(line.strip()) for line in lines if line.strip() and not line.startswith("#")}
    assert listed == engine - PROVIDED_IN_SLICER


def cmake_setting(name: str) -> str:
    match = re.search(rf'set\({name} "(.*?)"\)', (ROOT / "CMakeLists.txt").read_text(encoding="utf-8"))
    assert match, f"CMakeLists.txt does not set {name}"
    return match.group(1)


def extension_name() -> str:
    match = re.search(
        r"^project\((\w+)\)", (ROOT / "CMakeLists.txt").read_text(encoding="utf-8"), re.MULTILINE
    )
    assert match, "CMakeLists.txt has no project()"
    return match.group(1)


def catalog_entry() -> dict:
    return json.loads((ROOT / f"{extension_name()}.json").read_text(encoding="utf-8"))


def test_the_extensions_index_entry_matches_the_extension() -> None:
    """<extension name>.json is the file to submit to the Slicer Extensions Index (catalog entry
    schema v1.0.1: only these keys, category and scm_url required). The index's
    check_description_files.py wants the file named after CMakeLists.txt's project(), which is
    the name without the "Slicer" prefix the repository keeps."""
    assert extension_name() == "ASDSeg"
    entry = catalog_entry()
    allowed = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies"}
    assert set(entry) <= allowed | {"build_subdirectory", "enabled", "tier"}
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.1.json#")
    assert entry["category"] == cmake_setting("EXTENSION_CATEGORY")
    assert entry["build_dependencies"] == cmake_setting("EXTENSION_DEPENDS").split()
    assert entry["scm_url"].removesuffix(".git") in cmake_setting("EXTENSION_HOMEPAGE")
    assert "slicer" in entry["scm_url"].removesuffix(".git").rsplit("/", 1)[1].lower()


def test_icon_and_screenshot_urls_are_this_repositorys_images() -> None:
    """The catalog downloads them; each must be the raw URL of a PNG this repository tracks, at
    the branch the catalog builds."""
    entry = catalog_entry()
    repository = entry["scm_url"].removesuffix(".git").removeprefix("https://github.com/")
    prefix = f"https://raw.githubusercontent.com/{repository}/{entry['scm_revision']}/"
    urls = [cmake_setting("EXTENSION_ICONURL"), *cmake_setting("EXTENSION_SCREENSHOTURLS").split()]
    assert urls[0] == f"{prefix}ASDSeg/Resources/Icons/ASDSeg.png"
    for url in urls:
        assert url.startswith(prefix), url
        image = ROOT / url.removeprefix(prefix)
        assert image.is_file(), url
        assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", url


def test_the_repository_root_has_the_codes_licence() -> None:
    """The index requires a licence file at the root; it must be the licence pyproject.toml
    declares (the weights' terms are in their model cards)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == "Apache-2.0"  # an SPDX expression (PEP 639)
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
