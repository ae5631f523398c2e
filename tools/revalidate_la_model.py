"""Re-measure a shipped LA model after a change to how it is run, not to its weights.

When a card's inference settings change (test-time mirroring turned on, another overlap), the
figures the release wrote no longer describe the model. This evaluates the model as its card
now says on its validation split (the card's ``training.split``) at the original 0.625 mm, and
rewrites what the release measured: the card's ``metrics.validation`` and
``metrics.calibration``, ``validation.csv``, ``calibration.json`` and ``calibration.png``. The
weights and the rest of the card are kept. Nothing is written until the evaluation has
finished. As at release, the confidence map measured is the confidence network's own: a
calibrated map (``la-dan``) is refitted and measured by ``tools/calibrate_la_confidence.py``,
which reads the card's settings too.

    python tools/revalidate_la_model.py --model src/asdseg/models/la-sassnet
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from release_la_model import validate

from asdseg.data_paths import require_la2018
from asdseg.evaluation.model_evaluation import reference_cases
from asdseg.io.json_files import write_json
from asdseg.registry import load_network
from asdseg.registry.model_card import CARD_FILE, ModelCard, validate_card
from asdseg.training.release import calibration_metrics, validation_metrics, write_validation_files


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True, help="the shipped model's folder")
    args = parser.parse_args()
    root = require_la2018()
    shipped = ModelCard.load(args.model / CARD_FILE)
    raw_map = {key: value for key, value in shipped.data.items() if key != "confidence_calibration"}
    card = ModelCard(raw_map, shipped.directory)
    cases = reference_cases(root, card.data["training"]["split"]["validation"])
    evaluation = validate(card.name, card, load_network(card), cases)
    (label,) = (entry.value for entry in card.foreground_labels)
    # Read again: the calibration tool may have written the card meanwhile.
    data = json.loads((args.model / CARD_FILE).read_text(encoding="utf-8"))
    data["metrics"] = {
        **data["metrics"],
        "validation": validation_metrics(evaluation, label),
        "calibration": calibration_metrics(evaluation),
    }
    validate_card(data, str(args.model / CARD_FILE))
    write_validation_files(data, evaluation, args.model)
    write_json(args.model / CARD_FILE, data)
    print(json.dumps(data["metrics"]["validation"], indent=2))


if __name__ == "__main__":
    main()
