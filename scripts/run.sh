#!/usr/bin/env bash
# Create/migrate the embedded SpatiaLite database, load the demo where absent, and serve.
source "$(dirname "$0")/lib.sh"
export LEADGRID_DATABASE_URL="${LEADGRID_DATABASE_URL:-sqlite:///var/leadgrid.sqlite}"
.venv/bin/leadgrid db upgrade
.venv/bin/leadgrid demo load
say "serving on http://127.0.0.1:${PORT:-8000}  (API docs: /docs, maps: /maps/distribution)"
exec .venv/bin/leadgrid serve --host 127.0.0.1 --port "${PORT:-8000}"
