"""Off the happy path: every command refuses bad input with exit 2 and a message naming the
file or option and the problem, without a traceback, and leaves the disk as it was.

The matrix runs ``asdseg`` in-process (an uncaught exception fails the test) against a
workspace of small volumes and an isolated model folder, and compares every file under both
before and after the run: nothing new, nothing changed, nothing removed.

The tables, one per command, are in the bad_input_*.py modules beside this file.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bad_input_active_learning import FINETUNE_CASES, SUGGEST_CASES
from bad_input_evaluate import EVALUATE_CASES
from bad_input_models import MODELS_CASES, RELEASE_CASES
from bad_input_segment import SEGMENT_CASES
from bad_input_train import DEMO_CASES, TRAIN_CASES
from workspace_helpers import Cases, snapshot

from asdseg.cli import main
from asdseg.registry import available_models, user_models_dir

#: One table per command.
BAD_INPUT: dict[str, Cases] = {
    "segment": SEGMENT_CASES,
    "evaluate": EVALUATE_CASES,
    "models": MODELS_CASES,
    "train": TRAIN_CASES,
    "release": RELEASE_CASES,
    "suggest": SUGGEST_CASES,
    "finetune": FINETUNE_CASES,
    "demo": DEMO_CASES,
}


@pytest.mark.parametrize(
    ("command", "case"), [(command, case) for command, table in BAD_INPUT.items() for case in sorted(table)]
)
def test_bad_input_is_refused_cleanly(
    command: str, case: str, workspace: Path, model_home: Path, capsys: pytest.CaptureFixture
) -> None:
    make_argv, fragments = BAD_INPUT[command][case]
    argv = make_argv(workspace)
    before = snapshot(workspace, model_home)
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse refuses options this way
        code = exit_.code
    error = capsys.readouterr().err
    assert code == 2, error
    assert "Traceback" not in error
    for fragment in fragments:
        assert fragment in error, (fragment, error)
    assert snapshot(workspace, model_home) == before, "a refused run must leave every file as it was"


def test_a_broken_user_card_is_skipped_with_a_warning(workspace: Path, capsys: pytest.CaptureFixture) -> None:
    broken = user_models_dir() / "broken"
    broken.mkdir()
    (broken / "card.json").write_text("{")
    assert main(["models", "list"]) == 0
    captured = capsys.readouterr()
    assert "tiny-attention" in captured.out and "la-dan" in captured.out
    assert "skipping a broken model" in captured.err and str(broken / "card.json") in captured.err
    assert "broken" not in available_models(warn=lambda message: None)
