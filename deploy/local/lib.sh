# shellcheck shell=bash
# Shared helpers for deploy/local/{up,down,test}. Source it; do not execute it.
#
# Everything here only ever binds to / talks to loopback (127.0.0.1).
# Runtime state lives in $ROOT/.tengine (git-ignored):
#   pids/   NAME.pid (+ NAME.start, the process start time, to guard against
#           pid reuse), postgres.started (marker: we started a Postgres cluster)
#   logs/   NAME.log
#   nats/   JetStream store of the nats-server we start (if we start one)

set -euo pipefail

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    echo "deploy/local/lib.sh is meant to be sourced by deploy/local/{up,down,test}" >&2
    exit 1
fi

ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd -P)"
STATE="$ROOT/.tengine"
PIDS="$STATE/pids"
LOGS="$STATE/logs"
mkdir -p "$PIDS" "$LOGS"

PG_HOST=127.0.0.1
PG_PORT=5432
NATS_HOST=127.0.0.1
NATS_PORT=4222

# ---------------------------------------------------------------- messages

log() { printf '[tengine] %s\n' "$*" >&2; }
die() { printf '[tengine] ERROR: %s\n' "$*" >&2; exit 1; }

# tail_log NAME [LINES]: print the end of $LOGS/NAME.log to stderr.
tail_log() {
    local f="$LOGS/$1.log"
    if [[ -s $f ]]; then
        printf -- '----- last %s lines of %s -----\n' "${2:-40}" "$f" >&2
        tail -n "${2:-40}" -- "$f" >&2 || true
        printf -- '-----\n' >&2
    else
        printf '[tengine] (no output in %s)\n' "$f" >&2
    fi
}

# ---------------------------------------------------------------- privileges / packages

# as_root CMD...: run a command as root (directly, or via sudo when not root).
as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -- "$@"
    else
        die "need root to run '$*' (not root and sudo is not installed)"
    fi
}

# as_postgres CMD...: run a command as the 'postgres' OS user (local socket, peer auth).
as_postgres() {
    if [[ $EUID -eq 0 ]]; then
        # cd / avoids "could not change directory to /root" noise.
        local runuser
        runuser="$(find_cmd runuser)" || die "runuser (util-linux) not found"
        (cd / && "$runuser" -u postgres -- "$@")
    elif command -v sudo >/dev/null 2>&1; then
        (cd / && sudo -u postgres -- "$@")
    else
        die "need root or sudo to run '$*' as the postgres user"
    fi
}

_TENGINE_APT_UPDATED=0
# apt_install PKG...: install Debian packages; 'apt-get update' runs once, and
# only because something is missing (callers only call this when needed).
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; please install these packages manually: $*"
    log "installing: $* (apt-get)"
    if [[ $_TENGINE_APT_UPDATED -eq 0 ]]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
        _TENGINE_APT_UPDATED=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

# find_cmd NAME: print the path of NAME, also looking in sbin dirs that are not
# on a normal user's PATH (nats-server, runuser live in /usr/sbin on Debian).
find_cmd() {
    local p
    if p="$(command -v "$1" 2>/dev/null)"; then
        printf '%s\n' "$p"
        return 0
    fi
    for p in "/usr/sbin/$1" "/sbin/$1" "/usr/local/sbin/$1"; do
        if [[ -x $p ]]; then
            printf '%s\n' "$p"
            return 0
        fi
    done
    return 1
}

# need_cmd CMD PKG: make sure CMD exists, installing PKG if it does not.
need_cmd() {
    find_cmd "$1" >/dev/null || apt_install "$2"
    find_cmd "$1" >/dev/null || die "'$1' still not found after installing '$2'"
}

# ---------------------------------------------------------------- small helpers

# port_open HOST PORT: true if something accepts TCP connections there.
port_open() {
    # shellcheck disable=SC2016 # $0/$1 expand in the inner shell
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null
}

# wait_port HOST PORT SECONDS
wait_port() {
    local deadline=$((SECONDS + $3))
    until port_open "$1" "$2"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

# http_ok URL: true if URL answers HTTP 200.
http_ok() {
    local code
    code="$(curl -sS -o /dev/null --max-time 3 -w '%{http_code}' -- "$1" 2>/dev/null)" || return 1
    [[ $code == 200 ]]
}

# wait_http URL SECONDS: wait (bounded) until URL answers HTTP 200.
wait_http() {
    need_cmd curl curl
    local deadline=$((SECONDS + $2))
    until http_ok "$1"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
}

# _proc_stat PID FIELD: print field FIELD (1-based, as in proc(5)) of
# /proc/PID/stat; FIELD >= 3. Fails if there is no such process.
_proc_stat() {
    local stat rest f
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    rest="${stat##*) }" # skip "pid (comm) "; comm may contain spaces
    read -r -a f <<<"$rest"
    printf '%s\n' "${f[$2 - 3]:-}"
}

# pid_of NAME: print the pid recorded for NAME if that process is still alive
# (not a zombie, and started at the recorded time, i.e. not a reused pid).
pid_of() {
    local pidf="$PIDS/$1.pid" startf="$PIDS/$1.start" pid state start
    [[ -s $pidf ]] || return 1
    pid="$(<"$pidf")"
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    if [[ -d /proc/$pid ]]; then
        state="$(_proc_stat "$pid" 3)" || return 1
        [[ $state != Z ]] || return 1
        if [[ -s $startf ]]; then
            start="$(_proc_stat "$pid" 22)" || return 1
            [[ $start == "$(<"$startf")" ]] || return 1
        fi
    fi
    printf '%s\n' "$pid"
}

# start_bg NAME CMD...: run CMD detached (own session, nohup), stdout+stderr
# appended to $LOGS/NAME.log, pid in $PIDS/NAME.pid. No-op if already running.
start_bg() {
    local name="$1" pid
    shift
    if pid="$(pid_of "$name")"; then
        log "$name already running (pid $pid)"
        return 0
    fi
    local pidf="$PIDS/$name.pid" logf="$LOGS/$name.log"
    rm -f -- "$pidf" "$PIDS/$name.start"
    printf '\n===== %s starting: %s\n' "$(date -Is)" "$*" >>"$logf"
    # The inner bash records its own pid and then exec's CMD, so the pid is
    # CMD's pid whether or not setsid had to fork. The lock fd (9, see
    # lock_state) is closed so services never hold the up/down lock.
    # shellcheck disable=SC2016
    nohup setsid bash -c 'echo "$$" >"$0.tmp" && mv -f -- "$0.tmp" "$0" && exec "$@"' \
        "$pidf" "$@" >>"$logf" 2>&1 </dev/null 9>&- &
    local deadline=$((SECONDS + 5))
    until [[ -s $pidf ]]; do
        ((SECONDS < deadline)) || die "$name: did not record its pid (see $logf)"
        sleep 0.05
    done
    pid="$(<"$pidf")"
    _proc_stat "$pid" 22 >"$PIDS/$name.start" 2>/dev/null || rm -f -- "$PIDS/$name.start"
    log "started $name (pid $pid), log: $logf"
}

# stop_bg NAME: TERM the process (group), wait up to 10 s, then KILL.
# Removes the pid file. No-op if not running.
stop_bg() {
    local name="$1" pid pgid
    if ! pid="$(pid_of "$name")"; then
        rm -f -- "$PIDS/$name.pid" "$PIDS/$name.start"
        return 0
    fi
    log "stopping $name (pid $pid)"
    pgid="$(_proc_stat "$pid" 5 || true)"
    # start_bg runs things in their own session, so pgid == pid: signal the whole
    # group (catches children). Otherwise only the process itself.
    if [[ $pgid == "$pid" ]]; then
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    else
        kill -TERM "$pid" 2>/dev/null || true
    fi
    local deadline=$((SECONDS + 10))
    while pid_of "$name" >/dev/null; do
        if ((SECONDS >= deadline)); then
            log "$name did not exit after 10 s; sending KILL"
            if [[ $pgid == "$pid" ]]; then
                kill -KILL -- "-$pid" 2>/dev/null || true
            fi
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.2
            break
        fi
        sleep 0.2
    done
    rm -f -- "$PIDS/$name.pid" "$PIDS/$name.start"
}

# lock_state: hold an exclusive lock on $STATE/lock (fd 9) until the script
# exits, so two up/down runs do not interleave.
lock_state() {
    exec 9>"$STATE/lock"
    if ! flock -n 9; then
        log "waiting for another deploy/local/up or down to finish (lock $STATE/lock)"
        flock -w 600 9 || die "timed out waiting for the lock $STATE/lock"
    fi
}

# ---------------------------------------------------------------- rust

ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1 && [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/cargo ]]; then
        export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        cat >&2 <<'EOF'
[tengine] ERROR: 'cargo' (Rust toolchain) was not found.
Install Rust with rustup (https://rustup.rs):

    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y
    . "$HOME/.cargo/env"

(On Debian you may also need: apt-get install -y build-essential pkg-config curl)
The toolchain version is pinned by the workspace (rust-version in Cargo.toml).
Then re-run this command.
EOF
        exit 1
    fi
}

# ---------------------------------------------------------------- postgres

# Print "VERSION CLUSTER STATUS" of the Debian cluster configured for port $PG_PORT.
_pg_cluster_on_port() {
    pg_lsclusters -h 2>/dev/null | awk -v p="$PG_PORT" '$3 == p { print $1, $2, $4; exit }'
}

_pg_wait_ready() {
    local deadline=$((SECONDS + $1))
    while :; do
        if command -v pg_isready >/dev/null 2>&1; then
            pg_isready -q -h "$PG_HOST" -p "$PG_PORT" && return 0
        elif port_open "$PG_HOST" "$PG_PORT"; then
            return 0
        fi
        ((SECONDS < deadline)) || return 1
        sleep 0.3
    done
}

# Start a local Debian cluster on $PG_PORT (installing/creating it as needed).
_pg_start_local() {
    if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! command -v pg_lsclusters >/dev/null 2>&1; then
        apt_install postgresql
    fi
    local info ver name status
    info="$(_pg_cluster_on_port)"
    if [[ -z $info ]]; then
        if [[ -n $(pg_lsclusters -h 2>/dev/null) ]]; then
            pg_lsclusters >&2 || true
            die "PostgreSQL clusters exist, but none is configured for port $PG_PORT. Start one on 127.0.0.1:$PG_PORT, or set TENGINE_DATABASE_URL."
        fi
        ver="$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -type d -printf '%f\n' 2>/dev/null | sort -V | tail -n 1)"
        [[ -n $ver ]] || die "no PostgreSQL server version found under /usr/lib/postgresql"
        log "creating PostgreSQL cluster $ver/main on port $PG_PORT"
        as_root pg_createcluster -p "$PG_PORT" "$ver" main
        info="$(_pg_cluster_on_port)"
        [[ -n $info ]] || die "pg_createcluster did not create a cluster on port $PG_PORT"
    fi
    read -r ver name status <<<"$info"
    if [[ $status == online* ]]; then
        die "PostgreSQL cluster $ver/$name is running but does not accept connections on $PG_HOST:$PG_PORT (check listen_addresses), or set TENGINE_DATABASE_URL."
    fi
    log "starting PostgreSQL cluster $ver/$name (without systemd)"
    as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" start
    # Remember that we started it (and which postmaster), so 'down' stops only that.
    local pidfile="/var/run/postgresql/$ver-$name.pid" pmpid=""
    if [[ -r $pidfile ]]; then
        pmpid="$(head -n 1 -- "$pidfile")"
    fi
    printf '%s %s %s\n' "$ver" "$name" "$pmpid" >"$PIDS/postgres.started"
    _pg_wait_ready 30 || die "PostgreSQL $ver/$name did not become ready on $PG_HOST:$PG_PORT within 30 s (see /var/log/postgresql/postgresql-$ver-$name.log)"
}

# Idempotently create role tengine/tengine (LOGIN CREATEDB) and database tengine.
_pg_setup_role_db() {
    command -v psql >/dev/null 2>&1 || apt_install postgresql-client
    id postgres >/dev/null 2>&1 || die "no 'postgres' OS user to set up the tengine role with; create role/database tengine yourself, or set TENGINE_DATABASE_URL"
    log "ensuring PostgreSQL role 'tengine' and database 'tengine'"
    as_postgres psql -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" -d postgres >/dev/null <<'SQL'
SET client_min_messages = warning;
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'tengine') THEN
        CREATE ROLE tengine LOGIN CREATEDB PASSWORD 'tengine';
    ELSE
        ALTER ROLE tengine LOGIN CREATEDB PASSWORD 'tengine';
    END IF;
END
$$;
SELECT 'CREATE DATABASE tengine OWNER tengine'
WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_database WHERE datname = 'tengine')
\gexec
ALTER DATABASE tengine OWNER TO tengine;
SQL
}

# True if the tengine role can already log in over TCP and create databases.
_pg_tengine_ok() {
    command -v psql >/dev/null 2>&1 || return 1
    local out
    out="$(PGCONNECT_TIMEOUT=5 psql -X -qAt \
        "postgres://tengine:tengine@$PG_HOST:$PG_PORT/tengine" \
        -c 'SELECT rolcreatedb FROM pg_roles WHERE rolname = current_user' 2>/dev/null)" || return 1
    [[ $out == t ]]
}

ensure_postgres() {
    if [[ -n ${TENGINE_DATABASE_URL:-} ]]; then
        export TENGINE_DATABASE_URL
        return 0
    fi
    if ! port_open "$PG_HOST" "$PG_PORT"; then
        _pg_start_local
    fi
    _pg_wait_ready 30 || die "PostgreSQL on $PG_HOST:$PG_PORT is not accepting connections"
    if ! _pg_tengine_ok; then
        _pg_setup_role_db
        _pg_tengine_ok || die "cannot log in as tengine/tengine on $PG_HOST:$PG_PORT after creating the role (check pg_hba.conf: 'host all all 127.0.0.1/32 scram-sha-256' is the Debian default and works)"
    fi
    export TENGINE_DATABASE_URL="postgres://tengine:tengine@$PG_HOST:$PG_PORT/tengine"
}

# Stop the Postgres cluster only if ensure_postgres started it.
stop_postgres_if_ours() {
    local marker="$PIDS/postgres.started" ver name pmpid cur=""
    [[ -f $marker ]] || return 0
    read -r ver name pmpid <"$marker" || true
    if [[ -z ${ver:-} || -z ${name:-} ]]; then
        rm -f -- "$marker"
        return 0
    fi
    if [[ -r /var/run/postgresql/$ver-$name.pid ]]; then
        cur="$(head -n 1 -- "/var/run/postgresql/$ver-$name.pid")"
    fi
    if [[ -z $cur ]] || ! command -v pg_ctlcluster >/dev/null 2>&1; then
        log "PostgreSQL $ver/$name is not running"
    elif [[ -n ${pmpid:-} && $cur != "$pmpid" ]]; then
        log "PostgreSQL $ver/$name was restarted by someone else since we started it; leaving it running"
    else
        log "stopping PostgreSQL cluster $ver/$name (started by deploy/local)"
        as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" stop || log "pg_ctlcluster stop failed (already stopped?)"
    fi
    rm -f -- "$marker"
}

# ---------------------------------------------------------------- nats

ensure_nats() {
    if [[ -n ${TENGINE_NATS_URL:-} ]]; then
        export TENGINE_NATS_URL
        return 0
    fi
    if ! port_open "$NATS_HOST" "$NATS_PORT"; then
        local nats_bin
        if ! nats_bin="$(find_cmd nats-server)"; then
            apt_install nats-server
            nats_bin="$(find_cmd nats-server)" || die "nats-server still not found after installing it"
        fi
        # Installing the package may have started a (system) service already.
        if ! port_open "$NATS_HOST" "$NATS_PORT"; then
            mkdir -p "$STATE/nats"
            start_bg nats "$nats_bin" -a "$NATS_HOST" -p "$NATS_PORT" -js -sd "$STATE/nats"
            if ! wait_port "$NATS_HOST" "$NATS_PORT" 10; then
                tail_log nats
                die "nats-server did not start listening on $NATS_HOST:$NATS_PORT within 10 s"
            fi
        fi
    fi
    export TENGINE_NATS_URL="nats://$NATS_HOST:$NATS_PORT"
}
