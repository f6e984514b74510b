"""Dataverse `$filter` extensions rewritten to standard OData before odata-query parses.

odata-query cannot tokenize parameter aliases (``@p1``) or the JSON arrays that
``Microsoft.Dynamics.CRM.In(PropertyName='x',PropertyValues=["a","b"])`` carries, and it does not
know the Dataverse query functions. This pre-pass substitutes aliases and replaces each query
function call by the equivalent standard expression (``x in ('a','b',)``, date ranges computed
from the server clock in UTC), typed by the property's declaration.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from ..odata.errors import QuerySyntaxError, UnknownProperty
from ..odata.schema import Edm, EntityType

_PREFIX = "Microsoft.Dynamics.CRM."


def _scan_string(text: str, i: int, quote: str) -> int:
    """Index just past the string literal starting at ``i``."""
    j = i + 1
    while j < len(text):
        if text[j] == quote:
            if j + 1 < len(text) and text[j + 1] == quote:
                j += 2
                continue
            return j + 1
        if quote == '"' and text[j] == "\\":
            j += 2
            continue
        j += 1
    raise QuerySyntaxError(f"There is an unterminated literal at position {i} in '{text}'.")


def substitute_aliases(text: str, aliases: dict[str, str]) -> str:
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch == "'":
            end = _scan_string(text, i, "'")
            out.append(text[i:end])
            i = end
            continue
        if ch == "@":
            m = re.match(r"@([A-Za-z_]\w*)", text[i:])
            if not m:
                raise QuerySyntaxError(f"Syntax error at position {i} in '{text}'.")
            name = m.group(1)
            if f"@{name}" not in aliases:
                raise QuerySyntaxError(f"The parameter alias '@{name}' was not found in the request.")
            out.append(aliases[f"@{name}"])
            i += len(m.group(0))
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _split_args(text: str) -> list[str]:
    parts, depth, i, start = [], 0, 0, 0
    while i < len(text):
        ch = text[i]
        if ch in "'\"":
            i = _scan_string(text, i, ch)
            continue
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _arg_value(raw: str) -> Any:
    if raw.startswith("'") and raw.endswith("'") and len(raw) >= 2:
        return raw[1:-1].replace("''", "'")
    if raw.startswith("["):
        try:
            values = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise QuerySyntaxError(f"Invalid JSON. {exc.msg} in scope 'Array'.") from exc
        if not isinstance(values, list):
            raise QuerySyntaxError("Invalid JSON array in PropertyValues.")
        return values
    if re.fullmatch(r"-?\d+", raw):
        return int(raw)
    return raw


class FunctionRewriter:
    """Rewrites the query functions for one entity type."""

    def __init__(self, entity: EntityType, namespace: str, *, now: Callable[[], datetime], user_id: str | None,
                 business_unit_id: str | None) -> None:
        self.entity = entity
        self.namespace = namespace
        self.now = now
        self.user_id = user_id
        self.business_unit_id = business_unit_id

    def rewrite(self, text: str) -> str:
        out, i = [], 0
        while i < len(text):
            ch = text[i]
            if ch == "'":
                end = _scan_string(text, i, "'")
                out.append(text[i:end])
                i = end
                continue
            if text.startswith(_PREFIX, i):
                m = re.match(r"(\w+)\s*\(", text[i + len(_PREFIX):])
                if not m:
                    raise QuerySyntaxError(f"Syntax error at position {i} in '{text}'.")
                name = m.group(1)
                start = i + len(_PREFIX) + m.end()
                end = self._closing(text, start - 1)
                args = {}
                for part in _split_args(text[start:end]):
                    key, eq, value = part.partition("=")
                    if not eq:
                        raise QuerySyntaxError(f"Query function {name} takes named parameters.")
                    args[key.strip()] = _arg_value(value.strip())
                self._reject_not(out)
                out.append(self.expand(name, args))
                i = end + 1
                continue
            out.append(ch)
            i += 1
        return "".join(out)

    @staticmethod
    def _closing(text: str, open_at: int) -> int:
        depth, i = 0, open_at
        while i < len(text):
            ch = text[i]
            if ch in "'\"":
                i = _scan_string(text, i, ch)
                continue
            if ch in "([":
                depth += 1
            elif ch in ")]":
                depth -= 1
                if depth == 0:
                    return i
            i += 1
        raise QuerySyntaxError(f"Unbalanced parentheses in '{text}'.")

    @staticmethod
    def _reject_not(out: list[str]) -> None:
        before = "".join(out).rstrip().rstrip("(").rstrip()
        if re.search(r"(^|\W)not$", before, re.IGNORECASE):
            raise QuerySyntaxError("Not operator along with the Custom Named Condition operators is not allowed")

    # -- expansion --------------------------------------------------------------------------
    def _property(self, args: dict[str, Any]) -> str:
        name = args.get("PropertyName")
        if not isinstance(name, str):
            raise QuerySyntaxError("The PropertyName parameter is required.")
        prop = self.entity.property(name)
        if prop is None or prop.hidden:
            raise UnknownProperty(name, f"{self.namespace}.{self.entity.name}")
        return name

    def _literal(self, name: str, value: Any) -> str:
        prop = self.entity.property(name)
        assert prop is not None
        if value is None:
            return "null"
        text = str(value)
        if prop.type in (Edm.Int32, Edm.Int64, Edm.Decimal, Edm.Double):
            if not re.fullmatch(r"-?\d+(\.\d+)?", text):
                raise QuerySyntaxError(f"The value '{text}' is not valid for '{name}'.")
            return text
        if prop.type is Edm.Boolean:
            return "true" if text.lower() in ("true", "1") else "false"
        if prop.type in (Edm.Guid, Edm.DateTimeOffset, Edm.Date):
            if not re.fullmatch(r"[0-9A-Fa-f:.TZ+\-{}]+", text):
                raise QuerySyntaxError(f"The value '{text}' is not valid for '{name}'.")
            return text.strip("{}")
        return "'" + text.replace("'", "''") + "'"

    def _values(self, args: dict[str, Any]) -> list[Any]:
        values = args.get("PropertyValues")
        if not isinstance(values, list) or not values:
            raise QuerySyntaxError("The PropertyValues parameter must be a non-empty array.")
        return values

    def _range(self, name: str, lo: datetime | None, hi: datetime | None) -> str:
        parts = []
        if lo is not None:
            parts.append(f"{name} ge {_dt(lo)}")
        if hi is not None:
            parts.append(f"{name} lt {_dt(hi)}")
        return "(" + " and ".join(parts) + ")"

    def expand(self, fn: str, args: dict[str, Any]) -> str:
        if fn in ("In", "NotIn"):
            name = self._property(args)
            literals = [self._literal(name, v) for v in self._values(args)]
            items = ",".join(literals) + ("," if len(literals) == 1 else "")  # odata-query needs (x,) for one item
            expr = f"({name} in ({items}))"
            return expr if fn == "In" else f"(not {expr})"
        if fn in ("Between", "NotBetween"):
            name = self._property(args)
            values = self._values(args)
            if len(values) != 2:
                raise QuerySyntaxError(f"{fn} expects exactly two PropertyValues.")
            lo, hi = (self._literal(name, v) for v in values)
            if fn == "Between":
                return f"({name} ge {lo} and {name} le {hi})"
            return f"({name} lt {lo} or {name} gt {hi})"
        if fn in ("EqualUserId", "NotEqualUserId", "EqualBusinessId", "NotEqualBusinessId"):
            name = self._property(args)
            value = self.user_id if "User" in fn else self.business_unit_id
            op = "ne" if fn.startswith("Not") else "eq"
            return f"({name} {op} {value or 'null'})"
        return self._date_function(fn, args)

    def _date_function(self, fn: str, args: dict[str, Any]) -> str:
        name = self._property(args)
        prop = self.entity.property(name)
        assert prop is not None
        if prop.type not in (Edm.DateTimeOffset, Edm.Date):
            raise QuerySyntaxError(f"The query function {fn} requires a date and time column.")
        now = self.now().replace(tzinfo=None)
        today = now.replace(hour=0, minute=0, second=0, microsecond=0)
        day = timedelta(days=1)
        n = args.get("PropertyValue")
        fixed: dict[str, tuple[datetime | None, datetime | None]] = {
            "Today": (today, today + day),
            "Yesterday": (today - day, today),
            "Tomorrow": (today + day, today + 2 * day),
            "Last7Days": (today - 7 * day, None),
            "Next7Days": (now, today + 8 * day),
            "ThisMonth": (today.replace(day=1), _add_months(today.replace(day=1), 1)),
            "LastMonth": (_add_months(today.replace(day=1), -1), today.replace(day=1)),
            "NextMonth": (_add_months(today.replace(day=1), 1), _add_months(today.replace(day=1), 2)),
            "ThisYear": (today.replace(month=1, day=1), today.replace(year=today.year + 1, month=1, day=1)),
            "LastYear": (today.replace(year=today.year - 1, month=1, day=1), today.replace(month=1, day=1)),
            "NextYear": (today.replace(year=today.year + 1, month=1, day=1),
                         today.replace(year=today.year + 2, month=1, day=1)),
            "ThisWeek": (today - today.weekday() * day, today + (7 - today.weekday()) * day),
            "LastWeek": (today - (today.weekday() + 7) * day, today - today.weekday() * day),
            "NextWeek": (today + (7 - today.weekday()) * day, today + (14 - today.weekday()) * day),
        }
        if fn in fixed:
            return self._range(name, *fixed[fn])
        if fn in ("On", "OnOrAfter", "OnOrBefore"):
            if not isinstance(n, str):
                raise QuerySyntaxError(f"{fn} expects a date PropertyValue.")
            try:
                day_start = datetime.fromisoformat(n[:10])
            except ValueError as exc:
                raise QuerySyntaxError(f"The value '{n}' is not a valid date.") from exc
            if fn == "On":
                return self._range(name, day_start, day_start + day)
            if fn == "OnOrAfter":
                return self._range(name, day_start, None)
            return self._range(name, None, day_start + day)
        m = re.fullmatch(r"(Last|Next|OlderThan)X(Minutes|Hours|Days|Weeks|Months|Years)", fn)
        if m:
            if isinstance(n, str) and n.isdigit():
                n = int(n)
            if not isinstance(n, int) or n < 0:
                raise QuerySyntaxError(f"{fn} expects a non-negative integer PropertyValue.")
            kind, unit = m.groups()
            if unit in ("Months", "Years"):
                months = n * (12 if unit == "Years" else 1)
                back, forward = _add_months(today, -months), _add_months(today, months)
            else:
                delta = {"Minutes": timedelta(minutes=n), "Hours": timedelta(hours=n), "Days": n * day,
                         "Weeks": 7 * n * day}[unit]
                base = now if unit in ("Minutes", "Hours") else today
                back, forward = base - delta, base + delta + (day if unit in ("Days", "Weeks") else timedelta())
            if kind == "Last":  # up to and including now
                return self._range(name, back, None)
            if kind == "Next":
                return self._range(name, now, forward)
            return self._range(name, None, back)
        raise QuerySyntaxError(f"The query function '{_PREFIX}{fn}' is not supported by the sandbox.")


def _dt(value: datetime) -> str:
    # millisecond precision: the store keeps milliseconds, so a bound at "now" must not round down
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def _add_months(value: datetime, months: int) -> datetime:
    month_index = value.month - 1 + months
    year = value.year + month_index // 12
    return value.replace(year=year, month=month_index % 12 + 1, day=1)
