"""Experiments: the frozen spec, the state, and the latest analysis.

State changes are conditional on the revision they were decided on, as for
rollouts, so a stop decided by one server process and a promotion decided by
another cannot both apply; each change is audited in the same transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, CursorResult, Table, select, update
from sqlalchemy.orm import Session

from modelfleet.errors import NotFoundError
from modelfleet.store._audit import append_audit
from modelfleet.store._rollouts import RolloutBundle, rollout_bundles
from modelfleet.store._tables import ExperimentRow

__all__ = [
    "RunningExperiment",
    "change_experiment",
    "create_experiment",
    "find_experiment",
    "list_experiments",
    "running_experiments",
    "save_analysis",
]

_experiments = cast("Table", ExperimentRow.__table__)


def create_experiment(
    session: Session,
    *,
    experiment_id: str,
    model: str,
    kind: str,
    spec: Mapping[str, Any],
    salt: str,
    planned_devices: int,
    now: datetime,
    created_by: str,
) -> ExperimentRow:
    """Store a running experiment and audit its start."""
    row = ExperimentRow(
        id=experiment_id, model=model, kind=kind, spec=dict(spec), salt=salt, state="running", revision=0,
        planned_devices=planned_devices, created_at=now, created_by=created_by, started_at=now, last_analysis={},
    )  # fmt: skip
    session.add(row)
    session.flush()
    append_audit(
        session, at=now, actor=created_by, action="experiment.start", target=experiment_id,
        detail={"model": model, "kind": kind, "planned_devices": planned_devices},
    )  # fmt: skip
    return row


def find_experiment(session: Session, experiment_id: str) -> ExperimentRow:
    """The experiment with this id.

    Raises:
        NotFoundError: no such experiment.
    """
    row = session.get(ExperimentRow, experiment_id)
    if row is None:
        msg = f"no experiment {experiment_id!r}"
        raise NotFoundError(msg, code="unknown_experiment")
    return row


def list_experiments(session: Session, *, model: str | None = None, limit: int = 100) -> list[ExperimentRow]:
    """Experiments, newest first."""
    statement = select(ExperimentRow).order_by(ExperimentRow.created_at.desc(), ExperimentRow.id.desc()).limit(limit)
    if model is not None:
        statement = statement.where(ExperimentRow.model == model)
    return list(session.scalars(statement))


def change_experiment(
    session: Session, row: ExperimentRow, *, state: str, actor: str, now: datetime, reason: str,
    winner: str | None = None, rollout_id: str | None = None, detail: Mapping[str, Any] | None = None,
) -> bool:  # fmt: skip
    """Move ``row`` to ``state`` if nobody changed it since it was read; audit the change."""
    values: dict[str, Any] = {"state": state, "revision": row.revision + 1, "stopped_at": now, "reason": reason[:2048]}
    if winner is not None:
        values["winner"] = winner
    if rollout_id is not None:
        values["rollout_id"] = rollout_id
    result = session.execute(
        update(_experiments)
        .where(_experiments.c.id == row.id, _experiments.c.revision == row.revision)
        .values(**values)
    )
    if cast("CursorResult[Any]", result).rowcount != 1:
        return False
    append_audit(
        session, at=now, actor=actor, action=f"experiment.{state}", target=row.id,
        detail={"reason": reason[:2048], "winner": winner, "rollout_id": rollout_id, **dict(detail or {})},
    )  # fmt: skip
    session.expire(row)
    return True


def save_analysis(session: Session, row: ExperimentRow, analysis: Mapping[str, Any]) -> None:
    """Keep the latest analysis of an experiment that is still at the revision it was read at."""
    session.execute(
        update(_experiments)
        .where(_experiments.c.id == row.id, _experiments.c.revision == row.revision)
        .values(last_analysis=dict(analysis))
    )


@dataclass(frozen=True, slots=True)
class RunningExperiment:
    """What the check-in path needs of a running experiment."""

    id: str
    model: str
    salt: str
    spec: Mapping[str, Any]
    bundles: Mapping[str, RolloutBundle]


def running_experiments(conn: Connection) -> list[RunningExperiment]:
    """Every running experiment, newest first, with its variants' bundles."""
    rows = conn.execute(
        select(_experiments.c.id, _experiments.c.model, _experiments.c.salt, _experiments.c.spec)
        .where(_experiments.c.state == "running")
        .order_by(_experiments.c.created_at.desc(), _experiments.c.id.desc())
    )
    found = []
    for row in rows:
        versions = [str(v["version"]) for v in (row.spec or {}).get("variants", [])]
        found.append(
            RunningExperiment(row.id, row.model, row.salt, row.spec, rollout_bundles(conn, row.model, versions))
        )
    return found
