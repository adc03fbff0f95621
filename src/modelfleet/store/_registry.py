"""The model registry: models, immutable bundle versions, yanks, lineage, aliases with history.

A version, once registered, never changes: the same version with other bytes
is refused, the same bytes again are a no-op. ``release`` is unique per model.
Aliases (``stable``, ``champion``) point at one version and every move is kept,
so "what did ``stable`` mean last Tuesday" has an answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import Connection, Table, func, select
from sqlalchemy.orm import Session

from modelfleet.bundle import VerifiedBundle
from modelfleet.errors import ConflictError, NotFoundError
from modelfleet.store._blobs import BlobRef
from modelfleet.store._tables import Alias, AliasChange, BundleRow, ModelRow

__all__ = [
    "ModelSummary",
    "alias_history",
    "bundle_children",
    "bundle_lineage",
    "bundles_by_sha256",
    "find_bundle",
    "list_aliases",
    "list_bundles",
    "list_models",
    "register_bundle",
    "set_alias",
    "yank_bundle",
]

_bundles = cast("Table", BundleRow.__table__)


@dataclass(frozen=True, slots=True)
class ModelSummary:
    """A model and a glance at its versions."""

    name: str
    created_at: datetime
    versions: int
    latest_version: str | None
    latest_release: int | None


def find_bundle(session: Session, model: str, version: str) -> BundleRow:
    """The bundle ``model`` ``version``.

    Raises:
        NotFoundError: no such version.
    """
    row = session.scalar(select(BundleRow).where(BundleRow.model == model, BundleRow.version == version))
    if row is None:
        msg = f"no bundle {model} {version}"
        raise NotFoundError(msg, code="unknown_bundle")
    return row


def register_bundle(
    session: Session, bundle: VerifiedBundle, blob: BlobRef, *, now: datetime, uploaded_by: str | None = None
) -> tuple[BundleRow, bool]:
    """Register a verified bundle; return its row and whether it is new.

    Raises:
        ConflictError: the version exists with other bytes (``version_exists``), or
            another version holds the same release (``release_exists``).
    """
    manifest = bundle.manifest
    existing = session.scalar(
        select(BundleRow).where(BundleRow.model == manifest.name, BundleRow.version == manifest.version)
    )
    if existing is not None:
        if existing.sha256 != blob.sha256:
            msg = f"{manifest.name} {manifest.version} exists with other bytes; versions are immutable"
            raise ConflictError(msg, code="version_exists")
        return existing, False
    _check_release_free(session, manifest.name, manifest.release)
    if session.get(ModelRow, manifest.name) is None:
        session.add(ModelRow(name=manifest.name, created_at=now))
        session.flush()  # no relationship() orders the two inserts; the foreign key needs the model first
    row = BundleRow(
        model=manifest.name,
        version=manifest.version,
        release=manifest.release,
        parent=manifest.parent,
        sha256=blob.sha256,
        size=blob.size,
        manifest=bundle.manifest_bytes.decode("utf-8"),
        created=manifest.created,
        signed_by=sorted(bundle.signed_by),
        uploaded_at=now,
        uploaded_by=uploaded_by,
    )
    session.add(row)
    session.flush()
    return row, True


def _check_release_free(session: Session, model: str, release: int) -> None:
    holder = session.scalar(select(BundleRow.version).where(BundleRow.model == model, BundleRow.release == release))
    if holder is not None:
        msg = f"release {release} of {model} is already version {holder}; releases are unique per model"
        raise ConflictError(msg, code="release_exists")


def list_bundles(
    session: Session, *, model: str | None = None, include_yanked: bool = True, limit: int = 100, offset: int = 0
) -> list[BundleRow]:
    """Bundles, newest release first within a model."""
    statement = select(BundleRow).order_by(BundleRow.model, BundleRow.release.desc()).limit(limit).offset(offset)
    if model is not None:
        statement = statement.where(BundleRow.model == model)
    if not include_yanked:
        statement = statement.where(BundleRow.yanked_at.is_(None))
    return list(session.scalars(statement))


def bundles_by_sha256(conn: Connection, sha256: str) -> list[tuple[str, str]]:
    """The ``(model, version)`` pairs stored with these bytes (one indexed read)."""
    rows = conn.execute(select(_bundles.c.model, _bundles.c.version).where(_bundles.c.sha256 == sha256))
    return [(row.model, row.version) for row in rows]


def yank_bundle(session: Session, model: str, version: str, *, reason: str, now: datetime) -> BundleRow:
    """Withdraw a version: pins and aliases stop resolving to it; its bytes and record stay."""
    row = find_bundle(session, model, version)
    if row.yanked_at is None:
        row.yanked_at = now
        row.yank_reason = reason
    return row


def list_models(session: Session) -> list[ModelSummary]:
    """Every model with its version count and newest release."""
    counts = (
        select(BundleRow.model, func.count().label("versions"), func.max(BundleRow.release).label("latest"))
        .group_by(BundleRow.model)
        .subquery()
    )
    statement = (
        select(ModelRow.name, ModelRow.created_at, counts.c.versions, counts.c.latest, BundleRow.version)
        .outerjoin(counts, counts.c.model == ModelRow.name)
        .outerjoin(BundleRow, (BundleRow.model == ModelRow.name) & (BundleRow.release == counts.c.latest))
        .order_by(ModelRow.name)
    )
    return [
        ModelSummary(row.name, row.created_at, row.versions or 0, row.version, row.latest)
        for row in session.execute(statement)
    ]


def bundle_lineage(session: Session, model: str, version: str) -> list[BundleRow]:
    """``version`` and its registered ancestors through ``parent``, nearest first (cycle-safe)."""
    chain = [find_bundle(session, model, version)]
    seen = {version}
    while (parent := chain[-1].parent) is not None and parent not in seen:
        row = session.scalar(select(BundleRow).where(BundleRow.model == model, BundleRow.version == parent))
        if row is None:
            break
        chain.append(row)
        seen.add(parent)
    return chain


def bundle_children(session: Session, model: str, version: str) -> list[BundleRow]:
    """Registered versions whose ``parent`` is ``version``."""
    statement = (
        select(BundleRow).where(BundleRow.model == model, BundleRow.parent == version).order_by(BundleRow.release)
    )
    return list(session.scalars(statement))


def set_alias(
    session: Session, model: str, alias: str, version: str, *, now: datetime, actor: str | None = None
) -> AliasChange:
    """Point ``alias`` at ``version`` and record the move.

    Raises:
        NotFoundError: the version does not exist.
        ConflictError: the version is yanked (``yanked``).
    """
    target = find_bundle(session, model, version)
    if target.yanked_at is not None:
        msg = f"{model} {version} is yanked; an alias cannot point at it"
        raise ConflictError(msg, code="yanked")
    current = session.get(Alias, (model, alias))
    previous = current.version if current is not None else None
    if current is None:
        session.add(Alias(model=model, name=alias, version=version, updated_at=now, updated_by=actor))
    else:
        current.version, current.updated_at, current.updated_by = version, now, actor
    change = AliasChange(
        model=model, name=alias, version=version, previous_version=previous, changed_at=now, changed_by=actor
    )
    session.add(change)
    session.flush()
    return change


def list_aliases(session: Session, model: str) -> list[Alias]:
    """A model's aliases by name."""
    return list(session.scalars(select(Alias).where(Alias.model == model).order_by(Alias.name)))


def alias_history(session: Session, model: str, alias: str) -> list[AliasChange]:
    """Every move of an alias, oldest first."""
    statement = (
        select(AliasChange)
        .where(AliasChange.model == model, AliasChange.name == alias)
        .order_by(AliasChange.changed_at, AliasChange.id)
    )
    return list(session.scalars(statement))
