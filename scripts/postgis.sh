#!/usr/bin/env bash
# Make sure a PostgreSQL server with PostGIS answers on 127.0.0.1:5432 and print an admin URL.
# Uses the running server when there is one (trust auth), else installs and starts one.
source "$(dirname "$0")/lib.sh"

PGPORT="${LEADGRID_PGPORT:-5432}"
can_connect() { psql "$1" -Atqc 'select 1' >/dev/null 2>&1; }

if ! command -v psql >/dev/null || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  apt_install postgresql postgresql-client
fi
PGVER="$(ls /usr/lib/postgresql | sort -n | tail -1)"
apt_install "postgresql-${PGVER}-postgis-3"

TRUST_URL="postgresql://postgres@127.0.0.1:${PGPORT}/postgres"
OWN_URL="postgresql://leadgrid:leadgrid@127.0.0.1:${PGPORT}/postgres"

if ! pg_isready -q -h 127.0.0.1 -p "$PGPORT"; then
  say "starting PostgreSQL ${PGVER}"
  if ! pg_lsclusters -h 2>/dev/null | grep -q .; then
    pg_createcluster "$PGVER" main --port "$PGPORT" >/dev/null
  fi
  CLUSTER="$(pg_lsclusters -h | awk -v p="$PGPORT" '$3==p {print $1" "$2; exit}')"
  [ -n "$CLUSTER" ] || CLUSTER="$(pg_lsclusters -h | awk '{print $1" "$2; exit}')"
  # shellcheck disable=SC2086
  pg_ctlcluster --skip-systemctl-redirect $CLUSTER start
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p "$PGPORT" && break; sleep 1; done
fi

if can_connect "$TRUST_URL"; then
  URL="$TRUST_URL"
else
  # A fresh Debian cluster has no trust on TCP: create our own superuser through the socket.
  if ! can_connect "$OWN_URL"; then
    runuser -u postgres -- psql -p "$PGPORT" -qc \
      "DO \$\$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='leadgrid') THEN
         CREATE ROLE leadgrid LOGIN SUPERUSER PASSWORD 'leadgrid'; END IF; END\$\$;" \
      || die "cannot create the test role; is PostgreSQL running on port $PGPORT?"
  fi
  URL="$OWN_URL"
fi
psql "$URL" -Atqc "select 1 from pg_available_extensions where name='postgis'" | grep -q 1 \
  || die "PostGIS is not available to the server on port $PGPORT"
echo "${URL/postgresql:/postgresql+psycopg:}"
