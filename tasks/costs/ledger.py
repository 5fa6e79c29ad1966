"""The durable ledger of budget reservations and spend.

One table of entries, one row per gated run: a run that passes the gate holds its high
estimate (`reserved`); on completion the hold becomes the actual spend; a failed,
cancelled or rejected run releases what was not billed. A hold counts against its own month
only, and only until it expires (`expires_at`: the estimate's job timeout plus a margin, and the
approval timeout while it waits for one), so a hold whose run vanished cannot block the budget
forever. Every change happens inside one
transaction that first takes the ledger lock, so concurrent gate calls are serialised:
when the budget left fits exactly N jobs, exactly N reservations succeed.

- SQLite (default, `$LMFT_HOME/ledger.sqlite`): the lock is the database write lock,
  taken with `BEGIN IMMEDIATE` — atomic across processes on one machine.
- PostgreSQL (`postgresql+psycopg://…`, for workers on several machines): the lock is
  `SELECT … FOR UPDATE` on the single row of `budget_lock`.

Amounts are stored as integer micro-USD (as the Hub prices jobs) so sums are exact.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path

from pydantic import BaseModel
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Engine,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    insert,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError

from tasks.paths import lmft_home

LEDGER_FILE = "ledger.sqlite"
SQLITE_BUSY_TIMEOUT_SECONDS = 120


class ReservationStatus(str, Enum):
    """Where a gated run's money stands."""

    AWAITING_APPROVAL = "awaiting_approval"
    APPROVED = "approved"
    SETTLED = "settled"
    RELEASED = "released"


OPEN_STATUSES = (ReservationStatus.AWAITING_APPROVAL, ReservationStatus.APPROVED)


class Decision(str, Enum):
    """How the run was let through, or not."""

    PENDING = "pending"
    AUTO_APPROVED = "auto-approved"
    APPROVED = "approved"
    REJECTED = "rejected"
    TIMED_OUT = "timed-out"


class BudgetExceeded(RuntimeError):
    """The run would take the month over its limit, or is above the per-job maximum."""


class Reservation(BaseModel):
    """One gated run in the ledger."""

    id: str
    run_key: str
    flow_run_id: str | None
    backend: str
    hardware: str
    price_per_hour: float
    expected_usd: float
    high_usd: float
    reserved_usd: float
    actual_usd: float | None
    status: ReservationStatus
    decision: Decision
    approver: str
    note: str
    month: str
    created_at: datetime
    job_started_at: datetime | None
    closed_at: datetime | None
    expires_at: datetime | None = None
    closed_by: str | None = None

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    def is_expired(self, now: datetime | None = None) -> bool:
        """An open hold past its expiry no longer counts against the budget."""
        return self.expires_at is not None and self.expires_at <= (now or datetime.now(UTC))


class LedgerTotals(BaseModel):
    """Money of one month: spent, held by open reservations, and left."""

    month: str
    limit_usd: float | None = None
    spent_usd: float
    reserved_usd: float
    open_reservations: int

    @property
    def left_usd(self) -> float | None:
        if self.limit_usd is None:
            return None
        return round(self.limit_usd - self.spent_usd - self.reserved_usd, 6)


metadata = MetaData()
entries = Table(
    "budget_entries",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("run_key", String(300), nullable=False, index=True),
    Column("flow_run_id", String(64), index=True),
    Column("backend", String(32), nullable=False),
    Column("hardware", String(64), nullable=False),
    Column("price_micro_usd_per_hour", BigInteger, nullable=False),
    Column("expected_micro_usd", BigInteger, nullable=False),
    Column("high_micro_usd", BigInteger, nullable=False),
    Column("reserved_micro_usd", BigInteger, nullable=False),
    Column("actual_micro_usd", BigInteger),
    Column("status", String(32), nullable=False, index=True),
    Column("decision", String(32), nullable=False),
    Column("approver", String(200), nullable=False, default=""),
    Column("note", Text, nullable=False, default=""),
    Column("month", String(7), nullable=False, index=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("job_started_at", DateTime(timezone=True)),
    Column("closed_at", DateTime(timezone=True)),
    Column("expires_at", DateTime(timezone=True)),
    Column("closed_by", String(200)),
)
lock = Table("budget_lock", metadata, Column("name", String(32), primary_key=True))
LOCK_ROW = "ledger"


def micro(usd: float) -> int:
    return round(usd * 1_000_000)


def usd(micro_usd: int | None) -> float | None:
    return None if micro_usd is None else micro_usd / 1_000_000


def _utc(value: datetime | None) -> datetime | None:
    # SQLite returns naive datetimes; everything written here is UTC.
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def default_ledger_url() -> str:
    return f"sqlite:///{Path(lmft_home()) / LEDGER_FILE}"


_ENGINES: dict[tuple[int, str], Engine] = {}


def _engine(url: str) -> Engine:
    # One engine per process: pooled connections must not cross a fork.
    key = (os.getpid(), url)
    if key in _ENGINES:
        return _ENGINES[key]
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS})
        if engine.url.database and engine.url.database != ":memory:":
            Path(engine.url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)

        # pysqlite opens transactions lazily and only as DEFERRED; writes take the write lock
        # at BEGIN instead, so the read-check-insert of a reservation cannot interleave.
        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection, _record):
            dbapi_connection.isolation_level = None
            dbapi_connection.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_SECONDS * 1000}")
            dbapi_connection.execute("PRAGMA journal_mode = WAL")
            dbapi_connection.execute(
                "PRAGMA synchronous = FULL"
            )  # every commit survives a power loss

        @event.listens_for(engine, "begin")
        def _on_begin(connection):
            write = connection.get_execution_options().get("ledger_write", False)
            connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
    else:
        engine = create_engine(url, pool_pre_ping=True)
    writer = engine.execution_options(ledger_write=True)
    with writer.begin() as conn:
        metadata.create_all(conn)
        _add_missing_columns(conn)
    try:
        with writer.begin() as conn:
            if conn.execute(select(lock.c.name)).first() is None:
                conn.execute(insert(lock).values(name=LOCK_ROW))
    except IntegrityError:  # another process inserted the lock row first
        pass
    _ENGINES[key] = engine
    return engine


def _add_missing_columns(conn) -> None:
    """Bring a ledger created by an older release up to this table (columns are only ever added)."""
    present = {c["name"] for c in inspect(conn).get_columns(entries.name)}
    for column in entries.columns:
        if column.name not in present:
            kind = column.type.compile(dialect=conn.dialect)
            conn.execute(text(f"ALTER TABLE {entries.name} ADD COLUMN {column.name} {kind}"))


def _counting(now: datetime):
    """The open holds that count against the budget at `now`: not yet expired."""
    return (
        entries.c.status.in_([s.value for s in OPEN_STATUSES]),
        or_(entries.c.expires_at.is_(None), entries.c.expires_at > now),
    )


class Ledger:
    """Reservations and spend, in a SQLAlchemy database shared by every worker."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url or default_ledger_url()
        self.engine = _engine(self.url)
        self._writer = self.engine.execution_options(ledger_write=True)

    def describe(self) -> str:
        """Where the ledger lives, without credentials."""
        return self.engine.url.render_as_string(hide_password=True)

    # -- reading -------------------------------------------------------------------------

    @staticmethod
    def _row(row) -> Reservation:
        m = row._mapping
        return Reservation(
            id=m["id"],
            run_key=m["run_key"],
            flow_run_id=m["flow_run_id"],
            backend=m["backend"],
            hardware=m["hardware"],
            price_per_hour=usd(m["price_micro_usd_per_hour"]),
            expected_usd=usd(m["expected_micro_usd"]),
            high_usd=usd(m["high_micro_usd"]),
            reserved_usd=usd(m["reserved_micro_usd"]),
            actual_usd=usd(m["actual_micro_usd"]),
            status=m["status"],
            decision=m["decision"],
            approver=m["approver"],
            note=m["note"],
            month=m["month"],
            created_at=_utc(m["created_at"]),
            job_started_at=_utc(m["job_started_at"]),
            closed_at=_utc(m["closed_at"]),
            expires_at=_utc(m["expires_at"]),
            closed_by=m["closed_by"],
        )

    def get(self, reservation_id: str) -> Reservation:
        with self.engine.connect() as conn:
            row = conn.execute(select(entries).where(entries.c.id == reservation_id)).first()
        if row is None:
            raise KeyError(f"no reservation {reservation_id!r} in the ledger at {self.describe()}")
        return self._row(row)

    def entries(
        self, *, month: str | None = None, flow_run_id: str | None = None
    ) -> list[Reservation]:
        """Entries, newest first; of one month (`YYYY-MM`) and/or one flow run."""
        query = select(entries).order_by(entries.c.created_at.desc())
        if month:
            query = query.where(entries.c.month == month)
        if flow_run_id:
            query = query.where(entries.c.flow_run_id == flow_run_id)
        with self.engine.connect() as conn:
            return [self._row(r) for r in conn.execute(query)]

    def open_entries(self) -> list[Reservation]:
        """Every open hold, of any month, expired or not, oldest first (what a reconciler walks)."""
        query = (
            select(entries)
            .where(entries.c.status.in_([s.value for s in OPEN_STATUSES]))
            .order_by(entries.c.created_at)
        )
        with self.engine.connect() as conn:
            return [self._row(r) for r in conn.execute(query)]

    @staticmethod
    def _sums(conn, month: str, now: datetime) -> tuple[int, int, int]:
        spent = conn.execute(
            select(func.coalesce(func.sum(entries.c.actual_micro_usd), 0)).where(
                entries.c.month == month, entries.c.status == ReservationStatus.SETTLED.value
            )
        ).scalar_one()
        held, count = conn.execute(
            select(func.coalesce(func.sum(entries.c.reserved_micro_usd), 0), func.count()).where(
                entries.c.month == month, *_counting(now)
            )
        ).one()
        return int(spent), int(held), int(count)

    def totals(
        self,
        month: str | None = None,
        *,
        limit_usd: float | None = None,
        now: datetime | None = None,
    ) -> LedgerTotals:
        """Spent in `month`, held by its unexpired open reservations, and what is left of `limit_usd`."""
        month = month or current_month()
        with self.engine.connect() as conn:
            spent, held, count = self._sums(conn, month, now or datetime.now(UTC))
        return LedgerTotals(
            month=month,
            limit_usd=limit_usd,
            spent_usd=usd(spent),
            reserved_usd=usd(held),
            open_reservations=count,
        )

    # -- writing -------------------------------------------------------------------------

    def reserve(
        self,
        *,
        run_key: str,
        backend: str,
        hardware: str,
        price_per_hour: float,
        expected_usd: float,
        high_usd: float,
        monthly_limit_usd: float,
        per_job_max_usd: float,
        needs_approval: bool,
        flow_run_id: str | None = None,
        hold_seconds: float | None = None,
        now: datetime | None = None,
    ) -> Reservation:
        """Hold `high_usd` for the run `run_key`, atomically, or raise `BudgetExceeded` with the figures.

        The hold counts against this month until it is settled or released, or for at most
        `hold_seconds` (None: until then). An open reservation of the same `run_key` (a retried
        flow) is returned as is.
        """
        high, limit = micro(high_usd), micro(monthly_limit_usd)
        if high > micro(per_job_max_usd):
            raise BudgetExceeded(
                f"budget: this run may cost up to ${high_usd:.2f} (high estimate), above the per-job "
                f"maximum of ${per_job_max_usd:.2f}; pick smaller hardware or fewer steps, or raise "
                "per_job_max_usd (`lmft budget set --per-job-max ...`)"
            )
        now = now or datetime.now(UTC)
        month = now.strftime("%Y-%m")
        with self._writer.begin() as conn:
            conn.execute(select(lock.c.name).where(lock.c.name == LOCK_ROW).with_for_update())
            existing = conn.execute(
                select(entries).where(
                    entries.c.run_key == run_key,
                    entries.c.status.in_([s.value for s in OPEN_STATUSES]),
                )
            ).first()
            if existing is not None:
                return self._row(existing)
            spent, held, _ = self._sums(conn, month, now)
            if high > 0 and spent + held + high > limit:  # a free run takes nothing from the budget
                left = (limit - spent - held) / 1e6
                raise BudgetExceeded(
                    f"budget: this run may cost up to ${high_usd:.2f} (high estimate) but only ${left:.2f} "
                    f"is left of the ${monthly_limit_usd:.2f} monthly limit for {month} (spent ${spent / 1e6:.2f}, "
                    f"held by open runs ${held / 1e6:.2f}); wait for running jobs to settle, reduce the run, "
                    "or raise monthly_limit_usd (`lmft budget set --monthly-limit ...`)"
                )
            reservation_id = str(uuid.uuid4())
            conn.execute(
                insert(entries).values(
                    id=reservation_id,
                    run_key=run_key,
                    flow_run_id=flow_run_id,
                    backend=backend,
                    hardware=hardware,
                    price_micro_usd_per_hour=micro(price_per_hour),
                    expected_micro_usd=micro(expected_usd),
                    high_micro_usd=high,
                    reserved_micro_usd=high,
                    actual_micro_usd=None,
                    status=(
                        ReservationStatus.AWAITING_APPROVAL
                        if needs_approval
                        else ReservationStatus.APPROVED
                    ).value,
                    decision=(Decision.PENDING if needs_approval else Decision.AUTO_APPROVED).value,
                    approver="" if needs_approval else "budget policy",
                    note="",
                    month=month,
                    created_at=now,
                    expires_at=None
                    if hold_seconds is None
                    else now + timedelta(seconds=hold_seconds),
                )
            )
            return self._row(
                conn.execute(select(entries).where(entries.c.id == reservation_id)).one()
            )

    def _close(self, reservation_id: str, **values) -> Reservation:
        """Update an open entry; a closed one is returned unchanged (hooks may run twice)."""
        with self._writer.begin() as conn:
            conn.execute(select(lock.c.name).where(lock.c.name == LOCK_ROW).with_for_update())
            conn.execute(
                update(entries)
                .where(
                    entries.c.id == reservation_id,
                    entries.c.status.in_([s.value for s in OPEN_STATUSES]),
                )
                .values(**values)
            )
        return self.get(reservation_id)

    def decide(
        self, reservation_id: str, *, decision: Decision, approver: str = "", note: str = ""
    ) -> Reservation:
        """Record a human decision: approved keeps the hold, anything else releases it."""
        now = datetime.now(UTC)
        if decision is Decision.APPROVED:
            return self._close(
                reservation_id,
                status=ReservationStatus.APPROVED.value,
                decision=decision.value,
                approver=approver,
                note=note,
            )
        return self._close(
            reservation_id,
            status=ReservationStatus.RELEASED.value,
            decision=decision.value,
            approver=approver,
            note=note,
            reserved_micro_usd=0,
            actual_micro_usd=0,
            closed_at=now,
        )

    def mark_started(self, reservation_id: str, started_at: datetime) -> Reservation:
        """Record when the job started (from then on, a failure is billed up to its end)."""
        return self._close(reservation_id, job_started_at=started_at)

    def settle(self, reservation_id: str, actual_usd: float) -> Reservation:
        """The job ended: the hold becomes the actual spend."""
        return self._close(
            reservation_id,
            status=ReservationStatus.SETTLED.value,
            reserved_micro_usd=0,
            actual_micro_usd=micro(actual_usd),
            closed_at=datetime.now(UTC),
        )

    def release(
        self,
        reservation_id: str,
        *,
        billed_usd: float = 0.0,
        note: str | None = None,
        closed_by: str | None = None,
    ) -> Reservation:
        """The run failed, was cancelled or vanished: keep what was billed as spend, release the rest.

        `closed_by` says who released it (a hook, the reconciler, an operator) for the audit.
        """
        values = {
            "reserved_micro_usd": 0,
            "closed_at": datetime.now(UTC),
            "actual_micro_usd": micro(billed_usd),
            "closed_by": closed_by,
        }
        values["status"] = (
            ReservationStatus.SETTLED if billed_usd > 0 else ReservationStatus.RELEASED
        ).value
        if note is not None:
            values["note"] = note
        return self._close(reservation_id, **values)


def release_note(operator: str, reason: str) -> str:
    """The audit note of a hold released by hand."""
    return f"released by {operator} with `lmft budget release`: {reason or 'no reason given'}"[:500]


def current_month(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).strftime("%Y-%m")
