"""workflow: daily rollup of the node clocks that ran with another body than their case's

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 09:00:00

Hand-written; works on SpatiaLite and PostGIS.

Time per node by body counts a clock for the body it ran with. The per-case node sums
(``wf_cases.n_*``/``s_*``, rolled up daily in ``wf_kpi_daily``) put every clock under the case's
current body, which is right except for the clocks that ran with another body (a case returned
by one body and re-dispatched to another, or moved by a direct write of the lead's body). Those
were read from the clocks of every moved case at query time — most of a second city-wide at 1M
leads. ``wf_node_other_body_daily`` sums them per receipt day × place × case body × clock body
× node, so the by-body figures take them from the case's body and give them to the clock's.

A clock contributes (count 1, its seconds) when it is finished, has a body, is one of the
summed nodes, its case has a receipt time, and its body differs from the case's body (``''``
standing for none). What is foreign depends on both tables, so triggers on both keep the rollup:

* ``wf_clocks``: INSERT and DELETE (statement-level with transition tables on PostGIS), UPDATE of
  ``stopped_at``, ``started_at``, ``body_code``, ``node`` or ``lead_id`` (row-level) — the
  difference for the clock under its case's current key;
* ``wf_cases``: INSERT and DELETE (statement-level on PostGIS), UPDATE of the receipt time,
  place or body (row-level) — the difference for the case's clocks.

Each trigger reads the other table as it is when it fires, so the rollup always equals the sum
over the current (case, clock) pairs, whichever of a lead's cascaded deletes runs first.

Later migrations: SpatiaLite ``batch_alter_table`` on ``wf_clocks`` or ``wf_cases`` recreates
the table and silently drops these triggers (and 0004's) — recreate them in such a migration.
"""
from alembic import op
import sqlalchemy as sa

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

TABLE = 'wf_node_other_body_daily'
#: Nodes whose finished clocks are summed per case (as in 0004).
NODES = ('accept', 'sign', 'on_site', 'handle', 'verify', 'feedback', 'return_visit', 'conclude')
#: The case's key columns (as in ``wf_kpi_daily``), then the clock's.
CASE_KEYS = ('city_code', 'county_code', 'township_code', 'body_code')
COLS = ('day', *CASE_KEYS, 'clock_body_code', 'node')
#: wf_cases columns a clock's contribution depends on.
CASE_USED = ('lead_id', 'lead_received_at', *CASE_KEYS)
#: wf_clocks columns a clock's contribution depends on.
CLOCK_USED = ('lead_id', 'node', 'body_code', 'started_at', 'stopped_at')


def _seconds(dialect: str, later: str, earlier: str) -> str:
    if dialect == 'postgresql':
        return f'extract(epoch from ({later} - {earlier}))'
    return f'((julianday({later}) - julianday({earlier})) * 86400.0)'


def _day(dialect: str, col: str) -> str:
    return (f"CAST(({col} AT TIME ZONE 'UTC') AS date)" if dialect == 'postgresql'
            else f'date({col})')


def _part(dialect: str, cases: str, clocks: str, sign: str) -> str:
    """Signed contributions of the (case, clock) pairs of two row sources (aliases ``c``, ``k``)."""
    keys = [_day(dialect, 'c.lead_received_at')] + [f"COALESCE(c.{k}, '')" for k in CASE_KEYS]
    keys += ['k.body_code', 'k.node']
    nodes = ', '.join(f"'{n}'" for n in NODES)
    return (f"SELECT {', '.join(f'{e} AS {c}' for e, c in zip(keys, COLS))}, {sign}1 AS n, "
            f"{sign}{_seconds(dialect, 'k.stopped_at', 'k.started_at')} AS s "
            f"FROM {cases} c JOIN {clocks} k ON k.lead_id = c.lead_id "
            "WHERE k.stopped_at IS NOT NULL AND k.body_code IS NOT NULL "
            f"AND k.node IN ({nodes}) AND c.lead_received_at IS NOT NULL "
            "AND k.body_code <> COALESCE(c.body_code, '')")


def _upsert(dialect: str, parts: list[tuple[str, str, str]]) -> str:
    """Add the signed contributions of ``(cases, clocks, sign)`` sources to the rollup."""
    cols = ', '.join(COLS)
    union = ' UNION ALL '.join(_part(dialect, *p) for p in parts)
    # WHERE: SQLite needs one before ON CONFLICT after a SELECT (parsing ambiguity).
    return (f"INSERT INTO {TABLE} ({cols}, n, s) SELECT {cols}, sum(n), sum(s) FROM ({union}) d "
            f"WHERE true GROUP BY {cols} HAVING sum(n) <> 0 OR sum(s) <> 0 "
            f"ON CONFLICT ({cols}) DO UPDATE SET n = {TABLE}.n + excluded.n, "
            f"s = {TABLE}.s + excluded.s")


def _row(alias: str, used: tuple[str, ...]) -> str:
    """A trigger's OLD or NEW row as a one-row source."""
    return f"(SELECT {', '.join(f'{alias}.{c} AS {c}' for c in used)})"


def _changed(dialect: str, used: tuple[str, ...]) -> str:
    op_ = 'IS DISTINCT FROM' if dialect == 'postgresql' else 'IS NOT'
    return ' OR '.join(f'OLD.{c} {op_} NEW.{c}' for c in used)


CASE_WATCHED = ('lead_received_at', *CASE_KEYS)
CLOCK_WATCHED = ('stopped_at', 'started_at', 'body_code', 'node', 'lead_id')
FINISHED = '{r}.stopped_at IS NOT NULL AND {r}.body_code IS NOT NULL'


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.create_table(
        TABLE,
        sa.Column('day', sa.Date(), nullable=False),
        *[sa.Column(k, sa.String(length=40 if 'body' in k else 20), nullable=False)
          for k in CASE_KEYS],
        sa.Column('clock_body_code', sa.String(length=40), nullable=False),
        sa.Column('node', sa.String(length=16), nullable=False),
        sa.Column('n', sa.Integer(), nullable=False, server_default=sa.text('0')),
        sa.Column('s', sa.Float(), nullable=False, server_default=sa.text('0')),
        sa.PrimaryKeyConstraint(*COLS, name=op.f(f'pk_{TABLE}')),
    )
    op.execute(_upsert(dialect, [('wf_cases', 'wf_clocks', '')]))
    if dialect == 'postgresql':
        _pg_triggers()
    else:
        _sqlite_triggers()


def _pg_triggers() -> None:
    d = 'postgresql'
    # Bulk inserts and deletes (intake, generated data, cascades): one statement per statement.
    statement = {
        ('wf_clocks', 'INSERT'): [('wf_cases', 'nt', '')],
        ('wf_clocks', 'DELETE'): [('wf_cases', 'ot', '-')],
        ('wf_cases', 'INSERT'): [('nt', 'wf_clocks', '')],
        ('wf_cases', 'DELETE'): [('ot', 'wf_clocks', '-')],
    }
    for (table, event), parts in statement.items():
        fn = f'{TABLE}_{table}_{event.lower()}'
        op.execute(f"""
            CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                {_upsert(d, parts)};
                RETURN NULL;
            END $$""")
        ref = 'NEW TABLE AS nt' if event == 'INSERT' else 'OLD TABLE AS ot'
        op.execute(f"""
            CREATE TRIGGER trg_{fn} AFTER {event} ON {table} REFERENCING {ref}
            FOR EACH STATEMENT EXECUTE FUNCTION {fn}()""")
    # Updates: row-level, filtered by WHEN, because both tables are updated all the time
    # (escalation marks, node sums) in ways that change nothing here. Named to fire after
    # trg_wf_clocks_node_stats, which has locked the case row by then.
    for table, watched, parts in (
        ('wf_clocks', CLOCK_WATCHED, [('wf_cases', _row('OLD', CLOCK_USED), '-'),
                                      ('wf_cases', _row('NEW', CLOCK_USED), '')]),
        ('wf_cases', CASE_WATCHED, [(_row('OLD', CASE_USED), 'wf_clocks', '-'),
                                    (_row('NEW', CASE_USED), 'wf_clocks', '')]),
    ):
        fn = f'{TABLE}_{table}_update'
        op.execute(f"""
            CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                {_upsert(d, parts)};
                RETURN NULL;
            END $$""")
        op.execute(f"""
            CREATE TRIGGER trg_{fn} AFTER UPDATE OF {', '.join(watched)} ON {table}
            FOR EACH ROW WHEN ({_changed(d, watched)}) EXECUTE FUNCTION {fn}()""")


def _sqlite_triggers() -> None:
    d = 'sqlite'
    new_k, old_k = _row('NEW', CLOCK_USED), _row('OLD', CLOCK_USED)
    new_c, old_c = _row('NEW', CASE_USED), _row('OLD', CASE_USED)
    triggers = {
        'wf_clocks_insert': (f"INSERT ON wf_clocks WHEN {FINISHED.format(r='NEW')}",
                             [('wf_cases', new_k, '')]),
        'wf_clocks_delete': (f"DELETE ON wf_clocks WHEN {FINISHED.format(r='OLD')}",
                             [('wf_cases', old_k, '-')]),
        'wf_clocks_update': (f"UPDATE OF {', '.join(CLOCK_WATCHED)} ON wf_clocks "
                             f"WHEN {_changed(d, CLOCK_WATCHED)}",
                             [('wf_cases', old_k, '-'), ('wf_cases', new_k, '')]),
        'wf_cases_insert': ('INSERT ON wf_cases', [(new_c, 'wf_clocks', '')]),
        'wf_cases_delete': ('DELETE ON wf_cases', [(old_c, 'wf_clocks', '-')]),
        'wf_cases_update': (f"UPDATE OF {', '.join(CASE_WATCHED)} ON wf_cases "
                            f"WHEN {_changed(d, CASE_WATCHED)}",
                            [(old_c, 'wf_clocks', '-'), (new_c, 'wf_clocks', '')]),
    }
    for name, (event, parts) in triggers.items():
        op.execute(f"""
            CREATE TRIGGER trg_{TABLE}_{name} AFTER {event}
            BEGIN {_upsert(d, parts)}; END""")


TRIGGERS = [(t, e) for t in ('wf_clocks', 'wf_cases') for e in ('insert', 'update', 'delete')]


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        for table, event in TRIGGERS:
            op.execute(f'DROP TRIGGER IF EXISTS trg_{TABLE}_{table}_{event} ON {table}')
            op.execute(f'DROP FUNCTION IF EXISTS {TABLE}_{table}_{event}()')
    else:
        for table, event in TRIGGERS:
            op.execute(f'DROP TRIGGER IF EXISTS trg_{TABLE}_{table}_{event}')
    op.drop_table(TABLE)
