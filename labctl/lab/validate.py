"""The checks lab.yaml and the image catalog share: every error is a ConfigError naming the key path,
with a "did you mean" for a mistyped key or name."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from labctl.errors import ConfigError


def kind(value: Any) -> str:
    """What ``value`` is, in words: "a mapping", "a list", "nothing", "int", …"""
    return {dict: "a mapping", list: "a list", bool: "a boolean", int: "a number", float: "a number",
            type(None): "nothing"}.get(
        type(value), type(value).__name__
    )


def shown(value: Any) -> str:
    """``value`` as an error message quotes it (short)."""
    if isinstance(value, str):
        return json.dumps(value[:60], ensure_ascii=False)
    if isinstance(value, (dict, list)):
        return kind(value)
    return str(value).lower() if isinstance(value, bool) or value is None else str(value)[:60]


def fail(path: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(path, f"expected {expected}, got {shown(value)}")


def suggestion(word: str, choices: Iterable[str]) -> str | None:
    """A "did you mean" hint for a mistyped key or name, or None."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"did you mean {close[0]!r}?" if close else None


def mapping(value: Any, path: str, allowed: tuple[str, ...], *, empty_ok: bool = True) -> dict[str, Any]:
    """``value`` as a mapping with only ``allowed`` keys (None is an empty one where ``empty_ok``)."""
    if value is None and empty_ok:
        return {}
    if not isinstance(value, Mapping):
        raise fail(path, "a mapping", value)
    for key in value:
        if not isinstance(key, str) or key not in allowed:
            where = f"{path}.{key}" if path else str(key)
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean `{close[0]}`?" if close else f"valid keys: {', '.join(allowed)}"
            raise ConfigError(where, f"unknown key; {hint}")
    return dict(value)


def choice(value: Any, path: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise fail(path, "one of " + ", ".join(choices), value)
    return value


def string(value: Any, path: str, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise fail(path, what, value)
    return value
