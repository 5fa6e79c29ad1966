"""The model registry: one row per trained model, one per deploy, in the budget ledger's database.

It shares the ledger's SQLAlchemy engine and URL (`BudgetPolicy.ledger_url`, else
`$LMFT_LEDGER_URL`, else SQLite in `$LMFT_HOME`), so it works on SQLite and on PostgreSQL
wherever the ledger does. A model is keyed by the `finetune` flow run that trained it, so a
retried registration updates its row instead of adding one. A deploy records the model that
served under the same target and name before it (`replaced_model_id`), inside the same
write transaction that reads it, so two concurrent deploys cannot both claim to replace one.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Engine,
    MetaData,
    String,
    Table,
    Text,
    insert,
    or_,
    select,
    text,
    update,
)

from schemas.registry import DeploymentEvent, RegisteredModel
from schemas.serving import ServedModel, ServeStatus
from tasks.costs.ledger import LOCK_ROW, SCHEMA_LOCK_KEY, Ledger, _utc, lock

SERVING_STATUSES = (ServeStatus.SERVING, ServeStatus.DISPATCHED, ServeStatus.UNCHANGED)
"""Deploys after which the model answers (or keeps answering) under its name."""

metadata = MetaData()
models = Table(
    "registry_models",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False, index=True),
    Column("base_model", Text, nullable=False),
    Column("dataset", Text, nullable=False),
    Column("dataset_sha256", String(64)),
    Column("flow_run_id", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("record", Text, nullable=False),  # the whole RegisteredModel, as JSON
)
deployments = Table(
    "registry_deployments",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("model_id", String(64), index=True),
    Column("target", String(64), nullable=False),
    Column("name", String(100), nullable=False),
    Column("status", String(32), nullable=False),
    Column("gguf_path", Text, nullable=False),
    Column("deployed_at", DateTime(timezone=True), nullable=False),
    Column("replaced_model_id", String(64)),
    Column("rollback", Boolean, nullable=False, default=False),
    Column("record", Text, nullable=False),  # the whole DeploymentEvent, as JSON
)

_CREATED: set[tuple[int, str]] = set()


def _create_schema(engine: Engine) -> None:
    """The registry's tables, created once however many workers start together (as the ledger's)."""
    key = (os.getpid(), engine.url.render_as_string(hide_password=False))
    if key in _CREATED:
        return
    with engine.execution_options(ledger_write=True).begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
        metadata.create_all(conn)
    _CREATED.add(key)


def _event(row) -> DeploymentEvent:
    event = DeploymentEvent.model_validate_json(row._mapping["record"])
    return event.model_copy(update={"deployed_at": _utc(event.deployed_at)})


class ModelRegistry:
    """Registered models and their deploys, in the ledger's database."""

    def __init__(self, url: str | None = None) -> None:
        self._ledger = Ledger(url)
        self.engine = self._ledger.engine
        self._writer = self.engine.execution_options(ledger_write=True)
        _create_schema(self.engine)

    def describe(self) -> str:
        """Where the registry lives, without credentials."""
        return self._ledger.describe()

    # -- writing -------------------------------------------------------------------------

    def register(self, model: RegisteredModel) -> RegisteredModel:
        """Add `model`, or update its row when its id (the training flow run) is known already."""
        record = model.model_copy(update={"deployments": [], "serving": []})
        values = {
            "name": model.name,
            "base_model": model.base_model,
            "dataset": model.dataset,
            "dataset_sha256": model.dataset_sha256,
            "flow_run_id": model.flow_run_id,
            "created_at": model.created_at,
            "record": record.model_dump_json(),
        }
        with self._writer.begin() as conn:
            conn.execute(select(lock.c.name).where(lock.c.name == LOCK_ROW).with_for_update())
            found = conn.execute(select(models.c.id).where(models.c.id == model.id)).first()
            if found is None:
                conn.execute(insert(models).values(id=model.id, **values))
            else:
                conn.execute(update(models).where(models.c.id == model.id).values(**values))
        return self.get(model.id)

    def record_deployment(
        self,
        served: ServedModel,
        *,
        model_id: str | None,
        deployed_by: str = "",
        flow_run_id: str | None = None,
        rollback: bool = False,
    ) -> DeploymentEvent:
        """Record one deploy of `model_id` and which model served under its target and name before."""
        with self._writer.begin() as conn:
            conn.execute(select(lock.c.name).where(lock.c.name == LOCK_ROW).with_for_update())
            current = self._serving_row(conn, served.target, served.name)
            replaced = current._mapping["model_id"] if current is not None else None
            event = DeploymentEvent(
                id=str(uuid.uuid4()),
                model_id=model_id,
                target=served.target,
                name=served.name,
                status=served.status.value,
                gguf_path=served.gguf_path,
                url=served.url,
                pull_request_url=served.pull_request_url,
                commit_sha=served.commit_sha,
                hf_repo=served.hf_repo,
                hf_file=served.hf_file,
                deployed_at=datetime.now(UTC),
                deployed_by=deployed_by,
                flow_run_id=flow_run_id,
                replaced_model_id=replaced if replaced != model_id else None,
                rollback=rollback,
            )
            conn.execute(
                insert(deployments).values(
                    id=event.id,
                    model_id=model_id,
                    target=event.target,
                    name=event.name,
                    status=event.status,
                    gguf_path=event.gguf_path,
                    deployed_at=event.deployed_at,
                    replaced_model_id=event.replaced_model_id,
                    rollback=rollback,
                    record=event.model_dump_json(),
                )
            )
        return event

    # -- reading -------------------------------------------------------------------------

    @staticmethod
    def _serving_row(conn, target: str, name: str):
        served = [s.value for s in SERVING_STATUSES]
        return conn.execute(
            select(deployments)
            .where(
                deployments.c.target == target,
                deployments.c.name == name,
                deployments.c.status.in_(served),
            )
            .order_by(deployments.c.deployed_at.desc())
        ).first()

    def serving(self, target: str, name: str) -> DeploymentEvent | None:
        """The last deploy that serves under `name` on `target`, if any."""
        with self.engine.connect() as conn:
            row = self._serving_row(conn, target, name)
        return _event(row) if row is not None else None

    def deployments(
        self, *, target: str | None = None, name: str | None = None
    ) -> list[DeploymentEvent]:
        """Every recorded deploy, oldest first; of one target and/or served name."""
        query = select(deployments).order_by(deployments.c.deployed_at)
        if target:
            query = query.where(deployments.c.target == target)
        if name:
            query = query.where(deployments.c.name == name)
        with self.engine.connect() as conn:
            return [_event(r) for r in conn.execute(query)]

    def _models(self, query) -> list[RegisteredModel]:
        with self.engine.connect() as conn:
            rows = list(conn.execute(query.order_by(models.c.created_at.desc())))
        events = self.deployments()
        now_serving = {}
        for event in events:  # oldest first: the last serving deploy of each name wins
            if event.status in {s.value for s in SERVING_STATUSES}:
                now_serving[(event.target, event.name)] = event.model_id
        out = []
        for row in rows:
            model = RegisteredModel.model_validate_json(row._mapping["record"])
            mine = [e for e in events if e.model_id == model.id]
            where = sorted(f"{t}/{n}" for (t, n), m in now_serving.items() if m == model.id)
            out.append(
                model.model_copy(
                    update={
                        "created_at": _utc(model.created_at),
                        "deployments": mine,
                        "serving": where,
                    }
                )
            )
        return out

    def entries(self, *, name: str | None = None) -> list[RegisteredModel]:
        """Registered models, newest first; of one name (the request's output_name or a served name)."""
        query = select(models)
        if name:
            served = select(deployments.c.model_id).where(deployments.c.name == name)
            query = query.where(or_(models.c.name == name, models.c.id.in_(served)))
        return self._models(query)

    def get(self, model_id: str) -> RegisteredModel:
        found = self._models(select(models).where(models.c.id == model_id))
        if not found:
            raise KeyError(f"no model {model_id!r} in the registry at {self.describe()}")
        return found[0]

    def find(self, name_or_id: str) -> list[RegisteredModel]:
        """The model of that id, else every model registered or served under that name."""
        with self.engine.connect() as conn:
            known = conn.execute(select(models.c.id).where(models.c.id == name_or_id)).first()
        return [self.get(name_or_id)] if known else self.entries(name=name_or_id)

    def model_of_file(self, gguf_path: str) -> RegisteredModel | None:
        """The registered model one of whose GGUF files is `gguf_path`, if any."""
        for model in self._models(select(models)):
            if gguf_path == model.gguf_path or any(v.path == gguf_path for v in model.variants):
                return model
        return None

    def rollback_target(self, target: str, name: str) -> tuple[DeploymentEvent, RegisteredModel]:
        """What a rollback of `name` on `target` redeploys: the model the serving one replaced.

        Raises `LookupError`, saying why, when nothing serves there or nothing served before it.
        """
        current = self.serving(target, name)
        if current is None:
            raise LookupError(
                f"rollback: no registered deploy serves {name!r} on target {target!r} "
                f"(registry at {self.describe()}; see `lmft models list`)"
            )
        if current.replaced_model_id is None:
            raise LookupError(
                f"rollback: {name!r} on {target!r} serves {current.model_id or current.gguf_path}, "
                "which replaced no registered model; there is nothing to roll back to"
            )
        return current, self.get(current.replaced_model_id)


def rows_for_table(models_: list[RegisteredModel]) -> list[dict]:
    """One row per model, as the registry's table artifact and `lmft models list` show it."""

    def fmt(value: float | None) -> str | None:
        return None if value is None else f"{value:.4f}"

    return [
        {
            "name": m.name,
            "id": m.id,
            "created": m.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            "base model": m.base_model,
            "dataset": m.dataset,
            "dataset sha256": (m.dataset_sha256 or "")[:12],
            "eval loss": fmt(m.eval_loss),
            "base eval loss": fmt(m.base_eval_loss),
            "cost usd": m.cost_usd,
            "gguf": m.gguf_path,
            "promotion": (
                f"{m.promotion.promotion.value}: {'deployed' if m.promotion.deploy else 'kept'}"
                if m.promotion
                else None
            ),
            "serving": ", ".join(m.serving) or "not serving",
            "jobs": ", ".join(m.jobs),
        }
        for m in models_
    ]
