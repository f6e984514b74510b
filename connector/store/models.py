"""The integration state, mirroring Business Central's own tables with Python names.

- ``TableMapping`` / ``FieldMapping``: table 5335 "Integration Table Mapping" and 5336 "Integration
  Field Mapping" (https://learn.microsoft.com/dynamics365/business-central/admin-how-to-modify-table-mappings-for-synchronization);
- ``Coupling``: table 5331 "CRM Integration Record", one row per coupled pair, with the modified-on
  pair recorded at the last successful synchronization and the last results per direction;
- ``OptionCoupling``: "CRM Option Mapping", a BC setup record coupled to a Dataverse option value;
- ``SyncJob`` / ``JobError``: 5338 "Integration Synch. Job" and 5339 "Integration Synch. Job Errors"
  (https://learn.microsoft.com/dynamics365/business-central/admin-how-to-view-synchronization-status).

GUIDs are stored as lower-case strings; times as naive UTC.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON}


class Direction(enum.StrEnum):
    """Synch. direction of a table or field mapping (BC's option values, spelled as in the UI)."""

    BIDIRECTIONAL = "Bidirectional"
    TO_INTEGRATION = "ToIntegrationTable"  # BC -> Dataverse
    FROM_INTEGRATION = "FromIntegrationTable"  # Dataverse -> BC


class DeletionConflict(enum.StrEnum):
    NONE = "None"
    RESTORE_RECORDS = "Restore Records"
    REMOVE_COUPLING = "Remove Coupling"


class UpdateConflict(enum.StrEnum):
    NONE = "None"
    SEND_UPDATE = "Send Update to Integration"
    GET_UPDATE = "Get Update from Integration"


class FieldStatus(enum.StrEnum):
    ENABLED = "Enabled"
    DISABLED = "Disabled"


class SyncResult(enum.StrEnum):
    SUCCESS = "Success"
    FAILURE = "Failure"


class JobType(enum.StrEnum):
    SYNCHRONIZATION = "Synchronization"
    COUPLING = "Coupling"
    UNCOUPLING = "Uncoupling"


class MappingKind(enum.StrEnum):
    """What identifies the Dataverse side: a row (GUID key) or an option value (option mappings)."""

    TABLE = "Table"
    OPTION = "Option"


def _enum(cls: type[enum.StrEnum]) -> Enum:
    return Enum(cls, native_enum=False, length=40, values_callable=lambda members: [m.value for m in members])


class TableMapping(Base):
    __tablename__ = "integration_table_mapping"

    name: Mapped[str] = mapped_column(String(20), primary_key=True)
    bc_entity: Mapped[str] = mapped_column(String(64))  # BC API entity set, e.g. "customers"
    dataverse_table: Mapped[str] = mapped_column(String(64))  # logical name, e.g. "account"
    kind: Mapped[MappingKind] = mapped_column(_enum(MappingKind), default=MappingKind.TABLE)
    option_attribute: Mapped[str | None] = mapped_column(String(64))  # option mappings: the choice column
    direction: Mapped[Direction] = mapped_column(_enum(Direction))
    table_filter: Mapped[str | None] = mapped_column(Text)  # OData $filter on the BC entity set
    integration_table_filter: Mapped[str | None] = mapped_column(Text)  # OData $filter on the Dataverse table
    sync_only_coupled: Mapped[bool] = mapped_column(Boolean, default=True)
    deletion_conflict: Mapped[DeletionConflict] = mapped_column(_enum(DeletionConflict), default=DeletionConflict.NONE)
    update_conflict: Mapped[UpdateConflict] = mapped_column(_enum(UpdateConflict), default=UpdateConflict.NONE)
    dependency_filter: Mapped[str | None] = mapped_column(String(250))  # mapping names separated by |
    create_new_if_no_match: Mapped[bool] = mapped_column(Boolean, default=False)
    sync_after_match_coupling: Mapped[bool] = mapped_column(Boolean, default=False)
    bc_template: Mapped[dict[str, Any]] = mapped_column(default=dict)  # values for new BC records
    dataverse_template: Mapped[dict[str, Any]] = mapped_column(default=dict)  # values for new Dataverse rows
    # Watermarks (BC's fields 12 and 13 with clearer names): the latest modified-on seen per side.
    bc_watermark: Mapped[datetime | None] = mapped_column(DateTime)
    dataverse_watermark: Mapped[datetime | None] = mapped_column(DateTime)

    fields: Mapped[list[FieldMapping]] = relationship(
        back_populates="mapping", cascade="all, delete-orphan", order_by="FieldMapping.id")


class FieldMapping(Base):
    __tablename__ = "integration_field_mapping"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    mapping_name: Mapped[str] = mapped_column(ForeignKey("integration_table_mapping.name", ondelete="CASCADE"))
    bc_field: Mapped[str | None] = mapped_column(String(64))  # None: a constant written to Dataverse
    dataverse_field: Mapped[str | None] = mapped_column(String(64))  # None: a constant written to BC
    direction: Mapped[Direction] = mapped_column(_enum(Direction))
    status: Mapped[FieldStatus] = mapped_column(_enum(FieldStatus), default=FieldStatus.ENABLED)
    constant_value: Mapped[str | None] = mapped_column(String(100))
    via_mapping: Mapped[str | None] = mapped_column(String(20))  # lookups/options resolve through this mapping
    clear_value_on_failed_sync: Mapped[bool] = mapped_column(Boolean, default=False)
    not_null: Mapped[bool] = mapped_column(Boolean, default=False)
    use_for_match: Mapped[bool] = mapped_column(Boolean, default=False)
    case_sensitive: Mapped[bool] = mapped_column(Boolean, default=False)
    match_priority: Mapped[int] = mapped_column(Integer, default=0)

    mapping: Mapped[TableMapping] = relationship(back_populates="fields")


class Coupling(Base):
    """A coupled pair. ``pending``: the destination row was being created when the connector stopped
    (its id was chosen and recorded first, so finishing the write is an idempotent upsert)."""

    __tablename__ = "coupling"
    # Its two unique keys are its only indexes: every lookup goes through one of them (see
    # ``couplings_of_bc_records``), and each index more is written at a random place per coupling
    # created, which made recording a chunk of 500 new couplings take twice as long with four.
    __table_args__ = (
        UniqueConstraint("bc_entity", "bc_id", name="uq_coupling_bc_record"),
        UniqueConstraint("bc_entity", "dataverse_table", "dataverse_id", name="uq_coupling_dataverse_row"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    bc_entity: Mapped[str] = mapped_column(String(64))
    bc_id: Mapped[str] = mapped_column(String(36))
    dataverse_table: Mapped[str] = mapped_column(String(64))
    dataverse_id: Mapped[str] = mapped_column(String(36))
    last_synced_bc_modified: Mapped[datetime | None] = mapped_column(DateTime)  # "Last Synch. Modified On"
    last_synced_dataverse_modified: Mapped[datetime | None] = mapped_column(DateTime)  # "... CRM Modified On"
    last_result_from: Mapped[SyncResult | None] = mapped_column(_enum(SyncResult))  # Dataverse -> BC
    last_result_to: Mapped[SyncResult | None] = mapped_column(_enum(SyncResult))  # BC -> Dataverse
    last_job_from: Mapped[str | None] = mapped_column(String(36))
    last_job_to: Mapped[str | None] = mapped_column(String(36))
    skipped: Mapped[bool] = mapped_column(Boolean, default=False)
    pending: Mapped[bool] = mapped_column(Boolean, default=False)


class OptionCoupling(Base):
    __tablename__ = "option_coupling"
    __table_args__ = (
        UniqueConstraint("mapping_name", "bc_id", name="uq_option_coupling_bc_record"),
        UniqueConstraint("mapping_name", "option_value", name="uq_option_coupling_option"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    mapping_name: Mapped[str] = mapped_column(String(20))
    bc_id: Mapped[str] = mapped_column(String(36))
    bc_code: Mapped[str] = mapped_column(String(64))
    option_value: Mapped[int] = mapped_column(Integer)
    option_label: Mapped[str] = mapped_column(String(250))


class SyncJob(Base):
    __tablename__ = "sync_job"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    mapping_name: Mapped[str] = mapped_column(String(20), index=True)
    type: Mapped[JobType] = mapped_column(_enum(JobType))
    direction: Mapped[Direction] = mapped_column(_enum(Direction))
    started_at: Mapped[datetime] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    message: Mapped[str | None] = mapped_column(String(250))
    inserted: Mapped[int] = mapped_column(Integer, default=0)
    modified: Mapped[int] = mapped_column(Integer, default=0)
    deleted: Mapped[int] = mapped_column(Integer, default=0)
    unchanged: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    coupled: Mapped[int] = mapped_column(Integer, default=0)
    uncoupled: Mapped[int] = mapped_column(Integer, default=0)

    errors: Mapped[list[JobError]] = relationship(back_populates="job", cascade="all, delete-orphan",
                                                  order_by="JobError.id")


class JobError(Base):
    """One failed record of a job (or one summary row)."""

    __tablename__ = "job_error"
    __table_args__ = (
        Index("ix_job_error_job_bc_record", "job_id", "bc_id"),
        Index("ix_job_error_job_dataverse_row", "job_id", "dataverse_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("sync_job.id", ondelete="CASCADE"), index=True)
    mapping_name: Mapped[str] = mapped_column(String(20))
    bc_entity: Mapped[str | None] = mapped_column(String(64))
    bc_id: Mapped[str | None] = mapped_column(String(36))
    dataverse_table: Mapped[str | None] = mapped_column(String(64))
    dataverse_id: Mapped[str | None] = mapped_column(String(36))
    source: Mapped[str] = mapped_column(String(250))  # e.g. "customers(…)" or "accounts(…)"
    destination: Mapped[str | None] = mapped_column(String(250))
    message: Mapped[str] = mapped_column(String(2048))
    created_at: Mapped[datetime] = mapped_column(DateTime)

    job: Mapped[SyncJob] = relationship(back_populates="errors")


def couplings_of_bc_records(session: Session, bc_entity: str, dataverse_table: str,
                            bc_ids: Collection[str]) -> list[Coupling]:
    """The couplings of these BC records in the mapping of ``bc_entity`` to ``dataverse_table``.

    A BC record has at most one coupling (``uq_coupling_bc_record``), so it is looked up by that key
    alone and kept when its table is the mapping's. With the table in the query too, SQLite (which
    keeps no statistics here) walks the mapping's prefix of ``uq_coupling_dataverse_row`` instead and
    reads every coupling of the mapping for each chunk."""
    if not bc_ids:
        return []
    rows = session.scalars(select(Coupling).where(Coupling.bc_entity == bc_entity, Coupling.bc_id.in_(bc_ids)))
    return [c for c in rows if c.dataverse_table == dataverse_table]
