"""Every number of an ``ensemble.json`` checked before it is used: one-line :class:`UsageError` naming the field.

A file written by another tool, edited by hand or damaged on disk must not be
applied silently: thresholds outside [0, 1] or NaN, negative or infinite
weights, a Platt slope < 0 (which reverses the ranking), isotonic knots out of
order or outside [0, 1], unknown body parts, repeated members are all refused.
Field names are written as paths: ``parts.XR_WRIST.threshold``,
``members[2].sha256``, ``global.calibrator.a``.
"""

from __future__ import annotations

import math
import re
from typing import Any

from ..constants import BODY_PARTS
from ..errors import UsageError

#: Part statuses: weights and/or threshold fitted, or neither.
STATUSES = ("fitted", "weights_only", "threshold_only", "plain_mean")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PART_FIELDS = ("status", "n_studies", "n_positive", "weights", "calibrator", "threshold")


def _fail(field: str, problem: str, value: Any = ...) -> UsageError:
    shown = "" if value is ... else f", got {_show(value)}"
    return UsageError(f"{field} {problem}{shown}")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def number(field: str, value: Any) -> float:
    """A finite number (not a bool), else a :class:`UsageError` naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(field, "must be a finite number", value)
    return float(value)


def probability(field: str, value: Any) -> float:
    """A finite number in [0, 1]."""
    v = number(field, value)
    if not 0.0 <= v <= 1.0:
        raise _fail(field, "must be in [0, 1]", value)
    return v


def count(field: str, value: Any) -> int:
    """An integer >= 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _fail(field, "must be an integer >= 0", value)
    return value


def mapping(field: str, value: Any) -> dict[str, Any]:
    """A JSON object."""
    if not isinstance(value, dict):
        raise _fail(field, "must be an object", value)
    return value


def required(data: dict[str, Any], key: str, where: str) -> Any:
    """``data[key]``, or a :class:`UsageError` naming the missing field."""
    if key not in data:
        raise UsageError(f"{where}{key} is missing")
    return data[key]


def check_calibrator(field: str, data: Any) -> None:
    """``{"method": "none"}``, Platt with finite ``a >= 0`` and ``b``, or isotonic knots increasing in [0, 1]."""
    data = mapping(field, data)
    method = data.get("method")
    if method == "platt":
        if number(f"{field}.a", required(data, "a", f"{field}.")) < 0:
            raise _fail(f"{field}.a", "(Platt slope) must be >= 0 (a negative slope reverses the ranking)", data["a"])
        number(f"{field}.b", required(data, "b", f"{field}."))
    elif method == "isotonic":
        x, y = required(data, "x", f"{field}."), required(data, "y", f"{field}.")
        if not isinstance(x, list) or not isinstance(y, list) or len(x) != len(y) or len(x) < 2:
            raise UsageError(f"{field}.x and .y must be lists of the same length >= 2")
        xs = [probability(f"{field}.x[{i}]", v) for i, v in enumerate(x)]
        ys = [probability(f"{field}.y[{i}]", v) for i, v in enumerate(y)]
        for i in range(1, len(xs)):
            if xs[i] <= xs[i - 1]:
                raise _fail(f"{field}.x[{i}]", f"must be > x[{i - 1}] = {xs[i - 1]!r} (knots increasing)", x[i])
            if ys[i] < ys[i - 1]:
                raise _fail(f"{field}.y[{i}]", f"must be >= y[{i - 1}] = {ys[i - 1]!r} (isotonic)", y[i])
    elif method != "none":
        raise _fail(f"{field}.method", "must be none, platt or isotonic", method)


def check_members(data: Any) -> list[str]:
    """A non-empty list of ``{"name", "sha256"}`` with unique names and 64-hex-digit sha256; returns the names."""
    if not isinstance(data, list) or not data:
        raise _fail("members", "must be a non-empty list", data)
    names: list[str] = []
    for i, member in enumerate(data):
        member = mapping(f"members[{i}]", member)
        name = required(member, "name", f"members[{i}].")
        if not isinstance(name, str) or not name:
            raise _fail(f"members[{i}].name", "must be a non-empty text", name)
        if name in names:
            raise _fail(f"members[{i}].name", "repeats an earlier member", name)
        sha = required(member, "sha256", f"members[{i}].")
        if not isinstance(sha, str) or not _SHA256.match(sha):
            raise _fail(f"members[{i}].sha256", "must be 64 lowercase hex digits", sha)
        names.append(name)
    return names


def check_part(part: str, data: Any, members: list[str]) -> None:
    """One ``parts.<XR_PART>`` entry: status, counts, weights over members, calibrator, threshold."""
    where = f"parts.{part}"
    if part not in BODY_PARTS:
        raise _fail(f"parts.{part}", "is not a known body part (one of XR_ELBOW ... XR_WRIST)")
    data = mapping(where, data)
    for key in _PART_FIELDS:
        required(data, key, f"{where}.")
    if data["status"] not in STATUSES:
        raise _fail(f"{where}.status", f"must be one of {', '.join(STATUSES)}", data["status"])
    n, n_pos = count(f"{where}.n_studies", data["n_studies"]), count(f"{where}.n_positive", data["n_positive"])
    if n_pos > n:
        raise _fail(f"{where}.n_positive", f"must be <= n_studies ({n})", n_pos)
    weights = mapping(f"{where}.weights", data["weights"])
    if not weights:
        raise UsageError(f"{where}.weights is empty")
    for name, w in weights.items():
        if name not in members:
            raise _fail(f"{where}.weights", "names a model that is not a member", name)
        if number(f"{where}.weights.{name}", w) < 0:
            raise _fail(f"{where}.weights.{name}", "must be >= 0", w)
    if sum(float(w) for w in weights.values()) <= 0:
        raise UsageError(f"{where}.weights must have a positive sum")
    check_calibrator(f"{where}.calibrator", data["calibrator"])
    probability(f"{where}.threshold", data["threshold"])
    _notes(f"{where}.notes", data.get("notes", []))


def _notes(field: str, value: Any) -> None:
    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        raise _fail(field, "must be a list of texts")


def _optional_text(field: str, value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise _fail(field, "must be a non-empty text or null", value)


def check_ensemble_dict(data: Any) -> None:
    """Check a parsed ``ensemble.json`` (format and version checked by the caller); raise on the first bad field."""
    data = mapping("the file", data)
    for key in ("mura_ens_version", "settings", "members", "global", "parts", "fitting"):
        required(data, key, "")
    if not isinstance(data["mura_ens_version"], str):
        raise _fail("mura_ens_version", "must be a text", data["mura_ens_version"])
    mapping("settings", data["settings"])
    members = check_members(data["members"])
    _optional_text("precision", data.get("precision"))
    _optional_text("tta", data.get("tta"))
    glob = mapping("global", data["global"])
    check_calibrator("global.calibrator", required(glob, "calibrator", "global."))
    probability("global.threshold", required(glob, "threshold", "global."))
    for part, model in mapping("parts", data["parts"]).items():
        check_part(part, model, members)
    fitting = mapping("fitting", data["fitting"])
    studies = fitting.get("studies", [])
    if not isinstance(studies, list) or not all(isinstance(s, str) for s in studies):
        raise _fail("fitting.studies", "must be a list of study keys")
    _notes("notes", data.get("notes", []))
