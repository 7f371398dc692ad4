"""workflow: KPI copies, node sums and a daily rollup (KPIs < 1 s at 1M leads); duplicates, rebounds

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 19:30:00

Hand-written; works on SpatiaLite and PostGIS.

* ``wf_cases`` gets duplicate/rebound/feedback columns (intake flags, merged children), copies of
  the lead columns the KPI queries filter and group on, and per-node sums of finished clocks; all
  are backfilled here. Triggers keep them equal to their sources whatever code writes them:
  ``trg_leads_wf_cases_copy`` (lead → case copies) and ``trg_wf_clocks_node_stats[_ins]``.
* ``wf_kpi_daily`` sums every case's time-independent KPI contribution per receipt day × place ×
  body; ``trg_wf_kpi_daily_{insert,update,delete}`` on ``wf_cases`` add each change's difference
  (statement-level with transition tables on PostGIS, row-level on SpatiaLite).
* Partial indexes for the "now"-dependent KPI parts and each oversight list.

The backfill rewrites every case row: on a large PostGIS database run ``VACUUM FULL wf_cases``
after upgrading (the table is otherwise twice its size until autovacuum and new rows reuse it).

Later migrations: SpatiaLite ``batch_alter_table`` on ``leads``, ``wf_clocks`` or ``wf_cases``
recreates the table and silently drops these triggers — recreate them (see ``_create_triggers``
and ``_create_rollup``) in such a migration.
"""
from alembic import op
import sqlalchemy as sa
import layers.models

TS = layers.models.UTCDateTime(timezone=True)
#: Nodes whose finished clocks are summed per case (``n_<node>``, ``s_<node>``).
NODES = ('accept', 'sign', 'on_site', 'handle', 'verify', 'feedback', 'return_visit', 'conclude')
#: Lead columns copied onto ``wf_cases`` (lead column -> case column).
COPIED = {'status': 'lead_status', 'closed_at': 'lead_closed_at', 'received_at': 'lead_received_at',
          'city_code': 'city_code', 'county_code': 'county_code', 'township_code': 'township_code',
          'body_code': 'body_code'}

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('wf_cases', schema=None) as batch_op:
        batch_op.add_column(sa.Column('rebound_m', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('rebound_count', sa.Integer(), nullable=False,
                                      server_default=sa.text('0')))
        batch_op.add_column(sa.Column('duplicate_of_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('duplicate_m', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('feedback_owed', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
        batch_op.create_foreign_key(op.f('fk_wf_cases_duplicate_of_id_leads'), 'leads',
                                    ['duplicate_of_id'], ['id'], ondelete='SET NULL')
        batch_op.create_index('ix_wf_cases_duplicate_of_id', ['duplicate_of_id'], unique=False,
                              sqlite_where=sa.text('duplicate_of_id IS NOT NULL'),
                              postgresql_where=sa.text('duplicate_of_id IS NOT NULL'))
        batch_op.create_index('ix_wf_cases_feedback_owed', ['lead_id'], unique=False,
                              sqlite_where=sa.text('feedback_owed'),
                              postgresql_where=sa.text('feedback_owed'))
        batch_op.add_column(sa.Column('lead_status', sa.String(length=24), nullable=True))
        batch_op.add_column(sa.Column('lead_closed_at', TS, nullable=True))
        batch_op.add_column(sa.Column('lead_received_at', TS, nullable=True))
        batch_op.add_column(sa.Column('city_code', sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column('county_code', sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column('township_code', sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column('body_code', sa.String(length=40), nullable=True))
        for node in NODES:
            batch_op.add_column(sa.Column(f'n_{node}', sa.Integer(), nullable=False,
                                          server_default=sa.text('0')))
            batch_op.add_column(sa.Column(f's_{node}', sa.Float(), nullable=False,
                                          server_default=sa.text('0')))
    _backfill()
    with op.batch_alter_table('wf_cases', schema=None) as batch_op:
        batch_op.create_index('ix_wf_cases_county_code', ['county_code'], unique=False)
        batch_op.create_index('ix_wf_cases_township_code', ['township_code'], unique=False)
        batch_op.create_index('ix_wf_cases_lead_received_at', ['lead_received_at'], unique=False)
        batch_op.create_index('ix_wf_cases_body_changed', ['lead_id'], unique=False,
                              sqlite_where=sa.text('body_changes > 0'),
                              postgresql_where=sa.text('body_changes > 0'),
                              postgresql_include=['lead_status', 'city_code', 'county_code',
                                                  'township_code', 'body_code', 'lead_received_at'])
        for name, cond in OVERSIGHT.items():
            batch_op.create_index(f'ix_wf_cases_ov_{name}', ['lead_id'], unique=False,
                                  sqlite_where=sa.text(cond), postgresql_where=sa.text(cond),
                                  postgresql_include=['body_code', 'county_code', 'city_code',
                                                      'township_code'])
        batch_op.create_index('ix_wf_cases_unsigned', ['first_sign_due_at'], unique=False,
                              sqlite_where=sa.text('first_signed_at IS NULL'),
                              postgresql_where=sa.text('first_signed_at IS NULL'))
        batch_op.create_index('ix_wf_cases_open_due', ['conclude_due_at'], unique=False,
                              sqlite_where=sa.text("lead_status NOT IN ('closed', 'merged')"),
                              postgresql_where=sa.text("lead_status NOT IN ('closed', 'merged')"),
                              postgresql_include=['body_code', 'county_code', 'township_code',
                                                  'city_code', 'lead_received_at'])
    with op.batch_alter_table('wf_clocks', schema=None) as batch_op:
        batch_op.create_index('ix_wf_clocks_sign_lead', ['lead_id'], unique=False,
                              sqlite_where=sa.text("node IN ('sign', 'on_site')"),
                              postgresql_where=sa.text("node IN ('sign', 'on_site')"),
                              postgresql_include=['body_code', 'node', 'stop_action'])
        batch_op.create_index('ix_wf_clocks_stopped_no_body', ['lead_id'], unique=False,
                              sqlite_where=sa.text('body_code IS NULL AND stopped_at IS NOT NULL'),
                              postgresql_where=sa.text('body_code IS NULL AND stopped_at IS NOT NULL'))
    _create_triggers()
    _create_rollup()


# ------------------------------------------------------------------------------ daily rollup

KEYS = ('city_code', 'county_code', 'township_code', 'body_code')
#: Oversight predicates (frozen copy of layers.workflow.store.OVERSIGHT_PREDICATES).
OVERSIGHT = {
    'returned': 'return_count >= 2 OR body_changes >= 2',
    'rebounds': 'reopen_count > 0 OR rebound_count > 0',
    'dissatisfied': "satisfaction = 'dissatisfied'",
    'extensions': 'extensions_used > 0',
}
SATISFIED = ('satisfied', 'basically_satisfied')
ANSWERED = ('satisfied', 'basically_satisfied', 'dissatisfied')


def _vector(r: str) -> dict[str, str]:
    """SQL for one case row's contribution (alias ``r``) to each rollup counter."""
    nm = f"COALESCE({r}.lead_status, '') <> 'merged'"
    closed = f"{r}.lead_status = 'closed'"
    moved = f'{r}.body_changes > 0'

    def flag(cond: str) -> str:
        return f'(CASE WHEN {cond} THEN 1 ELSE 0 END)'

    def val(cond: str, v: str) -> str:
        return f'(CASE WHEN {cond} THEN {v} ELSE 0 END)'

    out = {
        'cases': flag(nm), 'closed': flag(closed),
        'signed_ok': flag(f'{nm} AND {r}.first_signed_at <= {r}.first_sign_due_at'),
        'signed': flag(f'{nm} AND {r}.first_signed_at IS NOT NULL'),
        'closed_ok': flag(f'{closed} AND {r}.lead_closed_at <= {r}.conclude_due_at'),
        'reworked': flag(f'{nm} AND {r}.verify_fail_count > 0'),
        'verified': flag(f'{nm} AND {r}.verify_count > 0'),
        'extended': flag(f'{nm} AND {r}.extensions_used > 0'),
        'dispatched': flag(f'{nm} AND {r}.dispatch_count > 0'),
        'satisfied': flag(f"{nm} AND {r}.satisfaction IN ({', '.join(repr(x) for x in SATISFIED)})"),
        'answered': flag(f"{nm} AND {r}.satisfaction IN ({', '.join(repr(x) for x in ANSWERED)})"),
        'repeated': flag(f'{closed} AND {r}.rebound_count > 0'),
        'dispatches': val(nm, f'{r}.dispatch_count'), 'returns': val(nm, f'{r}.return_count'),
        'm_dispatches': val(f'{nm} AND {moved}', f'{r}.dispatch_count'),
        'm_returns': val(f'{nm} AND {moved}', f'{r}.return_count'),
    }
    for n in NODES:
        out[f'n_{n}'] = f'{r}.n_{n}'
        out[f's_{n}'] = f'{r}.s_{n}'
        out[f'mn_{n}'] = val(moved, f'{r}.n_{n}')
        out[f'ms_{n}'] = val(moved, f'{r}.s_{n}')
    return out


COUNTERS = list(_vector('x'))


def _key_sql(dialect: str, r: str) -> list[str]:
    day = (f"CAST(({r}.lead_received_at AT TIME ZONE 'UTC') AS date)" if dialect == 'postgresql'
           else f'date({r}.lead_received_at)')
    return [day] + [f"COALESCE({r}.{k}, '')" for k in KEYS]


def _rollup_select(dialect: str, parts: list[tuple[str, str]]) -> str:
    """``SELECT key…, sum(counter)…`` over signed contributions of ``(alias FROM …, sign)``."""
    cols = ['day', *KEYS]
    unions = []
    for source, sign in parts:
        keys = [f'{k} AS {c}' for k, c in zip(_key_sql(dialect, 'r'), cols)]
        vec = [f'{sign}{v} AS {c}' for c, v in _vector('r').items()]
        unions.append(f"SELECT {', '.join(keys + vec)} FROM {source} r "
                      "WHERE r.lead_received_at IS NOT NULL")
    nonzero = ' OR '.join(f'sum({c}) <> 0' for c in COUNTERS)
    return (f"SELECT {', '.join(cols)}, {', '.join(f'sum({c})' for c in COUNTERS)} "
            f"FROM ({' UNION ALL '.join(unions)}) d GROUP BY {', '.join(cols)} "
            f"HAVING {nonzero} ORDER BY {', '.join(cols)}")


def _upsert(dialect: str, select_sql: str) -> str:
    cols = ['day', *KEYS]
    sets = ', '.join(f'{c} = wf_kpi_daily.{c} + excluded.{c}' for c in COUNTERS)
    return (f"INSERT INTO wf_kpi_daily ({', '.join(cols + COUNTERS)}) {select_sql} "
            f"ON CONFLICT ({', '.join(cols)}) DO UPDATE SET {sets}")


def _create_rollup() -> None:
    dialect = op.get_bind().dialect.name
    op.create_table(
        'wf_kpi_daily',
        sa.Column('day', sa.Date(), nullable=False),
        *[sa.Column(k, sa.String(length=40 if k == 'body_code' else 20), nullable=False)
          for k in KEYS],
        *[sa.Column(c, sa.Float() if c.startswith(('s_', 'ms_')) else sa.Integer(),
                    nullable=False, server_default=sa.text('0')) for c in COUNTERS],
        sa.PrimaryKeyConstraint('day', *KEYS, name=op.f('pk_wf_kpi_daily')),
    )
    op.execute(_upsert(dialect, _rollup_select(dialect, [('wf_cases', '')])))
    if dialect == 'postgresql':
        for op_name, parts in (('INSERT', [('nt', '')]), ('UPDATE', [('nt', ''), ('ot', '-')]),
                               ('DELETE', [('ot', '-')])):
            fn = f'wf_kpi_daily_{op_name.lower()}'
            op.execute(f"""
                CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    {_upsert(dialect, _rollup_select(dialect, parts))};
                    RETURN NULL;
                END $$""")
            refs = {'INSERT': 'NEW TABLE AS nt', 'UPDATE': 'NEW TABLE AS nt OLD TABLE AS ot',
                    'DELETE': 'OLD TABLE AS ot'}[op_name]
            op.execute(f"""
                CREATE TRIGGER trg_{fn} AFTER {op_name} ON wf_cases REFERENCING {refs}
                FOR EACH STATEMENT EXECUTE FUNCTION {fn}()""")
    else:
        used = ['lead_status', 'lead_closed_at', 'lead_received_at', 'first_signed_at',
                'first_sign_due_at', 'conclude_due_at', 'verify_fail_count', 'verify_count',
                'extensions_used', 'dispatch_count', 'return_count', 'satisfaction',
                'rebound_count', 'body_changes', *KEYS,
                *[f'{p}_{n}' for n in NODES for p in ('n', 's')]]

        def row(alias: str) -> str:
            return f"(SELECT {', '.join(f'{alias}.{c} AS {c}' for c in used)})"

        for op_name, parts in (('INSERT', [(row('NEW'), '')]),
                               ('UPDATE', [(row('NEW'), ''), (row('OLD'), '-')]),
                               ('DELETE', [(row('OLD'), '-')])):
            op.execute(f"""
                CREATE TRIGGER trg_wf_kpi_daily_{op_name.lower()} AFTER {op_name} ON wf_cases
                BEGIN {_upsert(dialect, _rollup_select(dialect, parts))}; END""")


def _drop_rollup() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        for name in ('insert', 'update', 'delete'):
            op.execute(f'DROP TRIGGER IF EXISTS trg_wf_kpi_daily_{name} ON wf_cases')
            op.execute(f'DROP FUNCTION IF EXISTS wf_kpi_daily_{name}()')
    else:
        for name in ('insert', 'update', 'delete'):
            op.execute(f'DROP TRIGGER IF EXISTS trg_wf_kpi_daily_{name}')
    op.drop_table('wf_kpi_daily')


def _seconds(dialect: str, later: str, earlier: str) -> str:
    if dialect == 'postgresql':
        return f'extract(epoch from ({later} - {earlier}))'
    return f'((julianday({later}) - julianday({earlier})) * 86400.0)'


def _backfill() -> None:
    dialect = op.get_bind().dialect.name
    sets = ', '.join(f'{case} = l.{lead}' for lead, case in COPIED.items())
    op.execute(f'UPDATE wf_cases SET {sets} FROM leads l WHERE l.id = wf_cases.lead_id')
    secs = _seconds(dialect, 'stopped_at', 'started_at')
    aggs = ', '.join(
        f"sum(CASE WHEN node = '{n}' THEN 1 ELSE 0 END) AS n_{n}, "
        f"sum(CASE WHEN node = '{n}' THEN {secs} ELSE 0 END) AS s_{n}" for n in NODES)
    sets = ', '.join(f'n_{n} = k.n_{n}, s_{n} = k.s_{n}' for n in NODES)
    op.execute(
        f'UPDATE wf_cases SET {sets} FROM (SELECT lead_id, {aggs} FROM wf_clocks '
        'WHERE stopped_at IS NOT NULL AND body_code IS NOT NULL GROUP BY lead_id) AS k '
        'WHERE k.lead_id = wf_cases.lead_id')


def _create_triggers() -> None:
    """Keep the copies and node sums equal to their sources, whatever code writes them."""
    dialect = op.get_bind().dialect.name
    cols = ', '.join(COPIED)
    if dialect == 'postgresql':
        changed = ' OR '.join(f'OLD.{c} IS DISTINCT FROM NEW.{c}' for c in COPIED)
        sets = ', '.join(f'{case} = NEW.{lead}' for lead, case in COPIED.items())
        op.execute(f"""
            CREATE FUNCTION wf_cases_copy_lead() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                UPDATE wf_cases SET {sets} WHERE lead_id = NEW.id;
                RETURN NULL;
            END $$""")
        op.execute(f"""
            CREATE TRIGGER trg_leads_wf_cases_copy AFTER UPDATE OF {cols} ON leads
            FOR EACH ROW WHEN ({changed}) EXECUTE FUNCTION wf_cases_copy_lead()""")
        op.execute(f"""
            CREATE FUNCTION wf_clocks_node_stats() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF TG_OP = 'UPDATE' AND OLD.stopped_at IS NOT NULL AND OLD.body_code IS NOT NULL THEN
                    UPDATE wf_cases SET {_node_sets(dialect, 'OLD', '-')} WHERE lead_id = OLD.lead_id;
                END IF;
                IF NEW.stopped_at IS NOT NULL AND NEW.body_code IS NOT NULL THEN
                    UPDATE wf_cases SET {_node_sets(dialect, 'NEW', '+')} WHERE lead_id = NEW.lead_id;
                END IF;
                RETURN NULL;
            END $$""")
        op.execute("""
            CREATE TRIGGER trg_wf_clocks_node_stats AFTER UPDATE OF stopped_at, started_at,
                body_code, node ON wf_clocks
            FOR EACH ROW WHEN (OLD.stopped_at IS DISTINCT FROM NEW.stopped_at
                OR OLD.started_at IS DISTINCT FROM NEW.started_at
                OR OLD.body_code IS DISTINCT FROM NEW.body_code OR OLD.node IS DISTINCT FROM NEW.node)
            EXECUTE FUNCTION wf_clocks_node_stats()""")
        op.execute("""
            CREATE TRIGGER trg_wf_clocks_node_stats_ins AFTER INSERT ON wf_clocks
            FOR EACH ROW WHEN (NEW.stopped_at IS NOT NULL AND NEW.body_code IS NOT NULL)
            EXECUTE FUNCTION wf_clocks_node_stats()""")
    else:
        changed = ' OR '.join(f'OLD.{c} IS NOT NEW.{c}' for c in COPIED)
        sets = ', '.join(f'{case} = NEW.{lead}' for lead, case in COPIED.items())
        op.execute(f"""
            CREATE TRIGGER trg_leads_wf_cases_copy AFTER UPDATE OF {cols} ON leads
            FOR EACH ROW WHEN {changed}
            BEGIN UPDATE wf_cases SET {sets} WHERE lead_id = NEW.id; END""")
        op.execute(f"""
            CREATE TRIGGER trg_wf_clocks_node_stats AFTER UPDATE OF stopped_at, started_at,
                body_code, node ON wf_clocks
            FOR EACH ROW WHEN OLD.stopped_at IS NOT NEW.stopped_at
                OR OLD.started_at IS NOT NEW.started_at OR OLD.body_code IS NOT NEW.body_code
                OR OLD.node IS NOT NEW.node
            BEGIN
                UPDATE wf_cases SET {_node_sets(dialect, 'OLD', '-')} WHERE lead_id = OLD.lead_id
                    AND OLD.stopped_at IS NOT NULL AND OLD.body_code IS NOT NULL;
                UPDATE wf_cases SET {_node_sets(dialect, 'NEW', '+')} WHERE lead_id = NEW.lead_id
                    AND NEW.stopped_at IS NOT NULL AND NEW.body_code IS NOT NULL;
            END""")
        op.execute(f"""
            CREATE TRIGGER trg_wf_clocks_node_stats_ins AFTER INSERT ON wf_clocks
            FOR EACH ROW WHEN NEW.stopped_at IS NOT NULL AND NEW.body_code IS NOT NULL
            BEGIN
                UPDATE wf_cases SET {_node_sets(dialect, 'NEW', '+')} WHERE lead_id = NEW.lead_id;
            END""")


def _node_sets(dialect: str, row: str, sign: str) -> str:
    """SET list adding (``+``) or removing (``-``) clock ``row``'s duration to its node's sums."""
    secs = _seconds(dialect, f'{row}.stopped_at', f'{row}.started_at')
    return ', '.join(
        f"n_{n} = n_{n} {sign} (CASE WHEN {row}.node = '{n}' THEN 1 ELSE 0 END), "
        f"s_{n} = s_{n} {sign} (CASE WHEN {row}.node = '{n}' THEN {secs} ELSE 0 END)"
        for n in NODES)


def _drop_triggers() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute('DROP TRIGGER IF EXISTS trg_wf_clocks_node_stats_ins ON wf_clocks')
        op.execute('DROP TRIGGER IF EXISTS trg_wf_clocks_node_stats ON wf_clocks')
        op.execute('DROP FUNCTION IF EXISTS wf_clocks_node_stats()')
        op.execute('DROP TRIGGER IF EXISTS trg_leads_wf_cases_copy ON leads')
        op.execute('DROP FUNCTION IF EXISTS wf_cases_copy_lead()')
    else:
        op.execute('DROP TRIGGER IF EXISTS trg_wf_clocks_node_stats_ins')
        op.execute('DROP TRIGGER IF EXISTS trg_wf_clocks_node_stats')
        op.execute('DROP TRIGGER IF EXISTS trg_leads_wf_cases_copy')


def downgrade() -> None:
    _drop_rollup()
    _drop_triggers()
    with op.batch_alter_table('wf_clocks', schema=None) as batch_op:
        batch_op.drop_index('ix_wf_clocks_sign_lead')
        batch_op.drop_index('ix_wf_clocks_stopped_no_body',
                            sqlite_where=sa.text('body_code IS NULL AND stopped_at IS NOT NULL'),
                            postgresql_where=sa.text('body_code IS NULL AND stopped_at IS NOT NULL'))
    with op.batch_alter_table('wf_cases', schema=None) as batch_op:
        for name in OVERSIGHT:
            batch_op.drop_index(f'ix_wf_cases_ov_{name}')
        batch_op.drop_index('ix_wf_cases_open_due')
        batch_op.drop_index('ix_wf_cases_unsigned')
        batch_op.drop_index('ix_wf_cases_body_changed', sqlite_where=sa.text('body_changes > 0'),
                            postgresql_where=sa.text('body_changes > 0'))
        batch_op.drop_index('ix_wf_cases_lead_received_at')
        batch_op.drop_index('ix_wf_cases_township_code')
        batch_op.drop_index('ix_wf_cases_county_code')
        for node in reversed(NODES):
            batch_op.drop_column(f's_{node}')
            batch_op.drop_column(f'n_{node}')
        for case in reversed(list(COPIED.values())):
            batch_op.drop_column(case)
        batch_op.drop_index('ix_wf_cases_feedback_owed', sqlite_where=sa.text('feedback_owed'),
                            postgresql_where=sa.text('feedback_owed'))
        batch_op.drop_index('ix_wf_cases_duplicate_of_id',
                            sqlite_where=sa.text('duplicate_of_id IS NOT NULL'),
                            postgresql_where=sa.text('duplicate_of_id IS NOT NULL'))
        batch_op.drop_constraint(op.f('fk_wf_cases_duplicate_of_id_leads'), type_='foreignkey')
        batch_op.drop_column('feedback_owed')
        batch_op.drop_column('duplicate_m')
        batch_op.drop_column('duplicate_of_id')
        batch_op.drop_column('rebound_count')
        batch_op.drop_column('rebound_m')
