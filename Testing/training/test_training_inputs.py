"""What training starts from: the default config trains on the phantoms, and an image with one
value everywhere is named before training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from asdseg.training.config import DEFAULT_NETWORKS, RECIPES, config_from_dict
from asdseg.training.data import load_split
from asdseg.training.trainer import Trainer


@pytest.mark.parametrize("recipe", RECIPES)
def test_the_default_config_trains_on_the_phantoms(recipe: str, tmp_path: Path) -> None:
    """Every setting left at its default (network, labels, classes) except the sizes that make
    a step fast: the phantoms it trains on must fit the network it builds."""
    config = config_from_dict(
        {
            "recipe": recipe,
            "steps": 1,
            "patch_size": [16, 16, 16],
            "batch_size": 4,
            "labelled_per_batch": 2,
            "data": {"labelled": 1, "validation": 1, "cases": 3, "phantom_shape": [20, 20, 20]},
        }
    )
    assert config.network == DEFAULT_NETWORKS[recipe]
    split = load_split(config.data, config.network["params"]["num_classes"])
    assert max(int(case.label.max()) for case in split.labelled) == 1
    result = Trainer(config, tmp_path, device="cpu").run(show_progress=False)
    assert result.model is not None and np.isfinite(result.history[-1]["loss"])


def test_an_image_with_one_value_everywhere_is_named_before_training() -> None:
    from asdseg.training.data import Case, CaseSplit, constant_images

    varied = Case("varied", np.arange(8, dtype=np.float32).reshape(2, 2, 2), None)
    blank = Case("blank", np.zeros((2, 2, 2), dtype=np.float32), None)
    assert constant_images(CaseSplit(labelled=[varied], unlabelled=[blank], validation=[])) == ["blank"]
