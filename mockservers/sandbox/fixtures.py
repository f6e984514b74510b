"""Fixture sets by name: the built-in ones, plus directories the operator allowed at start.

``POST /_sandbox/seed`` is reachable by anyone holding the admin token, so it must not read any
path the process can read: a fixture is a plain name (``default``, ``big-demo``) looked up in the
built-in ``fixtures/`` directory and in each ``mockservers serve --fixtures-dir DIR``. Messages
name the fixture and the file, never an absolute server path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BUILTIN_DIR = Path(__file__).resolve().parents[2] / "fixtures"
FIXTURE_FILES = ("dataverse.json", "bc.json", "identity.json", "dataverse-customizations.json")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class UnknownFixture(LookupError):
    """No allowed directory holds a fixture set of that name (or the name is not a plain name)."""


class FixtureError(ValueError):
    """The fixture file exists but is not a usable fixture document."""


@dataclass(frozen=True)
class FixtureLibrary:
    """Where fixture sets are looked up, the operator's directories before the built-in one."""

    dirs: tuple[Path, ...] = (BUILTIN_DIR,)

    @classmethod
    def with_dirs(cls, extra: Iterable[Path]) -> FixtureLibrary:
        """The built-in sets plus ``extra``: each a directory of sets, or itself one set (holding a
        ``dataverse.json`` or ``bc.json``), which is then named after the directory."""
        resolved = []
        for directory in extra:
            path = Path(directory).expanduser().resolve()
            if not path.is_dir():
                raise FileNotFoundError(f"fixtures directory {directory} does not exist")
            resolved.append(path)
        return cls((*resolved, BUILTIN_DIR))

    def names(self) -> list[str]:
        found: set[str] = set()
        for directory in self.dirs:
            if _is_set(directory):
                found.add(directory.name)
            elif directory.is_dir():
                found.update(p.name for p in directory.iterdir() if _NAME.fullmatch(p.name) and _is_set(p))
        return sorted(found)

    def set_dir(self, name: str) -> Path:
        """The directory of the fixture set ``name``."""
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise UnknownFixture("a fixture set is given by name (letters, digits, '.', '_', '-'), not by path; "
                                 f"known: {', '.join(self.names())} (more with `mockservers serve --fixtures-dir DIR`)")
        for directory in self.dirs:
            if directory.name == name and _is_set(directory):
                return directory
            candidate = directory / name
            if candidate.is_dir() and _is_set(candidate):
                return candidate
        raise UnknownFixture(f"no fixture set named {name!r}; known: {', '.join(self.names())}")

    def has(self, name: str, filename: str) -> bool:
        try:
            return (self.set_dir(name) / filename).is_file()
        except UnknownFixture:
            return False

    def load(self, name: str, filename: str) -> dict[str, Any]:
        """The JSON object in ``<set>/<filename>``; UnknownFixture or FixtureError otherwise."""
        path = self.set_dir(name) / filename
        if not path.is_file():
            raise UnknownFixture(f"the fixture set {name!r} has no {filename}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, RecursionError) as error:
            raise FixtureError(f"{name}/{filename} is not valid JSON: {_short(error)}") from None
        if not isinstance(data, dict):
            raise FixtureError(f"{name}/{filename} must hold a JSON object, not a {type(data).__name__}")
        return data


def _is_set(directory: Path) -> bool:
    return any((directory / f).is_file() for f in FIXTURE_FILES[:2])


def _short(error: BaseException) -> str:
    return str(error).splitlines()[0][:200] if str(error) else type(error).__name__


DEFAULT_LIBRARY = FixtureLibrary()
