#!/usr/bin/env bash
# Writes random secrets for compose.yaml into deploy/compose/secrets/ (kept if present).
set -euo pipefail
dir="$(dirname -- "${BASH_SOURCE[0]}")/secrets"
mkdir -p "$dir"
chmod 700 "$dir"
umask 077
put() { [[ -s $dir/$1 ]] || printf '%s' "$2" >"$dir/$1"; }
rand() { head -c 32 /dev/urandom | base64; }
put postgres_password "$(head -c 24 /dev/urandom | base64 | tr -d '/+=')"
put database_url "postgres://tengine:$(<"$dir/postgres_password")@postgres:5432/tengine"
put admin_token "$(rand | tr -d '/+=')"
put master_key "$(rand)"
put session_secret "$(rand)"
# Containers run as 65532: the files must be readable by it (compose bind-mounts them).
chmod 644 "$dir"/*
chmod 755 "$dir"
echo "secrets in $dir"
