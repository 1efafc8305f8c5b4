#!/usr/bin/env bash
# Install whatever this machine lacks to build and test the extension.
# Idempotent and quick when everything is there: each step checks first.
set -euo pipefail

APT_PACKAGES=(postgresql-15 postgresql-server-dev-15 postgresql-contrib postgresql-15-pgaudit libclang-dev clang sudo pgbouncer chromium chromium-driver)
PGRX_VERSION=0.18.0

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo pgrx --version 2>/dev/null | grep -q " $PGRX_VERSION"; then
  echo "deps: installing cargo-pgrx $PGRX_VERSION (a few minutes, once)"
  cargo install cargo-pgrx --version "$PGRX_VERSION" --locked --quiet
fi

PG_CONFIG_BIN="$(pg_config --bindir)/pg_config"
if ! grep -qs '^pg15' "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
  echo "deps: cargo pgrx init --pg15 $PG_CONFIG_BIN"
  cargo pgrx init --pg15 "$PG_CONFIG_BIN" >/dev/null
fi

# opentelemetry-sdk: the Python client's span test (clients/python/tests/test_hooks.py)
# runs in make test instead of being skipped.
if ! python3 -c 'import psycopg, pytest, hypothesis, opentelemetry.sdk' >/dev/null 2>&1; then
  echo "deps: installing psycopg, pytest, hypothesis and opentelemetry-sdk"
  python3 -m pip install --quiet --disable-pip-version-check 'psycopg[binary]>=3.1' 'pytest>=7' 'hypothesis>=6' \
    'opentelemetry-api>=1.20' 'opentelemetry-sdk>=1.20' 2>&1 \
    | grep -v 'Running pip as the' || true
fi
