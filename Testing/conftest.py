"""Shared fixtures: an isolated model home, small models and synthetic volumes."""

from __future__ import annotations

import importlib.util
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from asdseg.active.sparse_labels import SparseLabels, write_sparse_labels
from asdseg.data_paths import LA2018_MISSING, find_la2018
from asdseg.demo.phantom_model import CARD as DEMO_CARD
from asdseg.demo.phantom_model import ensure_demo_model
from asdseg.io.labels import Label
from asdseg.networks import build_network
from asdseg.phantoms import make_phantom, phantom_image
from asdseg.registry import install_model, save_model, user_models_dir
from asdseg.registry.model_card import ModelCard

torch.set_num_threads(2)

# Tests share helpers across the stage folders (``from test_background import ...``): each
# folder is importable, as the flat folder was, whichever file pytest collects first.
for _folder in sorted(Path(__file__).resolve().parent.iterdir()):
    if _folder.is_dir() and not _folder.name.startswith((".", "_")) and str(_folder) not in sys.path:
        sys.path.append(str(_folder))

ROTATED = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


class IntensityClassifier(nn.Module):
    """A fixed network whose answer is known: foreground where the (normalised) image is
    positive, an SDM of -tanh(image) and a confidence of sigmoid(|image|)."""

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "logits": torch.cat([-image, image], dim=1) * 10,
            "sdm": -torch.tanh(image),
            "confidence": torch.sigmoid(image.abs()),
        }


@pytest.fixture(autouse=True)
def model_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty user model folder."""
    home = tmp_path_factory.mktemp("asdseg_home")
    monkeypatch.setenv("ASDSEG_HOME", str(home))
    return home


def tiny_card(name: str = "tiny", sdm: bool = True, confidence: bool = False) -> dict:
    card = {
        **DEMO_CARD,
        "name": name,
        "architecture": {
            "name": "vnet-confidence" if confidence else "vnet",
            "params": {"num_classes": 3, "base_filters": 2, "dropout": 0.0, "sdm_head": sdm},
        },
        "outputs": {"sdm": sdm, "confidence": confidence},
        "inference": {"patch_size": [16, 16, 16], "overlap": 0.25, "blend": "gaussian"},
    }
    if confidence:
        card["architecture"]["params"]["confidence_filters"] = 2
    return card


@pytest.fixture
def tiny_model(tmp_path: Path) -> ModelCard:
    """An untrained 2-filter VNet saved with a valid card: fast, for geometry and I/O tests."""
    torch.manual_seed(0)
    network = build_network("vnet", tiny_card()["architecture"]["params"])
    return save_model(network, tiny_card(), tmp_path / "tiny-model")


@pytest.fixture
def confidence_model(tmp_path: Path) -> ModelCard:
    """An untrained 2-filter VNet with a confidence network (the shape of la-dan's outputs; like
    la-dan's, its card says the confidence network learnt where the segmenter is right)."""
    torch.manual_seed(0)
    card = tiny_card("tiny-confidence", sdm=False, confidence=True)
    card["training"] = {**card.get("training", {}), "config": {"loss": {"confidence_target": "correctness"}}}
    network = build_network("vnet-confidence", card["architecture"]["params"])
    return save_model(network, card, tmp_path / "tiny-confidence")


def attention_card(name: str = "tiny-attention") -> dict:
    """A card for a 4-filter attention U-Net on the phantom labels (16^3 windows)."""
    return {
        **tiny_card(name, sdm=False),
        "architecture": {"name": "attention-unet", "params": {"num_classes": 3, "base_filters": 4}},
    }


@pytest.fixture
def attention_model(tmp_path: Path) -> ModelCard:
    """An untrained attention U-Net saved with a valid card."""
    torch.manual_seed(0)
    card = attention_card()
    network = build_network("attention-unet", card["architecture"]["params"])
    return save_model(network, card, tmp_path / "tiny-attention")


@pytest.fixture
def workspace(tmp_path: Path, model_home: Path) -> Path:
    """Inputs (a phantom, its label, sparse labels) and three installed models: ``tiny`` (two
    foreground labels, SDM head), ``tiny1`` (one foreground label) and ``tiny-attention``."""
    torch.manual_seed(0)
    models = tmp_path / "models"
    single = tiny_card("tiny1")
    single["architecture"]["params"]["num_classes"] = 2
    single["labels"] = single["labels"][:2]
    for card in (tiny_card(), single, attention_card()):
        network = build_network(card["architecture"]["name"], card["architecture"]["params"])
        install_model(save_model(network, card, models / card["name"]).directory / "card.json")
    work = tmp_path / "work"
    work.mkdir()
    image, label = phantom_image(
        make_phantom((24, 22, 20), seed=3),
        spacing=(0.95, 1.05, 1.1),
        origin=(12.5, -40.0, 3.0),
        direction=ROTATED,
    )
    sitk.WriteImage(image, str(work / "img.nii.gz"))
    sitk.WriteImage(label, str(work / "lab.nii.gz"))
    labels = [Label.from_dict(entry) for entry in attention_card()["labels"]]
    sparse = SparseLabels(sitk.GetArrayFromImage(label).transpose(2, 1, 0).astype(np.int64), {4, 9})
    write_sparse_labels(sparse, label, labels, work / "sparse.nii.gz")
    return work


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory: pytest.TempPathFactory) -> ModelCard:
    """The trained phantom model, as the demo installs it (about a minute once per test session)."""
    return ensure_demo_model(tmp_path_factory.mktemp("demo") / "phantom-demo")


@pytest.fixture
def demo_installed(demo_model: ModelCard) -> ModelCard:
    """The trained phantom model, installed in this test's model folder."""
    target = user_models_dir() / demo_model.name
    shutil.copytree(demo_model.directory, target)
    return ModelCard.load(target / "card.json")


@pytest.fixture
def phantom_files(tmp_path: Path) -> tuple[Path, Path]:
    """A phantom with non-trivial spacing, origin and direction written as NIfTI."""
    image, label = phantom_image(
        make_phantom(shape=(40, 36, 30), seed=3),
        spacing=(0.95, 1.05, 1.1),
        origin=(12.5, -40.0, 3.0),
        direction=ROTATED,
    )
    image_path, label_path = tmp_path / "image.nii.gz", tmp_path / "label.nii.gz"
    sitk.WriteImage(image, str(image_path))
    sitk.WriteImage(label, str(label_path))
    return image_path, label_path


def ellipsoid_mask(shape: tuple[int, int, int], centre: tuple, radii: tuple) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    centre = np.asarray(centre)[:, None, None, None]
    radii = np.asarray(radii)[:, None, None, None]
    return (((grid - centre) / radii) ** 2).sum(axis=0) <= 1.0


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll ``condition`` until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


LA2018 = find_la2018()
needs_la2018 = pytest.mark.skipif(LA2018 is None, reason=LA2018_MISSING)


def load_script(relative_path: str) -> ModuleType:
    """A script of the repository that is not in a package (``benchmarks/...``, ``tools/...``),
    imported as a module named after its file (registered in ``sys.modules``, where dataclasses
    look their module up)."""
    path = Path(__file__).resolve().parents[1] / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
