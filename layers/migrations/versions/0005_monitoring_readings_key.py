"""monitoring: one index for the readings key and their history; room for HOT updates

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 20:00:00

Hand-written; works on SpatiaLite and PostGIS.

* The unique key of ``monitoring_readings`` becomes (mn, pollutant, data_time, cn): the same
  columns, so ``ON CONFLICT`` finds it as before, but in an order that also serves the history
  and latest-value queries (MN, pollutant, DataTime range), which made the separate index
  ``ix_monitoring_readings_mn_pollutant_time`` redundant. One index less to maintain for every
  stored reading, the receiver's hottest write.
* PostgreSQL: ``monitoring_links`` and ``monitoring_runs`` get fillfactor 70. Every batch
  updates one row of each per point; free room on the page lets those be HOT updates (no index
  entries, no page splits).
"""
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

HOT_TABLES = ('monitoring_links', 'monitoring_runs')


def upgrade() -> None:
    with op.batch_alter_table('monitoring_readings', schema=None) as batch_op:
        batch_op.drop_index('ix_monitoring_readings_mn_pollutant_time')
        batch_op.drop_constraint('uq_monitoring_readings_key', type_='unique')
        batch_op.create_unique_constraint('uq_monitoring_readings_key', ['mn', 'pollutant', 'data_time', 'cn'])
    if op.get_bind().dialect.name == 'postgresql':
        for table in HOT_TABLES:
            op.execute(f'ALTER TABLE {table} SET (fillfactor = 70)')


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        for table in HOT_TABLES:
            op.execute(f'ALTER TABLE {table} RESET (fillfactor)')
    with op.batch_alter_table('monitoring_readings', schema=None) as batch_op:
        batch_op.drop_constraint('uq_monitoring_readings_key', type_='unique')
        batch_op.create_unique_constraint('uq_monitoring_readings_key', ['mn', 'cn', 'data_time', 'pollutant'])
        batch_op.create_index('ix_monitoring_readings_mn_pollutant_time', ['mn', 'pollutant', 'data_time'],
                              unique=False)
