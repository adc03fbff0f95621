"""The audit log is hash-chained: an edit, a deletion or a reordering shows (SQLite and PostgreSQL)."""

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from modelfleet.store import GENESIS, append_audit, make_engine, upgrade, verify_audit_chain
from modelfleet.store import _migrate as migrate_module

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def write_entries(session, count=4):
    for i in range(count):
        append_audit(
            session, at=T0 + timedelta(minutes=i), actor="alice", action="device.approve", target=f"d{i}",
            detail={"i": i, "share": 0.25 * i, "note": "ünïcode"},
        )  # fmt: skip
    session.commit()


def test_entries_chain_from_the_genesis_hash(session):
    write_entries(session)
    check = verify_audit_chain(session)
    assert check.ok
    assert check.entries == 4
    first = session.execute(text("SELECT prev_hash FROM audit_log ORDER BY id LIMIT 1")).scalar_one()
    assert first == GENESIS


def test_an_edited_detail_breaks_the_chain_at_that_entry(session):
    write_entries(session)
    ids = [row[0] for row in session.execute(text("SELECT id FROM audit_log ORDER BY id"))]
    session.execute(text("UPDATE audit_log SET actor = 'mallory' WHERE id = :id"), {"id": ids[2]})
    session.commit()
    check = verify_audit_chain(session)
    assert not check.ok
    assert check.broken_at == ids[2]
    assert check.entries == 2
    assert "content" in (check.reason or "")


def test_a_deleted_entry_breaks_the_chain_at_the_next_one(session):
    write_entries(session)
    ids = [row[0] for row in session.execute(text("SELECT id FROM audit_log ORDER BY id"))]
    session.execute(text("DELETE FROM audit_log WHERE id = :id"), {"id": ids[1]})
    session.commit()
    check = verify_audit_chain(session)
    assert not check.ok
    assert check.broken_at == ids[2]
    assert "prev_hash" in (check.reason or "")


@pytest.fixture
def empty_engine(empty_database_url):
    engine = make_engine(empty_database_url)
    yield engine
    engine.dispose()


def test_upgrading_chains_entries_written_before_the_chain_existed(empty_engine):
    engine = empty_engine
    migrate_module.upgrade(engine, "0001_initial")
    with engine.begin() as connection:
        for i in range(3):
            connection.execute(
                text("INSERT INTO audit_log (at, actor, action, target, detail) VALUES (:at, 'a', 'x', :t, :d)"),
                {"at": T0 + timedelta(seconds=i), "t": f"t{i}", "d": '{"k": 1}'},
            )
    upgrade(engine)
    with Session(engine) as session:
        check = verify_audit_chain(session)
        assert check.ok, check
        assert check.entries == 3
        append_audit(session, at=T0 + timedelta(hours=1), actor="b", action="y")
        session.commit()
        assert verify_audit_chain(session).entries == 4
