"""monitoring: readings, quarantine, link state, exceedance runs and episodes

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 17:30:00

Hand-written; works on SpatiaLite and PostGIS (no geometry columns: points live in the
existing ``monitoring_points`` table).
"""
from alembic import op
import sqlalchemy as sa
import layers.models
from sqlalchemy.dialects import postgresql

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')
BIGID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
TS = layers.models.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table('monitoring_readings',
    sa.Column('id', BIGID, nullable=False),
    sa.Column('mn', sa.String(length=40), nullable=False),
    sa.Column('cn', sa.String(length=8), nullable=False),
    sa.Column('data_time', TS, nullable=False),
    sa.Column('pollutant', sa.String(length=40), nullable=False),
    sa.Column('value', sa.Float(), nullable=True),
    sa.Column('fields', JSON, nullable=False),
    sa.Column('flag', sa.String(length=4), nullable=True),
    sa.Column('received_at', TS, nullable=False),
    sa.Column('skew_s', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_monitoring_readings')),
    sa.UniqueConstraint('mn', 'cn', 'data_time', 'pollutant', name='uq_monitoring_readings_key')
    )
    with op.batch_alter_table('monitoring_readings', schema=None) as batch_op:
        batch_op.create_index('ix_monitoring_readings_mn_pollutant_time', ['mn', 'pollutant', 'data_time'], unique=False)

    op.create_table('monitoring_quarantine',
    sa.Column('id', BIGID, nullable=False),
    sa.Column('received_at', TS, nullable=False),
    sa.Column('peer', sa.String(length=80), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('kind', sa.String(length=40), nullable=False),
    sa.Column('mn', sa.String(length=40), nullable=True),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('raw', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_monitoring_quarantine'))
    )
    with op.batch_alter_table('monitoring_quarantine', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_monitoring_quarantine_received_at'), ['received_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_monitoring_quarantine_kind'), ['kind'], unique=False)

    op.create_table('monitoring_links',
    sa.Column('mn', sa.String(length=40), nullable=False),
    sa.Column('last_received_at', TS, nullable=False),
    sa.Column('last_data_time', TS, nullable=True),
    sa.Column('last_skew_s', sa.Float(), nullable=True),
    sa.Column('last_peer', sa.String(length=80), nullable=False),
    sa.Column('packets', sa.Integer(), nullable=False),
    sa.Column('readings', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('mn', name=op.f('pk_monitoring_links'))
    )

    op.create_table('monitoring_episodes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('mn', sa.String(length=40), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('pollutant', sa.String(length=40), nullable=False),
    sa.Column('cn', sa.String(length=8), nullable=False),
    sa.Column('limit_value', sa.Float(), nullable=True),
    sa.Column('unit', sa.String(length=20), nullable=False),
    sa.Column('status', sa.String(length=8), nullable=False),
    sa.Column('started_at', TS, nullable=False),
    sa.Column('last_at', TS, nullable=False),
    sa.Column('ended_at', TS, nullable=True),
    sa.Column('max_value', sa.Float(), nullable=True),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.Column('lead_id', sa.Integer(), nullable=True),
    sa.Column('created_at', TS, nullable=False),
    sa.Column('updated_at', TS, nullable=False),
    sa.ForeignKeyConstraint(['lead_id'], ['leads.id'], name=op.f('fk_monitoring_episodes_lead_id_leads')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_monitoring_episodes'))
    )
    with op.batch_alter_table('monitoring_episodes', schema=None) as batch_op:
        batch_op.create_index('uq_monitoring_episodes_one_open', ['mn', 'kind', 'pollutant', 'cn'], unique=True, sqlite_where=sa.text("status = 'open'"), postgresql_where=sa.text("status = 'open'"))
        batch_op.create_index('ix_monitoring_episodes_started', ['started_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_monitoring_episodes_lead_id'), ['lead_id'], unique=False)

    op.create_table('monitoring_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('mn', sa.String(length=40), nullable=False),
    sa.Column('pollutant', sa.String(length=40), nullable=False),
    sa.Column('cn', sa.String(length=8), nullable=False),
    sa.Column('over', sa.Integer(), nullable=False),
    sa.Column('under', sa.Integer(), nullable=False),
    sa.Column('run_start', TS, nullable=True),
    sa.Column('run_max', sa.Float(), nullable=True),
    sa.Column('last_data_time', TS, nullable=True),
    sa.Column('episode_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['episode_id'], ['monitoring_episodes.id'], name=op.f('fk_monitoring_runs_episode_id_monitoring_episodes')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_monitoring_runs')),
    sa.UniqueConstraint('mn', 'pollutant', 'cn', name='uq_monitoring_runs_key')
    )


def downgrade() -> None:
    op.drop_table('monitoring_runs')
    with op.batch_alter_table('monitoring_episodes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_monitoring_episodes_lead_id'))
        batch_op.drop_index('ix_monitoring_episodes_started')
        batch_op.drop_index('uq_monitoring_episodes_one_open', sqlite_where=sa.text("status = 'open'"), postgresql_where=sa.text("status = 'open'"))
    op.drop_table('monitoring_episodes')
    op.drop_table('monitoring_links')
    with op.batch_alter_table('monitoring_quarantine', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_monitoring_quarantine_kind'))
        batch_op.drop_index(batch_op.f('ix_monitoring_quarantine_received_at'))
    op.drop_table('monitoring_quarantine')
    with op.batch_alter_table('monitoring_readings', schema=None) as batch_op:
        batch_op.drop_index('ix_monitoring_readings_mn_pollutant_time')
    op.drop_table('monitoring_readings')
