"""Synthetic data at scale: BC customers, contacts and items and Dataverse accounts, contacts and
products, with a controlled overlap for match-based coupling, loaded through the bulk paths.

:func:`generate` is pure and deterministic for a seed: it draws names, addresses and prices from the
word lists in ``generate_vocabulary.json`` (data beside this module, shipped as package data) and
returns request bodies in each API's own shape. :func:`load` sends them to a running sandbox over
HTTP only (this module imports none of the services): Dataverse ``CreateMultiple`` (up to
:data:`DATAVERSE_CHUNK` targets a request) and BC JSON ``$batch`` (up to :data:`BC_CHUNK` operations a
request), so 10,000 records cost about a hundred requests, not ten thousand.

Overlap, as the connector's match-based coupling sees it (the CUSTOMER mapping matched on
displayName -> name, case-insensitive by default, within accounts of customer type 3): of the
customers, ``overlap`` have an account with the same name; of those, ``duplicates`` have two such
accounts (no unique match), and of the rest (the ``matching`` ones) ``case_variants`` carry the
name in other letter case. Every other name is unique, ignoring case, across both services.
BC assigns customer, contact and item numbers; the overlap never depends on them.
"""

from __future__ import annotations

import json
import random
import time
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache, partial
from importlib import resources
from typing import Any

import requests
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

VOCABULARY = "generate_vocabulary.json"
DATAVERSE_CHUNK = 1000  # Targets per CreateMultiple (Microsoft suggests 100-1,000 a request)
BC_CHUNK = 100  # operations per JSON $batch: BC's limit
ACCOUNT_TYPE_CUSTOMER = 3  # customertypecode the CUSTOMER mapping's integration table filter selects
UNIT_GROUP_PREFIX = "NAV "  # the connector names the unit group of a BC unit of measure "NAV <code>"


@dataclass(frozen=True)
class Scale:
    """How much to generate and how the two sides overlap; invalid values raise ValueError."""

    customers: int = 1000  # BC customers
    accounts: int | None = None  # Dataverse accounts; None = same as customers
    contacts: int = 0  # BC contacts AND Dataverse contacts, each
    items: int = 0  # BC items AND Dataverse products, each
    overlap: float = 0.5  # share of customers that have an account with the same name
    case_variants: float = 0.1  # share of those matching accounts whose name differs only in letter case
    duplicates: float = 0.0  # share of overlapping customers whose name appears on two accounts
    seed: int = 1

    def __post_init__(self) -> None:
        for name in ("customers", "contacts", "items", "accounts"):
            value = getattr(self, name)
            if value is None and name == "accounts":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a whole number of 0 or more; got {value!r}")
        for name in ("overlap", "case_variants", "duplicates"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1:
                raise ValueError(f"{name.replace('_', '-')} must be a share between 0 and 1; got {value!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be a whole number; got {self.seed!r}")
        plan = self.plan()
        if plan.accounts_needed > self.account_count:
            raise ValueError(
                f"an overlap of {self.overlap:g} of {self.customers:,} customers ({plan.overlapping:,}, "
                f"{plan.duplicated:,} of them on two accounts) needs {plan.accounts_needed:,} accounts; "
                f"there are {self.account_count:,}: raise accounts or lower overlap/duplicates")

    @property
    def account_count(self) -> int:
        return self.customers if self.accounts is None else self.accounts

    def plan(self) -> OverlapPlan:
        """How many customers overlap, are duplicated and match, and how many matches differ in case."""
        overlapping = round(self.overlap * self.customers)
        duplicated = round(self.duplicates * overlapping)
        matching = overlapping - duplicated
        return OverlapPlan(overlapping, duplicated, matching, round(self.case_variants * matching))


@dataclass(frozen=True)
class OverlapPlan:
    overlapping: int  # customers with at least one account of the same name
    duplicated: int  # of those, customers whose name is on two accounts
    matching: int  # customers with exactly one account of the same name
    case_variants: int  # of the matching ones, accounts whose name differs only in letter case

    @property
    def accounts_needed(self) -> int:
        return self.matching + 2 * self.duplicated


@dataclass
class Dataset:
    """Request bodies per entity set, in the order they are loaded.

    ``reference`` holds the setup rows the records point at (BC countries/regions and units of
    measure, the Dataverse unit group of the products): :func:`load` creates those that are missing
    and leaves existing ones alone. Products get their unit group and unit bound at load time.
    """

    bc: dict[str, list[dict[str, Any]]]
    dataverse: dict[str, list[dict[str, Any]]]
    matching: int  # customers with exactly one account of the same name (ignoring case)
    reference: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)

    def sizes(self) -> dict[str, int]:
        """Records per set, keyed ``bc/customers``, ``dataverse/accounts``, …"""
        return {f"{service}/{name}": len(bodies) for service, sets in (("bc", self.bc), ("dataverse", self.dataverse))
                for name, bodies in sets.items()}


@dataclass
class LoadReport:
    counts: dict[str, int]  # records created per set, keyed ``bc/customers``, ``dataverse/accounts``, …
    seconds: float
    requests: int  # HTTP requests sent, reference-data reads and writes included

    @property
    def records(self) -> int:
        """Records created, reference rows included."""
        return sum(self.counts.values())


class LoadError(RuntimeError):
    """A service refused a write: names the first refused record (for a refused ``CreateMultiple``,
    whose answer does not say which target failed, the records of that request) and the service's
    message."""

    def __init__(self, service: str, entity_set: str, index: int, record: dict[str, Any], status: int,
                 message: str, *, chunk: int = 1, action: str | None = None) -> None:
        self.service, self.entity_set, self.index, self.record = service, entity_set, index, record
        self.status, self.message = status, message
        label = _label(record)
        if action is not None:
            what = action
        elif chunk == 1:
            what = f"{entity_set} record {index + 1}" + (f" ({label!r})" if label else "")
        else:
            what = f"{entity_set} records {index + 1}-{index + chunk}" + (f" (the first {label!r})" if label else "")
        super().__init__(f"{_SERVICE_NAMES[service]} refused {what}: {status} {message}")


class AlreadyLoaded(LoadError):
    """The sandbox holds this data set's accounts already (the same seed was loaded before): refused
    before anything is written, since a second copy would make every name match twice."""

    def __init__(self, record: dict[str, Any]) -> None:
        number = record.get("accountnumber")
        RuntimeError.__init__(self, f"Dataverse already has an account numbered {number}: this seed was loaded "
                                    "into the sandbox before; generate with another seed, or reset the sandbox")
        self.service, self.entity_set, self.index, self.record = "dataverse", "accounts", 0, record
        self.status, self.message = 0, str(self)


_SERVICE_NAMES = {"bc": "Business Central", "dataverse": "Dataverse"}


# -- generating ---------------------------------------------------------------------------------


@cache
def vocabulary() -> dict[str, Any]:
    """The word lists (package data beside this module)."""
    text = resources.files(__package__ or "mockservers").joinpath(VOCABULARY).read_text(encoding="utf-8")
    return dict(json.loads(text))


def generate(scale: Scale) -> Dataset:
    """The bodies for ``scale``: no I/O, the same data for the same scale and seed."""
    words = vocabulary()
    plan = scale.plan()
    companies = _Companies(words, random.Random(f"{scale.seed}/companies"))
    customers, accounts = companies.build(scale.customers, scale.account_count, plan)
    people = _People(words, random.Random(f"{scale.seed}/contacts"))
    goods = _Goods(words, random.Random(f"{scale.seed}/items"))
    bc = {"customers": customers, "contacts": people.bc(scale.contacts), "items": goods.items(scale.items)}
    dataverse = {"accounts": accounts, "contacts": people.dataverse(scale.contacts),
                 "products": goods.products(scale.items, companies.tag)}
    return Dataset(bc=bc, dataverse=dataverse, matching=plan.matching, reference=_reference(words, bc, dataverse))


def _reference(words: dict[str, Any], bc: dict[str, list[dict[str, Any]]],
               dataverse: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """The setup rows the records name: BC countries/regions and units of measure, the products' unit group."""
    countries = {r["country"] for r in (*bc["customers"], *bc["contacts"])}
    units = {r["baseUnitOfMeasureCode"] for r in bc["items"]}
    reference: dict[str, dict[str, list[dict[str, Any]]]] = {"bc": {
        "countriesRegions": [{"code": c["code"], "displayName": c["name"]} for c in words["countries"]
                             if c["code"] in countries],
        "unitsOfMeasure": [{"code": u["code"], "displayName": u["name"]} for u in words["items"]["units"]
                           if u["code"] in units],
    }, "dataverse": {"uomschedules": []}}
    if dataverse["products"]:
        code = words["items"]["product_unit"]
        name = next(u["name"] for u in words["items"]["units"] if u["code"] == code)
        reference["dataverse"]["uomschedules"].append({"name": f"{UNIT_GROUP_PREFIX}{code}", "baseuomname": code,
                                                        "description": f"Unit group of {name} (generated data)."})
    return reference


def case_variant(name: str, rng: random.Random) -> str:
    """``name`` in other letter case: equal to it ignoring case, never equal to it."""
    candidates = [v for v in (name.upper(), name.lower(), name.swapcase(), _alternating(name)) if v != name
                  and v.casefold() == name.casefold()]
    if not candidates:
        raise ValueError(f"{name!r} has no letter whose case can change")
    return rng.choice(candidates)


def _alternating(name: str) -> str:
    return "".join(c.upper() if i % 2 else c.lower() for i, c in enumerate(name))


class _Place:
    """Addresses, phone numbers and postal codes of one of the vocabulary's countries."""

    def __init__(self, words: dict[str, Any], rng: random.Random) -> None:
        self.rng = rng
        self.countries = words["countries"]
        self.streets = words["streets"]

    def address(self) -> dict[str, str]:
        country = self.rng.choice(self.countries)
        street = f"{self.rng.randint(1, 240)} {self.rng.choice(self.streets['names'])} {self.rng.choice(self.streets['kinds'])}"
        return {"line1": street, "city": self.rng.choice(country["cities"]), "country": country["code"],
                "postal_code": self.fill(country["postal_code"]), "phone": self.fill(country["phone"]),
                "mobile": self.fill(country["phone"])}

    def fill(self, pattern: str) -> str:
        """``#`` a digit, ``@`` an upper-case letter."""
        return "".join(str(self.rng.randrange(10)) if c == "#" else chr(65 + self.rng.randrange(26)) if c == "@" else c
                       for c in pattern)


class _Companies:
    def __init__(self, words: dict[str, Any], rng: random.Random) -> None:
        self.words = words["company"]
        self.rng = rng
        self.place = _Place(words, rng)
        # Four letters that tag this seed's account and product numbers (alternate keys stay unique
        # across seeds loaded into one sandbox).
        self.tag = "".join(chr(65 + rng.randrange(26)) for _ in range(4))

    def names(self, count: int) -> list[str]:
        """``count`` names, distinct ignoring case: prefix + core + suffix drawn without repetition,
        then the same again with " 2", " 3", … once every combination is used."""
        prefixes, cores, suffixes = self.words["prefixes"], self.words["cores"], self.words["suffixes"]
        space = len(prefixes) * len(cores) * len(suffixes)
        names: list[str] = []
        seen: set[str] = set()
        layer = 0
        while len(names) < count:
            for index in self.rng.sample(range(space), min(space, count - len(names))):
                prefix, rest = divmod(index, len(cores) * len(suffixes))
                core, suffix = divmod(rest, len(suffixes))
                name = " ".join(p for p in (prefixes[prefix], cores[core], suffixes[suffix]) if p)
                if layer:
                    name = f"{name} {layer + 1}"
                if name.casefold() in seen:  # the vocabulary promises this cannot happen
                    raise ValueError(f"the generator vocabulary spells {name!r} twice")
                seen.add(name.casefold())
                names.append(name)
            layer += 1
        return names

    def profile(self, name: str) -> dict[str, str]:
        slug = _ascii(name).lower()
        domain = "".join(c for c in slug if c.isalnum())[:40] + ".example"
        return {"name": name, "email": f"{self.rng.choice(self.words['mailboxes'])}@{domain}",
                "website": f"www.{domain}", **self.place.address()}

    def build(self, customers: int, accounts: int, plan: OverlapPlan) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        others = accounts - plan.accounts_needed
        names = self.names(customers + others)
        profiles = [self.profile(n) for n in names]
        customer_profiles, other_profiles = profiles[:customers], profiles[customers:]
        chosen = self.rng.sample(range(customers), plan.overlapping)
        duplicated, matching = chosen[:plan.duplicated], chosen[plan.duplicated:]
        varied = set(matching[:plan.case_variants])
        rows: list[dict[str, Any]] = []
        for i in matching:
            profile = customer_profiles[i]
            name = case_variant(profile["name"], self.rng) if i in varied else profile["name"]
            rows.append(_account(profile, name))
        for i in duplicated:
            profile = customer_profiles[i]
            rows += [_account(profile, profile["name"]), _account(self.profile(profile["name"]), profile["name"])]
        rows += [_account(p, p["name"]) for p in other_profiles]
        self.rng.shuffle(rows)
        for number, row in enumerate(rows, 1):
            row["accountnumber"] = f"{self.tag}-{number:06d}"
        return [_customer(p) for p in customer_profiles], rows


def _customer(p: dict[str, str]) -> dict[str, Any]:
    return {"displayName": p["name"], "type": "Company", "addressLine1": p["line1"], "city": p["city"],
            "country": p["country"], "postalCode": p["postal_code"], "phoneNumber": p["phone"], "email": p["email"],
            "website": p["website"]}


def _account(p: dict[str, str], name: str) -> dict[str, Any]:
    return {"@odata.type": "Microsoft.Dynamics.CRM.account", "name": name, "customertypecode": ACCOUNT_TYPE_CUSTOMER,
            "address1_line1": p["line1"], "address1_city": p["city"], "address1_country": p["country"],
            "address1_postalcode": p["postal_code"], "telephone1": p["phone"], "emailaddress1": p["email"],
            "websiteurl": p["website"]}


class _People:
    def __init__(self, words: dict[str, Any], rng: random.Random) -> None:
        self.words = words["people"]
        self.rng = rng
        self.place = _Place(words, rng)

    def person(self) -> dict[str, str]:
        first, last = self.rng.choice(self.words["first_names"]), self.rng.choice(self.words["last_names"])
        mailbox = f"{_ascii(first)}.{_ascii(last)}{self.rng.randrange(100)}".lower()
        return {"first": first, "last": last, "job": self.rng.choice(self.words["job_titles"]),
                "email": f"{mailbox}@{self.rng.choice(self.words['mail_domains'])}",
                **self.place.address()}

    def bc(self, count: int) -> list[dict[str, Any]]:
        return [{"type": "Person", "displayName": f"{p['first']} {p['last']}", "jobTitle": p["job"], "email": p["email"],
                 "phoneNumber": p["phone"], "mobilePhoneNumber": p["mobile"], "addressLine1": p["line1"],
                 "city": p["city"], "country": p["country"], "postalCode": p["postal_code"]}
                for p in (self.person() for _ in range(count))]

    def dataverse(self, count: int) -> list[dict[str, Any]]:
        return [{"@odata.type": "Microsoft.Dynamics.CRM.contact", "firstname": p["first"], "lastname": p["last"],
                 "jobtitle": p["job"], "emailaddress1": p["email"], "telephone1": p["phone"], "mobilephone": p["mobile"],
                 "address1_line1": p["line1"], "address1_city": p["city"], "address1_country": p["country"],
                 "address1_postalcode": p["postal_code"]}
                for p in (self.person() for _ in range(count))]


class _Goods:
    def __init__(self, words: dict[str, Any], rng: random.Random) -> None:
        self.words = words["items"]
        self.rng = rng

    def _thing(self) -> tuple[str, str, Decimal, Decimal]:
        """(name, BC item type, unit price, unit cost)."""
        w, rng = self.words, self.rng
        roll = rng.random()
        kind = "Service" if roll < 0.1 else "Non-Inventory" if roll < 0.2 else "Inventory"
        if kind == "Service":
            name = f"{rng.choice(w['services'])}, {rng.choice(w['objects']).lower()}"
        else:
            name = f"{rng.choice(w['adjectives'])} {rng.choice(w['materials'])} {rng.choice(w['objects'])}"
        price = Decimal(rng.randrange(500, 250_000)) / 100
        cost = (price * Decimal(rng.randrange(45, 85)) / 100).quantize(Decimal("0.01"))
        return name, kind, price, cost

    def items(self, count: int) -> list[dict[str, Any]]:
        units = {kind: u["code"] for u in self.words["units"] for kind in u["for"]}
        bodies = []
        for _ in range(count):
            name, kind, price, cost = self._thing()
            bodies.append({"displayName": name, "type": kind, "baseUnitOfMeasureCode": units[kind],
                           "unitPrice": float(price), "unitCost": float(cost)})
        return bodies

    def products(self, count: int, tag: str) -> list[dict[str, Any]]:
        bodies = []
        for number in range(1, count + 1):
            name, _, price, cost = self._thing()
            bodies.append({"@odata.type": "Microsoft.Dynamics.CRM.product", "productnumber": f"{tag}-P{number:06d}",
                           "name": name, "producttypecode": 1, "productstructure": 1, "quantitydecimal": 2,
                           "price": float(price), "standardcost": float(cost), "currentcost": float(cost)})
        return bodies


_NOT_DECOMPOSED = str.maketrans({"ø": "o", "Ø": "O", "æ": "ae", "Æ": "AE", "ß": "ss", "đ": "d", "ł": "l", "Ł": "L"})


def _ascii(text: str) -> str:
    """``text`` with accents dropped and anything but letters and digits removed (for e-mail names)."""
    plain = unicodedata.normalize("NFKD", text.translate(_NOT_DECOMPOSED)).encode("ascii", "ignore").decode()
    return "".join(c for c in plain if c.isalnum())


# -- loading ------------------------------------------------------------------------------------


def load(dataset: Dataset, *, dataverse: requests.Session, dataverse_api: str, bc: requests.Session, bc_api: str,
         company_id: str, progress: bool = False) -> LoadReport:
    """Create ``dataset`` in a running sandbox (or any service that speaks these APIs).

    First one keyed read: when the first account's number is taken, this seed was loaded before and
    :class:`AlreadyLoaded` is raised with nothing written. Then the missing reference rows (a read per
    set, then one write), then the records: BC through JSON ``$batch`` of :data:`BC_CHUNK` operations
    (atomic, ``Isolation: snapshot``), Dataverse through ``CreateMultiple`` of :data:`DATAVERSE_CHUNK`
    targets. The sessions carry the authentication (and any retry policy). Raises :class:`LoadError`
    when a service refuses a record; the records of earlier requests stay.
    """
    loader = _Loader(dataverse, dataverse_api.rstrip("/"), bc, bc_api.rstrip("/"), company_id)
    started = time.perf_counter()
    totals = {f"bc/{name}": len(rows) for name, rows in dataset.bc.items()}
    totals.update({f"dataverse/{name}": len(rows) for name, rows in dataset.dataverse.items()})
    with _progress_bar(progress, totals) as advance:
        counts = loader.run(dataset, advance)
    return LoadReport(counts, time.perf_counter() - started, loader.requests)


@contextmanager
def _progress_bar(enabled: bool, totals: dict[str, int]) -> Iterator[Callable[[str, int], None]]:
    if not enabled:
        yield lambda _key, _n: None
        return
    columns = [TextColumn("{task.description:<20}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    console = Console(stderr=True)
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bar:
        tasks = {key: bar.add_task(key, total=total) for key, total in totals.items() if total}
        yield lambda key, n: bar.advance(tasks[key], n) if key in tasks else None


class _Loader:
    def __init__(self, dataverse: requests.Session, dataverse_api: str, bc: requests.Session, bc_api: str,
                 company_id: str) -> None:
        self.dv, self.dv_api, self.bc, self.bc_api, self.company = dataverse, dataverse_api, bc, bc_api, company_id
        self.requests = 0

    def run(self, dataset: Dataset, advance: Callable[[str, int], None]) -> dict[str, int]:
        accounts = dataset.dataverse.get("accounts")
        if accounts and accounts[0].get("accountnumber"):  # one keyed read guards against loading a seed twice
            number = str(accounts[0]["accountnumber"]).replace("'", "''")
            if self._read_all(self.dv, f"{self.dv_api}/accounts", {"$select": "accountid",
                                                                    "$filter": f"accountnumber eq '{number}'"},
                              "dataverse", "accounts"):
                raise AlreadyLoaded(accounts[0])
        counts: dict[str, int] = {}
        reference = dataset.reference
        for name, rows in reference.get("bc", {}).items():
            created = self._bc_reference(name, rows)
            if created:
                counts[f"bc/{name}"] = created
        for name, rows in dataset.bc.items():
            counts[f"bc/{name}"] = self._bc_records(name, rows, partial(advance, f"bc/{name}"))
        extra: dict[str, Any] = {}
        groups = reference.get("dataverse", {}).get("uomschedules", [])
        if groups:
            extra, created = self._unit_group(groups[0])
            if created:
                counts["dataverse/uomschedules"] = 1
        for name, rows in dataset.dataverse.items():
            fill = extra if name == "products" else {}
            counts[f"dataverse/{name}"] = self._dataverse_records(name, rows, fill, partial(advance, f"dataverse/{name}"))
        return counts

    # -- HTTP ------------------------------------------------------------------------------------
    def _send(self, session: requests.Session, method: str, url: str, **kwargs: Any) -> requests.Response:
        self.requests += 1
        return session.request(method, url, timeout=kwargs.pop("timeout", 600), **kwargs)

    def _read_all(self, session: requests.Session, url: str, params: dict[str, str], service: str,
                  entity_set: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        next_url: str | None = url
        while next_url:
            resp = self._send(session, "GET", next_url, params=params if next_url == url else None)
            if resp.status_code != 200:
                raise LoadError(service, entity_set, 0, {}, resp.status_code, _message(resp), action=f"reading {entity_set}")
            body = resp.json()
            rows += body.get("value", [])
            next_url = body.get("@odata.nextLink")
        return rows

    # -- BC ----------------------------------------------------------------------------------------
    def _company_url(self, entity_set: str) -> str:
        return f"companies({self.company})/{entity_set}"

    def _bc_reference(self, entity_set: str, rows: list[dict[str, Any]]) -> int:
        """Create the code-keyed rows the company lacks; returns how many were created."""
        if not rows:
            return 0
        existing = self._read_all(self.bc, f"{self.bc_api}/{self._company_url(entity_set)}", {"$select": "code"},
                                  "bc", entity_set)
        have = {str(r.get("code", "")).upper() for r in existing}
        missing = [r for r in rows if str(r["code"]).upper() not in have]
        return self._bc_records(entity_set, missing, lambda _n: None)

    def _bc_records(self, entity_set: str, rows: Sequence[dict[str, Any]], advance: Callable[[int], None]) -> int:
        created = 0
        url = self._company_url(entity_set)
        for start in range(0, len(rows), BC_CHUNK):
            chunk = rows[start:start + BC_CHUNK]
            batch = {"requests": [{"id": str(start + i), "method": "POST", "url": url,
                                   "headers": {"Content-Type": "application/json"}, "body": body}
                                  for i, body in enumerate(chunk)]}
            # Isolation: snapshot makes the batch atomic: a refused record leaves none of its batch behind.
            resp = self._send(self.bc, "POST", f"{self.bc_api}/$batch", json=batch,
                              headers={"Isolation": "snapshot"})
            if resp.status_code != 200:
                raise LoadError("bc", entity_set, start, chunk[0], resp.status_code, _message(resp), chunk=len(chunk))
            answers = resp.json().get("responses", [])
            refused = sorted((a for a in answers if a.get("status", 0) >= 300), key=lambda a: int(a.get("id", 0)))
            if refused:
                first = refused[0]
                index = int(first.get("id", start))
                raise LoadError("bc", entity_set, index, rows[index], first.get("status", 0), _body_message(first.get("body")))
            if len(answers) != len(chunk):
                raise LoadError("bc", entity_set, start, chunk[0], resp.status_code,
                                f"the batch answered {len(answers)} of {len(chunk)} requests", chunk=len(chunk))
            created += len(chunk)
            advance(len(chunk))
        return created

    # -- Dataverse ---------------------------------------------------------------------------------
    def _unit_group(self, group: dict[str, Any]) -> tuple[dict[str, str], bool]:
        """The products' unit group (found by name, or created) and its base unit, as binds."""
        name = str(group["name"]).replace("'", "''")
        found = self._read_all(self.dv, f"{self.dv_api}/uomschedules",
                               {"$select": "uomscheduleid", "$filter": f"name eq '{name}'"}, "dataverse", "uomschedules")
        created = False
        if found:
            group_id = found[0]["uomscheduleid"]
        else:
            resp = self._send(self.dv, "POST", f"{self.dv_api}/uomschedules", json=group,
                              headers={"Prefer": "return=representation"})
            if resp.status_code not in (200, 201):
                raise LoadError("dataverse", "uomschedules", 0, group, resp.status_code, _message(resp))
            group_id, created = resp.json()["uomscheduleid"], True
        units = self._read_all(self.dv, f"{self.dv_api}/uoms",
                               {"$select": "uomid", "$filter": f"_uomscheduleid_value eq {group_id} and "
                                                              "isschedulebaseuom eq true"}, "dataverse", "uoms")
        binds = {"defaultuomscheduleid@odata.bind": f"/uomschedules({group_id})"}
        if units:
            binds["defaultuomid@odata.bind"] = f"/uoms({units[0]['uomid']})"
        return binds, created

    def _dataverse_records(self, entity_set: str, rows: Sequence[dict[str, Any]], fill: dict[str, Any],
                           advance: Callable[[int], None]) -> int:
        created = 0
        url = f"{self.dv_api}/{entity_set}/Microsoft.Dynamics.CRM.CreateMultiple"
        for start in range(0, len(rows), DATAVERSE_CHUNK):
            chunk = [{**body, **fill} for body in rows[start:start + DATAVERSE_CHUNK]] if fill else \
                list(rows[start:start + DATAVERSE_CHUNK])
            resp = self._send(self.dv, "POST", url, json={"Targets": chunk})
            if resp.status_code != 200:
                raise LoadError("dataverse", entity_set, start, chunk[0], resp.status_code, _message(resp),
                                chunk=len(chunk))
            ids = resp.json().get("Ids", [])
            if len(ids) != len(chunk):
                raise LoadError("dataverse", entity_set, start, chunk[0], resp.status_code,
                                f"CreateMultiple answered {len(ids)} ids for {len(chunk)} targets", chunk=len(chunk))
            created += len(chunk)
            advance(len(chunk))
        return created


def _message(resp: requests.Response) -> str:
    try:
        return _body_message(resp.json())
    except ValueError:
        text = (resp.text or "").strip()
        return text.splitlines()[0][:300] if text else (resp.reason or "no message")


def _body_message(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        code, message = error.get("code"), str(error.get("message", "")).strip()
        return f"{code}: {message}" if code else message or "no message"
    return str(body)[:300] if body else "no message"


def _label(record: dict[str, Any]) -> str:
    for name in ("displayName", "name", "fullname", "code"):
        if isinstance(record.get(name), str) and record[name]:
            return str(record[name])
    if record.get("firstname") or record.get("lastname"):
        return f"{record.get('firstname', '')} {record.get('lastname', '')}".strip()
    return ""
