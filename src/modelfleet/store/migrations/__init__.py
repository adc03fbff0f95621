"""Alembic revisions of the server schema, run by :func:`modelfleet.store.upgrade` (no alembic.ini).

To add a revision, change ``_tables.py``, then autogenerate it against a database
at the current head and review what it wrote::

    from alembic import command
    from modelfleet.store import alembic_config, connect, make_engine

    with connect(make_engine(url)) as connection:
        command.revision(alembic_config(connection), "add rollouts", autogenerate=True, rev_id="0002_rollouts")
"""
