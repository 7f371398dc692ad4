#!/usr/bin/env bash
# Idempotent setup: system libraries, the virtualenv with the project, front-end assets.
source "$(dirname "$0")/lib.sh"

PY="${PYTHON:-python3}"
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || die "Python 3.11 or newer is needed ($PY is $("$PY" --version 2>&1))"

apt_install libsqlite3-mod-spatialite python3-venv

if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$PY" -m venv .venv
fi
STAMP=.venv/.leadgrid-installed
WANT="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  say "installing Python packages into .venv (first run takes a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  echo "$WANT" > "$STAMP"
fi

if [ -f scripts/assets.sh ]; then
  bash scripts/assets.sh
fi
