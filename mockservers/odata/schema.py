"""Entity declarations: the single source that storage, validation, serialization and CSDL derive from.

A service declares its tables as data (``EntityType`` with ``Property`` and ``Navigation`` items).
Nothing else in the engine knows a table by name.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Edm(StrEnum):
    """The EDM primitive types the two services use."""

    String = "Edm.String"
    Guid = "Edm.Guid"
    Int32 = "Edm.Int32"
    Int64 = "Edm.Int64"
    Decimal = "Edm.Decimal"
    Double = "Edm.Double"
    Boolean = "Edm.Boolean"
    DateTimeOffset = "Edm.DateTimeOffset"
    Date = "Edm.Date"
    Binary = "Edm.Binary"


@dataclass(frozen=True)
class Option:
    value: int
    label: str
    state: int | None = None  # for status options: the state code they belong to


@dataclass(frozen=True)
class OptionSet:
    """A Dataverse choice (picklist/state/status) or a BC enum, with its labels."""

    name: str
    options: tuple[Option, ...]
    default: int | None = None
    is_global: bool = False

    def label(self, value: Any) -> str | None:
        for option in self.options:
            if option.value == value:
                return option.label
        return None

    def values(self) -> set[int]:
        return {o.value for o in self.options}


@dataclass(frozen=True)
class Property:
    """A structural property (a column).

    ``kind`` is the service's own attribute type name (Dataverse AttributeType such as ``Money``,
    ``Picklist``, ``Lookup``; BC uses ``Code`` for upper-cased code fields); the engine reads ``type``,
    and ``kind`` only for BC enums (``Enum``: string literals name members) and the state (``State``:
    indexed for `$filter`, see ``indexes``). ``hidden`` columns exist in storage but are never
    serialized or queryable (company stamps, polymorphic lookup discriminators).
    """

    name: str
    type: Edm
    max_length: int | None = None
    nullable: bool = True
    read_only: bool = False
    required: bool = False
    default: Any = None
    kind: str | None = None
    options: OptionSet | None = None
    hidden: bool = False
    precision: int | None = None
    scale: int | None = None
    display_name: str | None = None
    description: str | None = None
    # For Dataverse lookups (`_x_value`): the navigation property that writes it.
    lookup: str | None = None
    # For polymorphic lookups: the hidden column that stores which table the value points to.
    lookup_type_column: str | None = None


@dataclass(frozen=True)
class Navigation:
    """A navigation property.

    Single-valued: this entity's ``via`` property holds the target's key (optionally only when the
    hidden ``discriminator`` column equals ``discriminator_value``, for polymorphic lookups).
    Collection-valued: the target's ``via`` property holds this entity's key.
    """

    name: str
    target: str  # target entity logical name
    collection: bool
    via: str
    discriminator: str | None = None
    discriminator_value: str | None = None
    partner: str | None = None
    read_only: bool = False


@dataclass(frozen=True)
class AlternateKey:
    name: str
    properties: tuple[str, ...]
    display_name: str | None = None


@dataclass
class EntityType:
    """One table of a service, declared as data."""

    name: str  # logical / entity type name ("account", "customer")
    set_name: str  # entity set ("accounts", "customers")
    key: str  # primary key property ("accountid", "id")
    properties: list[Property]
    navigations: list[Navigation] = field(default_factory=list)
    alternate_keys: list[AlternateKey] = field(default_factory=list)
    primary_name: str | None = None
    display_name: str | None = None
    # Server-maintained columns the engine stamps on every write (names or None).
    version_property: str | None = None
    modified_on: str | None = None
    created_on: str | None = None
    # Storage-only scoping column (BC company id); rows are isolated by it.
    scope_property: str | None = None
    change_tracking: bool = False
    ownership: str = "UserOwned"
    # The service's own facts about the table (a typed dataclass each service defines and reads
    # through its own accessor); the engine never looks inside.
    info: object | None = None

    def __post_init__(self) -> None:
        self._props = {p.name: p for p in self.properties}
        self._navs = {n.name: n for n in self.navigations}
        if self.key not in self._props:
            raise ValueError(f"{self.name}: key {self.key!r} is not a declared property")

    @property
    def table_name(self) -> str:
        return self.name

    def property(self, name: str) -> Property | None:
        return self._props.get(name)

    def navigation(self, name: str) -> Navigation | None:
        return self._navs.get(name)

    def public_properties(self) -> list[Property]:
        return [p for p in self.properties if not p.hidden]

    def public_names(self) -> set[str]:
        return {p.name for p in self.properties if not p.hidden}

    def lookup_columns(self) -> list[str]:
        """The columns that hold another table's key: Dataverse lookups, and what each single-valued
        navigation goes through."""
        names = [p.name for p in self.properties if p.lookup]
        names += [nav.via for nav in self.navigations if not nav.collection and nav.via not in names]
        return names

    def writable(self, name: str) -> bool:
        prop = self._props.get(name)
        return prop is not None and not prop.hidden and not prop.read_only

    def replace_property(self, prop: Property) -> None:
        """Swap in a new version of a declared property (an option set extended at run time)."""
        if prop.name not in self._props:
            raise ValueError(f"{self.name}: {prop.name!r} is not a declared property")
        self.properties = [prop if p.name == prop.name else p for p in self.properties]
        self._props[prop.name] = prop

    def add_alternate_key(self, key: AlternateKey) -> None:
        for prop in key.properties:
            if prop not in self._props:
                raise ValueError(f"{self.name}: alternate key {key.name} names unknown property {prop}")
        if all(k.name != key.name for k in self.alternate_keys):
            self.alternate_keys.append(key)


class Schema:
    """All entity types of one service, looked up by logical name or set name."""

    def __init__(self, namespace: str, entities: list[EntityType], alias: str | None = None) -> None:
        self.namespace = namespace
        self.alias = alias
        self.entities = list(entities)
        self._by_name = {e.name: e for e in entities}
        self._by_set = {e.set_name: e for e in entities}
        for entity in entities:
            for nav in entity.navigations:
                if nav.target not in self._by_name:
                    raise ValueError(f"{entity.name}.{nav.name} targets undeclared {nav.target!r}")

    def entity(self, name: str) -> EntityType | None:
        return self._by_name.get(name)

    def by_set(self, set_name: str) -> EntityType | None:
        return self._by_set.get(set_name)

    def __iter__(self) -> Iterator[EntityType]:
        return iter(self.entities)
