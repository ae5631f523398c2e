"""Colours and standard codes for the structures a dataset's label names can be recognised as.

A dataset names its labels in its own words ("Bladder", "urinary_bladder"). Where a name is one
of the structures below, its label gets a fixed colour and SNOMED CT codes, so that Slicer shows
it with the standard terminology; any other name keeps the dataset's words and gets a colour of
its own from a colour-blind-safe palette (Okabe and Ito), without codes.
"""

from __future__ import annotations

import re

from asdseg.io.labels import Label

ANATOMICAL_STRUCTURE = {"scheme": "SCT", "value": "123037004", "meaning": "Anatomical Structure"}

#: Recognised structure -> (colour, SNOMED CT type code, its meaning).
KNOWN_STRUCTURES: dict[str, tuple[tuple[int, int, int], str, str]] = {
    "urinary bladder": ((240, 200, 60), "89837001", "Urinary bladder"),
    "prostate": ((86, 180, 233), "41216001", "Prostate"),
    "rectum": ((213, 94, 0), "34402009", "Rectum"),
    "left atrium": ((220, 60, 60), "82471001", "Left atrium"),
}
#: Other ways datasets spell the structures above.
SYNONYMS = {"bladder": "urinary bladder", "prostate gland": "prostate"}
#: Colours for labels whose names are not recognised (Okabe-Ito, black left out).
PALETTE = (
    (230, 159, 0),
    (0, 158, 115),
    (0, 114, 178),
    (204, 121, 167),
    (240, 228, 66),
    (86, 180, 233),
    (213, 94, 0),
)


def recognised_structure(name: str) -> str | None:
    """The key of :data:`KNOWN_STRUCTURES` a label name stands for, ignoring case, ``_`` and ``-``."""
    words = re.sub(r"[\s_\-]+", " ", name).strip().lower()
    words = SYNONYMS.get(words, words)
    return words if words in KNOWN_STRUCTURES else None


def named_label(value: int, name: str) -> Label:
    """A label with the dataset's name, and the recognised structure's colour and codes."""
    structure = recognised_structure(name)
    if structure is None:
        colour = (0, 0, 0) if value == 0 else PALETTE[(value - 1) % len(PALETTE)]
        return Label(value, name, colour)
    colour, code, meaning = KNOWN_STRUCTURES[structure]
    structure_type = {"scheme": "SCT", "value": code, "meaning": meaning}
    return Label(value, name, colour, {"category": ANATOMICAL_STRUCTURE, "type": structure_type})
