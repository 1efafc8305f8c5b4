#!/usr/bin/env bash
# Build the extension, then install it without disturbing running servers.
#
#   scripts/install.sh
#
# `cargo pgrx install` would build for minutes and then copy over the
# installed library. Overwriting a library that running servers have mapped
# kills them with SIGBUS, and unlinking it first leaves, for the whole build,
# no library for a backend that loads it. So: build into a staging tree
# (`cargo pgrx package`), then copy the library next to the installed one and
# rename it over it, which is atomic: running servers keep the old file (its
# inode lives on), every later load finds the new one. The SQL and control
# files are plain copies.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

pg_config=$(command -v pg_config)
stage="$PWD/.run/install-stage"
rm -rf "$stage" "$stage.log"
mkdir -p "$(dirname "$stage")"
cargo pgrx package --pg-config "$pg_config" --out-dir "$stage" >"$stage.log" 2>&1 || { tail -40 "$stage.log"; exit 1; }

lib=$("$pg_config" --pkglibdir)
ext="$("$pg_config" --sharedir)/extension"
cp "$stage$lib/queue.so" "$lib/.queue.so.new"
mv -f "$lib/.queue.so.new" "$lib/queue.so"
cp "$stage$ext"/queue* "$ext/"
