"""IoT Hub target conditions, evaluated against a device twin: the part of the query language a
deployment's ``targetCondition`` uses.

"A target condition ... is based on device twin tags or device twin reported properties and should match
the expression format": ``tags.environment='prod'``, ``tags.environment='prod' AND tags.location='westus'``,
``tags.environment='prod' OR tags.location='westus'``, ``NOT``, parentheses, ``deviceId='...'`` and
``!=``/``<>`` (IoT Hub query language, WHERE clause; "Understand IoT Edge automatic deployments", Target
condition). A condition outside this subset raises ``ValueError``: the stand-in refuses what it cannot
evaluate, as the service refuses what it cannot parse.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

TOKEN = re.compile(
    r"\s*(?:(?P<string>'(?:[^']|'')*')|(?P<number>-?\d+(?:\.\d+)?)|(?P<op>!=|<>|=|\(|\))"
    r"|(?P<word>[A-Za-z_$][A-Za-z0-9_$.\-]*))"
)
Predicate = Callable[[dict[str, Any]], bool]


def tokenize(text: str) -> list[tuple[str, str]]:
    tokens, position = [], 0
    text = text.strip()
    while position < len(text):
        match = TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise ValueError(f"cannot parse the target condition at {text[position : position + 20]!r}")
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


def parse(text: str) -> Predicate:
    tokens = tokenize(text)
    if not tokens:
        raise ValueError("an empty target condition")
    predicate, rest = _or(tokens)
    if rest:
        raise ValueError(f"unexpected {rest[0][1]!r} in the target condition")
    return predicate


def _keyword(token: tuple[str, str], word: str) -> bool:
    return token[0] == "word" and token[1].upper() == word


def _or(tokens: list[tuple[str, str]]) -> tuple[Predicate, list[tuple[str, str]]]:
    left, tokens = _and(tokens)
    while tokens and _keyword(tokens[0], "OR"):
        right, tokens = _and(tokens[1:])
        left = (lambda a, b: lambda twin: a(twin) or b(twin))(left, right)
    return left, tokens


def _and(tokens: list[tuple[str, str]]) -> tuple[Predicate, list[tuple[str, str]]]:
    left, tokens = _not(tokens)
    while tokens and _keyword(tokens[0], "AND"):
        right, tokens = _not(tokens[1:])
        left = (lambda a, b: lambda twin: a(twin) and b(twin))(left, right)
    return left, tokens


def _not(tokens: list[tuple[str, str]]) -> tuple[Predicate, list[tuple[str, str]]]:
    if tokens and _keyword(tokens[0], "NOT"):
        inner, rest = _not(tokens[1:])
        return (lambda twin: not inner(twin)), rest
    if tokens and tokens[0] == ("op", "("):
        inner, rest = _or(tokens[1:])
        if not rest or rest[0] != ("op", ")"):
            raise ValueError("unbalanced parentheses in the target condition")
        return inner, rest[1:]
    return _comparison(tokens)


def _comparison(tokens: list[tuple[str, str]]) -> tuple[Predicate, list[tuple[str, str]]]:
    if len(tokens) < 3 or tokens[0][0] != "word" or tokens[1][0] != "op" or tokens[1][1] in "()":
        raise ValueError("expected <property> = <value>, e.g. tags.environment='prod'")
    path, operator, (kind, raw) = tokens[0][1], tokens[1][1], tokens[2]
    if not (path.startswith("tags.") or path.startswith("properties.reported.") or path == "deviceId"):
        raise ValueError(f"target conditions test tags, reported properties or deviceId, not {path!r}")
    value: Any
    if kind == "string":
        value = raw[1:-1].replace("''", "'")
    elif kind == "number":
        value = float(raw)
    elif kind == "word" and raw.lower() in ("true", "false"):
        value = raw.lower() == "true"
    else:
        raise ValueError(f"expected a value after {path} {operator}, got {raw!r}")
    keys = path.split(".")

    def test(twin: dict[str, Any]) -> bool:
        found: Any = twin
        for key in keys:
            found = found.get(key) if isinstance(found, dict) else None
        if isinstance(found, int | float) and not isinstance(found, bool) and isinstance(value, float):
            equal = float(found) == value
        else:
            equal = found == value
        return equal if operator == "=" else (found is not None and not equal)

    return test, tokens[3:]
