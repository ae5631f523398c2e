"""segment never gives a silently wrong map: an intensity scale does not change it, and a model
that outputs NaN is an error, not an empty map.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from workspace_helpers import SEGMENT, phantom_array, volume

from asdseg.cli import main
from asdseg.io.image_io import read_image


def test_intensity_scale_does_not_change_the_segmentation(workspace: Path) -> None:
    """z-scoring is scale-free: a volume scaled by 1e17 (whose float32 sum of squares overflows)
    must be segmented exactly like the original, not as an empty map."""
    scaled = volume(workspace, "scaled.nii.gz", phantom_array(workspace) * np.float32(1e17))
    for source, output in ((str(workspace / "img.nii.gz"), "a.nii.gz"), (scaled, "b.nii.gz")):
        assert main([*SEGMENT, "-i", source, "-o", str(workspace / output)]) == 0
    first, second = (
        sitk.GetArrayFromImage(read_image(workspace / name)) for name in ("a.nii.gz", "b.nii.gz")
    )
    assert np.count_nonzero(first) > 0
    np.testing.assert_array_equal(first, second)


def test_a_model_that_outputs_nan_is_an_error_not_an_empty_map(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import asdseg.inference.segment

    real_predict = asdseg.inference.segment.predict_volume

    def predict_nan(*args, **kwargs):
        outputs = real_predict(*args, **kwargs)
        outputs["probabilities"][:] = np.nan
        return outputs

    monkeypatch.setattr(asdseg.inference.segment, "predict_volume", predict_nan)
    code = main([*SEGMENT, "-i", str(workspace / "img.nii.gz"), "-o", str(workspace / "o.nii.gz")])
    assert code == 2 and "produced NaN or infinite values" in capsys.readouterr().err
    assert not (workspace / "o.nii.gz").exists()
