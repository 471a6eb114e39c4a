"""Method specs for the benchmark: a registered method name, optionally with options, as one string.

``"occlusion"`` runs occlusion with its defaults; ``"occlusion:regions=slic:n_segments=40"`` runs it with
those options and is its own row in the table, so settings of one method can be compared side by side.
Values are read as int, float, ``true`` / ``false`` / ``none``, else kept as strings.

>>> parse_method_spec("occlusion:regions=slic:n_segments=40")
('occlusion', {'regions': 'slic', 'n_segments': 40})
>>> parse_method_spec("rise")
('rise', {})
"""

from __future__ import annotations

from typing import Any

from mmlens.errors import InputError

_WORDS = {"true": True, "false": False, "none": None}


def parse_value(text: str) -> Any:
    """``"40"`` -> 40, ``"0.5"`` -> 0.5, ``"true"`` -> True, ``"none"`` -> None, anything else unchanged."""
    if text.lower() in _WORDS:
        return _WORDS[text.lower()]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_method_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"name[:key=value...]"`` -> ``(name, options)``; a malformed option is a one-line InputError."""
    name, *items = [part.strip() for part in str(spec).split(":")]
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise InputError(f"method spec {spec!r}: option {item!r} is not key=value, "
                             "e.g. occlusion:regions=slic:n_segments=40")
        options[key.strip()] = parse_value(value.strip())
    return name, options
