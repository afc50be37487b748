"""JSON with comments (the quickstart writes its examples as jsonc): strip ``//`` and ``/* */`` comments and
trailing commas outside strings, then parse with the standard library."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from longcat.errors import InvalidArgument, NotFound


def strip_jsonc(text: str) -> str:
    """Remove comments and trailing commas, leaving string contents (URLs with ``//``) untouched.

    Removed characters become spaces (newlines are kept), so json's error positions still point at the
    right line and column of the user's file.
    """
    out: list[str] = []
    i, n = 0, len(text)
    in_string = False
    pending_comma = -1  # index in ``out`` of a comma that is trailing if the next token closes
    while i < n:
        c = text[i]
        if in_string:
            out.append(c)
            if c == "\\" and i + 1 < n:
                out.append(text[i + 1])
                i += 2
                continue
            if c == '"':
                in_string = False
            i += 1
            continue
        if c == '"':
            in_string, pending_comma = True, -1
            out.append(c)
        elif text.startswith("//", i):
            end = text.find("\n", i)
            end = n if end == -1 else end
            out.append(" " * (end - i))
            i = end
            continue
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            end = n if end == -1 else end + 2
            out.append("".join(ch if ch == "\n" else " " for ch in text[i:end]))
            i = end
            continue
        elif c == ",":
            pending_comma = len(out)
            out.append(c)
        elif c in "]}":
            if pending_comma >= 0:
                out[pending_comma] = " "
            pending_comma = -1
            out.append(c)
        else:
            if not c.isspace():
                pending_comma = -1
            out.append(c)
        i += 1
    return "".join(out)


def loads(text: str, field: str) -> Any:
    try:
        return json.loads(strip_jsonc(text))
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", field) from exc
    except RecursionError:  # nesting deeper than the parser's stack: the caller's input, not our failure
        raise InvalidArgument("is nested too deeply", field) from None


def load(source: str | os.PathLike | dict | list, field: str) -> tuple[Any, str | None]:
    """A path to a (jsonc) file, or an already-parsed object -> (object, file name or None)."""
    if isinstance(source, (dict, list)):
        return source, None
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotFound(f"no such file: {path}", field) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"cannot read {path}: {exc}", field) from exc
    return loads(text, field), str(path)
