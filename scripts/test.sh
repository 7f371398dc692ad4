#!/usr/bin/env bash
# Everything the tests need (PostGIS, Chromium), then lint and the whole suite on both backends.
source "$(dirname "$0")/lib.sh"

apt_install chromium fonts-noto-cjk
export LEADGRID_TEST_POSTGRES_URL="$(bash scripts/postgis.sh)"
export LEADGRID_REQUIRE_POSTGIS=1
export LEADGRID_CHROMIUM="${LEADGRID_CHROMIUM:-/usr/bin/chromium}"
say "PostGIS: ${LEADGRID_TEST_POSTGRES_URL}"

say "ruff"
.venv/bin/ruff check geo layers maps api tests bench
say "mypy"
.venv/bin/mypy

say "pytest (SpatiaLite and PostGIS)"
set +e
.venv/bin/python -m pytest -n "${LEADGRID_TEST_WORKERS:-2}" "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  die "pytest collected no tests: that is a failure, not a pass"
fi
exit "$rc"
