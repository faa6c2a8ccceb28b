"""The project's user-facing error type and the one-line rendering of validation errors.

Every bad input (spec, schedule, CLI value, results file) ends up as a ``ClipaError`` whose message names the field;
the CLI prints it on one line and exits with code 2.
"""

from __future__ import annotations

from pydantic import ValidationError


class ClipaError(ValueError):
    """Bad input, with the field it concerns (``field`` may be empty when the whole input is at fault)."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before", "function-wrap") or str(part).startswith("function-"):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


def from_validation_error(err: ValidationError, prefix: str = "") -> ClipaError:
    """First pydantic error as a ClipaError naming the field (``prefix.stages[1].image_res``)."""
    first = err.errors()[0]
    loc = _loc(tuple(first.get("loc", ())))
    field = ".".join(p for p in (prefix, loc) if p)
    msg = first.get("msg", "invalid value")
    msg = msg.removeprefix("Value error, ")
    if first.get("type") == "extra_forbidden":
        msg = "unknown field"
    n = len(err.errors())
    if n > 1:
        msg += f" (and {n - 1} more problem{'s' if n > 2 else ''})"
    return ClipaError(field, msg)
