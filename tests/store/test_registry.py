"""Lineage walks parents without looping, whatever the stored parents say."""

from datetime import UTC, datetime

from modelfleet.store import BundleRow, ModelRow, bundle_lineage

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def row(version, release, parent):
    return BundleRow(
        model="m", version=version, release=release, parent=parent, sha256=f"{release:064x}", size=1, manifest="{}",
        created="2026-01-01T00:00:00Z", signed_by=[], uploaded_at=NOW,
    )  # fmt: skip


def test_a_parent_cycle_ends_the_walk(session):
    session.add(ModelRow(name="m", created_at=NOW))
    session.flush()
    session.add_all([row("1.0.0", 1, "1.1.0"), row("1.1.0", 2, "1.0.0"), row("2.0.0", 3, "1.1.0")])
    session.flush()
    assert [r.version for r in bundle_lineage(session, "m", "2.0.0")] == ["2.0.0", "1.1.0", "1.0.0"]


def test_an_unregistered_parent_ends_the_walk(session):
    session.add(ModelRow(name="m", created_at=NOW))
    session.flush()
    session.add(row("1.0.0", 1, "0.9.0"))
    session.flush()
    assert [r.version for r in bundle_lineage(session, "m", "1.0.0")] == ["1.0.0"]
