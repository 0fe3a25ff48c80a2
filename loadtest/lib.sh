# shellcheck shell=bash
# Shared by the load-test scenarios: a private Tengine cluster (fresh database,
# own JetStream prefix, own ports) built in release mode, started and stopped by
# the scenario. PostgreSQL and NATS are the machine's (started when missing).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../deploy/local/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/../deploy/local/lib.sh"

BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
LOAD="$BIN/tengine-load"
OUT="${TENGINE_LOAD_OUT:-$STATE/loadtest}"
mkdir -p "$OUT"
# Ports of the scenario's own processes (loopback only).
L_INGRESS_PORT="${TENGINE_LOAD_INGRESS_PORT:-18700}"
L_UPSTREAM_PORT="${TENGINE_LOAD_UPSTREAM_PORT:-18790}"
L_PROJECTOR_PORT=18710
L_INGRESS_METRICS_PORT=18711
L_WORKER_BASE_PORT=18720
L_PIDS=()

prepare() {
    ensure_rust
    ensure_postgres
    ensure_nats
    need_cmd curl curl
    if [[ ${TENGINE_LOAD_SKIP_BUILD:-0} != 1 ]]; then
        log "building release binaries (tengine, tengine-load)"
        (cd "$ROOT" && cargo build --release --locked -q -p tengine-cli -p tengine-loadtest)
    fi
    for port in "$L_INGRESS_PORT" "$L_UPSTREAM_PORT" "$L_PROJECTOR_PORT"; do
        ! port_open 127.0.0.1 "$port" || die "port $port is taken (set TENGINE_LOAD_*_PORT)"
    done
}

# cluster_env: a fresh database and prefix for this scenario.
cluster_env() {
    local id
    id="load$(date +%s)$$"
    L_DB="tengine_$id"
    L_PREFIX="$id"
    psql -q "$TENGINE_DATABASE_URL" -c "CREATE DATABASE $L_DB" >/dev/null
    L_PG_ADMIN="$TENGINE_DATABASE_URL"
    # PostgreSQL on loopback without TLS (sqlx would negotiate it with Debian's
    # snakeoil certificate): a benchmark of Tengine, not of TLS to localhost.
    export TENGINE_DATABASE_URL="${TENGINE_DATABASE_URL%/*}/$L_DB?sslmode=disable"
    export TENGINE_NATS_PREFIX="$L_PREFIX"
    export TENGINE_ADMIN_TOKEN="load-admin"
    TENGINE_MASTER_KEY="$(head -c 32 /dev/urandom | base64)"
    TENGINE_SESSION_SECRET="$(head -c 32 /dev/urandom | base64)"
    export TENGINE_MASTER_KEY TENGINE_SESSION_SECRET
    export TENGINE_ALLOW_INSECURE_UPSTREAMS=true TENGINE_ALLOW_PRIVATE_UPSTREAMS=true
    export TENGINE_STREAMS__COMMANDS_MAX_BYTES=$((256 << 20)) TENGINE_STREAMS__EVENTS_MAX_BYTES=$((2048 << 20))
    export TENGINE_INGRESS__LISTEN="127.0.0.1:$L_INGRESS_PORT"
    export TENGINE_INGRESS__PUBLIC_URL="http://127.0.0.1:$L_INGRESS_PORT"
    export TENGINE_INGRESS__METRICS_LISTEN="127.0.0.1:$L_INGRESS_METRICS_PORT"
    export TENGINE_PROJECTOR__HEALTH_LISTEN="127.0.0.1:$L_PROJECTOR_PORT"
    export RUST_LOG="${RUST_LOG:-warn}"
    export TENGINE_ADMIN_URL="http://127.0.0.1:$L_INGRESS_PORT"
    export TENGINE_MCP_URL="http://127.0.0.1:$L_INGRESS_PORT/mcp"
    trap teardown EXIT
}

# spawn NAME CMD...: background process, log in $OUT/NAME.log, pid remembered.
spawn() {
    local name="$1"
    shift
    "$@" >"$OUT/$name.log" 2>&1 &
    L_PIDS+=("$!")
}

stop_pid() {
    kill -TERM "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

start_upstream() { # DELAY_MS
    spawn upstream "$LOAD" upstream --listen "127.0.0.1:$L_UPSTREAM_PORT" --delay-ms "$1"
    wait_port 127.0.0.1 "$L_UPSTREAM_PORT" 10 || die "upstream did not start"
}

start_cluster() { # WORKERS [WORKER_CONCURRENCY]
    spawn ingress "$BIN/tengine" ingress
    L_INGRESS_PID=$!
    wait_http "http://127.0.0.1:$L_INGRESS_PORT/v1/health" 60 || die "ingress did not start (see $OUT/ingress.log)"
    start_workers "$1" "${2:-64}"
    spawn projector "$BIN/tengine" projector
    wait_http "http://127.0.0.1:$L_PROJECTOR_PORT/health" 60 || die "projector did not start"
}

# start_second_ingress: another ingress on the next ports; sets L_SECOND_PORT.
start_second_ingress() {
    L_SECOND_PORT=$((L_INGRESS_PORT + 1))
    spawn ingress2 env TENGINE_INGRESS__LISTEN="127.0.0.1:$L_SECOND_PORT" \
        TENGINE_INGRESS__METRICS_LISTEN="127.0.0.1:$((L_INGRESS_METRICS_PORT + 1))" "$BIN/tengine" ingress
    wait_http "http://127.0.0.1:$L_SECOND_PORT/v1/health" 60 || die "the second ingress did not start"
}

L_WORKER_PIDS=()
start_workers() { # COUNT CONCURRENCY
    local i
    for ((i = 0; i < $1; i++)); do
        spawn "worker$i" env TENGINE_WORKER__CONCURRENCY="$2" \
            TENGINE_WORKER__HEALTH_LISTEN="127.0.0.1:$((L_WORKER_BASE_PORT + i))" "$BIN/tengine" worker
        L_WORKER_PIDS+=("$!")
        wait_http "http://127.0.0.1:$((L_WORKER_BASE_PORT + i))/health" 60 || die "worker $i did not start"
    done
}

stop_workers() {
    local pid
    for pid in "${L_WORKER_PIDS[@]}"; do stop_pid "$pid"; done
    L_WORKER_PIDS=()
}

# start_floor: the design's floor beside the cluster (async-nats alone, see
# loadtest/src/floor.rs): its worker calling the same upstream and its log reader.
start_floor() {
    spawn floor-worker "$LOAD" floor worker --upstream "http://127.0.0.1:$L_UPSTREAM_PORT/call"
    L_FLOOR_WORKER_PID=$!
    spawn floor-reader "$LOAD" floor reader
    L_FLOOR_READER_PID=$!
}

# setup_tool: project + key + tool `load` calling the upstream; exports TENGINE_API_KEY.
setup_tool() {
    eval "$("$LOAD" setup --upstream "http://127.0.0.1:$L_UPSTREAM_PORT")"
}

teardown() {
    local pid
    for pid in "${L_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${L_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    "$LOAD" teardown --prefix "$L_PREFIX" 2>/dev/null || true
    "$LOAD" floor teardown --prefix "$L_PREFIX" 2>/dev/null || true
    psql -q "$L_PG_ADMIN" -c "DROP DATABASE IF EXISTS $L_DB WITH (FORCE)" >/dev/null 2>&1 || true
}

# result FIELD FILE: a field of the RESULT line tengine-load printed into FILE.
result() {
    grep '^RESULT ' "$2" | tail -1 | sed 's/^RESULT //' | python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"
}

# rss_kib PID: resident memory of a process.
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# projector_lag: events the projector has not applied yet (from /v1/health).
projector_lag() {
    curl -sS --max-time 5 -H "Authorization: Bearer $TENGINE_ADMIN_TOKEN" "http://127.0.0.1:$L_INGRESS_PORT/v1/health" |
        python3 -c "import json,sys; print(json.load(sys.stdin).get('projector_lag_events'))"
}

# cpu_ticks PID: user+system clock ticks the process has used.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

md() { printf '%s\n' "$*" | tee -a "$OUT/results.md"; }

# stage_means URL METRIC [STATE]: the mean time per stage (ms) of a stage histogram
# scraped from a /metrics endpoint, as "stage ms, ...". With STATE (a file), only
# what ran since the last call that gave the same STATE counts (the histograms
# are cumulative).
stage_means() {
    curl -sS --max-time 5 "$1" | python3 -c "
import json, os, re, sys
state = sys.argv[1]
before = json.load(open(state)) if state and os.path.exists(state) else {}
now = {}
for line in sys.stdin:
    m = re.match(r'$2_(sum|count)\{[^}]*stage=\"([^\"]+)\"[^}]*\} ([0-9.e+-]+)', line)
    if m:
        now[m.group(1) + ' ' + m.group(2)] = float(m.group(3))
if state:
    json.dump(now, open(state, 'w'))
d = {k: v - before.get(k, 0.0) for k, v in now.items()}
stages = [k[4:] for k in d if k.startswith('sum ')]
print(', '.join(f'{s} {1000 * d[\"sum \" + s] / d[\"count \" + s]:.3f} ms' for s in stages if d.get('count ' + s)))
" "${3:-}"
}
