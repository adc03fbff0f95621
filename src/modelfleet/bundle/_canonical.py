"""Canonical JSON: one byte string per value, so signatures cover meaning, not layout.

The form follows the spirit of OLPC / TUF canonical JSON: UTF-8, object keys sorted
by code point, no insignificant whitespace, no duplicate keys, and **no JSON
floats** — a float's text differs between languages, so decimals travel as strings
(``"0.25"``) and the schema converts them. Integers, strings, booleans, null,
arrays and objects are allowed.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

from modelfleet.errors import ManifestError

__all__ = ["canonical_bytes", "parse_canonical"]


def _reject(value: object) -> NoReturn:
    msg = f"canonical JSON cannot hold {type(value).__name__} values ({value!r}); encode decimals as strings"
    raise TypeError(msg)


def _check(value: object, path: str) -> None:
    if value is None or isinstance(value, bool | str | int):
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check(item, f"{path}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                msg = f"canonical JSON object keys must be strings, got {key!r} at {path}"
                raise TypeError(msg)
            _check(item, f"{path}.{key}")
        return
    msg = f"canonical JSON cannot hold {type(value).__name__} at {path} ({value!r}); encode decimals as strings"
    raise TypeError(msg)


def canonical_bytes(value: object) -> bytes:
    """Encode ``value`` as canonical JSON bytes.

    Raises:
        TypeError: ``value`` holds a float or a type JSON cannot express.
    """
    _check(value, "$")
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            msg = f"duplicate key {key!r} in JSON object"
            raise ManifestError(msg, code="duplicate_key")
        result[key] = value
    return result


def _float_refused(text: str) -> NoReturn:
    msg = f"JSON number {text} is not an integer; decimals must be strings in canonical JSON"
    raise ManifestError(msg, code="float_in_manifest")


def parse_canonical(data: bytes, *, what: str = "manifest") -> object:
    """Parse bytes that must already be in canonical form.

    Raises:
        ManifestError: not UTF-8, not JSON, holds floats or duplicate keys, or
            is valid JSON whose canonical encoding differs from ``data``.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        msg = f"{what} is not UTF-8: {exc.reason} at byte {exc.start}"
        raise ManifestError(msg, code="not_utf8") from None
    try:
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_float=_float_refused,
            parse_constant=_float_refused,
        )
    except json.JSONDecodeError as exc:
        msg = f"{what} is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        raise ManifestError(msg, code="not_json") from None
    except (ValueError, RecursionError) as exc:  # an integer beyond int()'s digit limit, or nesting too deep
        msg = f"{what} is not acceptable JSON: {exc}"
        raise ManifestError(msg, code="not_json") from None
    try:
        canonical = canonical_bytes(value)
    except UnicodeEncodeError:  # a "\ud800" escape decodes to a lone surrogate, which UTF-8 cannot hold
        msg = f"{what} holds a string that is not valid Unicode (a lone surrogate escape)"
        raise ManifestError(msg, code="not_utf8") from None
    except RecursionError:
        msg = f"{what} is nested too deeply"
        raise ManifestError(msg, code="not_json") from None
    if canonical != data:
        msg = f"{what} is not in canonical form (sorted keys, no whitespace, UTF-8); it was re-encoded after signing"
        raise ManifestError(msg, code="non_canonical")
    return value
