"""What the engine needs in Slicer's Python, checked from package metadata without importing
anything, and the pip arguments that install it without replacing what Slicer or the PyTorch
extension installed (the CUDA build of torch, Slicer's numpy and SimpleITK).

Qt-free and Slicer-free, so the tests check it in any Python.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

#: Asked of the PyTorch extension: MONAI 1.5, the newest for Slicer 5.8's Python 3.9, needs it.
TORCH_REQUIREMENT = ">=2.4.1"
#: Installed by Slicer or the PyTorch extension; pip may use them but never replace them.
PROTECTED_PACKAGES = ("torch", "numpy", "SimpleITK")


def installed_version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def required_packages(requirements_file: str | Path) -> list[Requirement]:
    """The requirement lines of a requirements file (comments and blanks dropped)."""
    lines = Path(requirements_file).read_text(encoding="utf-8").splitlines()
    return [Requirement(line) for line in (line.split("#")[0].strip() for line in lines) if line]


def _unmet(requirement: Requirement) -> bool:
    version = installed_version(requirement.name)
    return version is None or not requirement.specifier.contains(version, prereleases=True)


def missing_requirements(requirements_file: str | Path) -> list[str]:
    """The requirements (torch first) that are not installed, or installed in too old a version."""
    torch = Requirement(f"torch{TORCH_REQUIREMENT}")
    needed = [torch, *required_packages(requirements_file)]
    return [str(requirement) for requirement in needed if _unmet(requirement)]


def protected_constraints() -> list[str]:
    """pip constraint lines that pin the installed protected packages to their versions."""
    pins = ((name, installed_version(name)) for name in PROTECTED_PACKAGES)
    return [f"{name}=={version}" for name, version in pins if version is not None]
