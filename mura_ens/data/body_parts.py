"""The one table from the words a DICOM header uses for a body part to the seven MURA parts.

:data:`BODY_PART_SYNONYMS` maps a phrase (upper case, words separated by one
space) to one of ``BODY_PARTS``. :func:`map_body_part` looks for the phrases,
case-insensitively and as whole words, first in *Body Part Examined*
(0018,0015), then in *Study Description* (0008,1030), then in *Series
Description* (0008,103E); the first of these that names exactly one part
decides. A text naming two different parts (``HAND AND WRIST``) decides
nothing (the next text is tried), so no study is filed under a guess.

Words such as ``ARM`` or ``RADIUS`` alone are deliberately absent: they could
mean more than one MURA part. docs/dicom.md shows the table.
"""

from __future__ import annotations

import re
from typing import NamedTuple

#: Phrase (upper case, single spaces) -> MURA body part. Whole words only: ``HANDS`` is listed on its own.
BODY_PART_SYNONYMS: dict[str, str] = {
    # XR_ELBOW
    "ELBOW": "XR_ELBOW",
    "ELBOWS": "XR_ELBOW",
    "OLECRANON": "XR_ELBOW",
    # XR_FINGER
    "FINGER": "XR_FINGER",
    "FINGERS": "XR_FINGER",
    "THUMB": "XR_FINGER",
    "THUMBS": "XR_FINGER",
    "DIGIT": "XR_FINGER",
    "DIGITS": "XR_FINGER",
    # XR_FOREARM
    "FOREARM": "XR_FOREARM",
    "FOREARMS": "XR_FOREARM",
    "FORE ARM": "XR_FOREARM",
    "LOWER ARM": "XR_FOREARM",
    "ARM LOWER": "XR_FOREARM",
    "RADIUS ULNA": "XR_FOREARM",
    "RADIUS AND ULNA": "XR_FOREARM",
    "ULNA RADIUS": "XR_FOREARM",
    "ULNA AND RADIUS": "XR_FOREARM",
    # XR_HAND
    "HAND": "XR_HAND",
    "HANDS": "XR_HAND",
    "METACARPAL": "XR_HAND",
    "METACARPALS": "XR_HAND",
    # XR_HUMERUS
    "HUMERUS": "XR_HUMERUS",
    "UPPER ARM": "XR_HUMERUS",
    "ARM UPPER": "XR_HUMERUS",
    "UPPERARM": "XR_HUMERUS",
    # XR_SHOULDER
    "SHOULDER": "XR_SHOULDER",
    "SHOULDERS": "XR_SHOULDER",
    "GLENOHUMERAL": "XR_SHOULDER",
    # XR_WRIST
    "WRIST": "XR_WRIST",
    "WRISTS": "XR_WRIST",
    "CARPUS": "XR_WRIST",
    "SCAPHOID": "XR_WRIST",
}

#: The header fields read, in the order they are tried (DICOM keywords).
BODY_PART_FIELDS: tuple[str, ...] = ("BodyPartExamined", "StudyDescription", "SeriesDescription")

_LONGEST = max(len(phrase.split()) for phrase in BODY_PART_SYNONYMS)
_NOT_WORD = re.compile(r"[^0-9A-Z]+")


class PartMatch(NamedTuple):
    """What :func:`map_body_part` found: ``part`` (``""`` when none) and the words that gave it or the reason."""

    part: str
    #: ``"BodyPartExamined 'HAND'"`` when mapped; otherwise why not, e.g.
    #: ``"BodyPartExamined 'KNEE', StudyDescription 'HAND AND WRIST' (names two parts) match none of the seven parts"``.
    reason: str


def words(text: str) -> list[str]:
    """``"XR Wrist-3 views"`` -> ``["XR", "WRIST", "3", "VIEWS"]``: upper case, split at anything but letters and digits."""
    return [word for word in _NOT_WORD.split(text.upper()) if word]


def parts_named(text: str) -> set[str]:
    """The MURA parts whose phrases occur in ``text`` as whole words."""
    tokens = words(text)
    found = set()
    for start in range(len(tokens)):
        for length in range(1, _LONGEST + 1):
            part = BODY_PART_SYNONYMS.get(" ".join(tokens[start : start + length]))
            if part is not None:
                found.add(part)
    return found


def map_body_part(body_part_examined: str = "", study_description: str = "", series_description: str = "") -> PartMatch:
    """The MURA part a DICOM header names (see the module docstring), or ``""`` with the reason."""
    tried = []
    for field, text in zip(BODY_PART_FIELDS, (body_part_examined, study_description, series_description)):
        text = " ".join(str(text or "").split())
        if not text:
            continue
        found = parts_named(text)
        if len(found) == 1:
            return PartMatch(found.pop(), f"{field} {text!r}")
        note = f" (names {len(found)} parts: {', '.join(sorted(found))})" if found else ""
        tried.append(f"{field} {text!r}{note}")
    if not tried:
        return PartMatch("", f"no {', '.join(BODY_PART_FIELDS)} in the header")
    return PartMatch("", f"{'; '.join(tried)}: none names one of the seven parts")
