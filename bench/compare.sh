#!/usr/bin/env bash
# Side-by-side benchmark: ferromq vs Mosquitto vs rumqttd, every scenario of
# ferromq-bench, medians of REPS repetitions, as a markdown table with
# ferromq/peer ratios.
#
# Method (docs/BENCHMARKS.md, reference/benchmarks.md): a fresh broker process per run
# on a new loopback port, broker pinned to CPU 0 and the loader to CPU 1 (taskset),
# brokers alternated run by run with the order rotated each repetition, a wait for an
# idle host before each run, medians.
#
# Usage: bench/compare.sh [--reps N] [--duration S] [--warmup S] [--idle N]
#                         [--scenarios "a b c"] [--brokers "ferromq mosquitto rumqttd"]
#                         [--idle-wait S] [--out DIR] [--baseline BIN]
# --baseline BIN: an earlier ferromq binary, run as broker "ferromq-base" (list it in
# --brokers) with the same settings, so an optimisation is measured A/B in one run.
# Installs Mosquitto (apt) and rumqttd (cargo install rumqttd --version 0.20.0) when
# missing. Raw JSON of every run lands in OUT (default target/bench-compare).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPS=3
DURATION=10
WARMUP=2
IDLE=10000
IDLE_WAIT=10
BROKERS="ferromq mosquitto rumqttd"
SCENARIOS="qos0-1to1 qos1-1to1 qos2-1to1 fanout-1to100 fanin-100to1 qos0-1to1/nagle fanin-100to1/nagle latency-5k persistent-qos1 idle-connections retained-100k"
OUT=""
BASELINE=""
while [ $# -gt 0 ]; do
    case "$1" in
        --reps) REPS="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --warmup) WARMUP="$2"; shift 2 ;;
        --idle) IDLE="$2"; shift 2 ;;
        --idle-wait) IDLE_WAIT="$2"; shift 2 ;;
        --scenarios) SCENARIOS="$2"; shift 2 ;;
        --brokers) BROKERS="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --baseline) BASELINE="$2"; shift 2 ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "compare.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
case " $BROKERS " in *" ferromq-base "*)
    if [ ! -x "$BASELINE" ]; then echo "compare.sh: ferromq-base needs --baseline BIN" >&2; exit 2; fi ;;
esac
OUT="${OUT:-$TARGET/bench-compare}"
mkdir -p "$OUT"
WORK="$(mktemp -d)"
BROKER_PID=""
cleanup() {
    if [ -n "$BROKER_PID" ]; then kill -9 "$BROKER_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "compare.sh: $*" >&2; }

# --- build and install --------------------------------------------------------
log "building ferromq and ferromq-bench (release)"
(cd "$ROOT" && cargo build --release -p ferromq -p ferromq-bench >&2)
FERROMQ="$TARGET/release/ferromq"
BENCH="$TARGET/release/ferromq-bench"

case " $BROKERS " in *" mosquitto "*)
    if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
        log "installing mosquitto (apt)"
        apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >&2
    fi ;;
esac
MOSQUITTO="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
case " $BROKERS " in *" rumqttd "*)
    if ! command -v rumqttd >/dev/null && [ ! -x "$HOME/.cargo/bin/rumqttd" ]; then
        # `--locked` fails on this toolchain (issue 6); this takes minutes.
        log "installing rumqttd 0.20.0 (cargo install)"
        cargo install rumqttd --version 0.20.0 >&2
    fi ;;
esac
RUMQTTD="$(command -v rumqttd || echo "$HOME/.cargo/bin/rumqttd")"

# Brokers and loader get as many descriptors as the hard limit allows.
ulimit -n "$(ulimit -Hn)" || true

# --- one run -------------------------------------------------------------------
PORT=$((20000 + RANDOM % 20000))
next_port() { PORT=$((PORT + 2)); if [ "$PORT" -gt 60000 ]; then PORT=20001; fi; }

wait_port() { # port: until it accepts, 10 s at most
    for _ in $(seq 1 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    return 1
}

wait_idle() { # up to IDLE_WAIT s for the host to be >= 85 % idle over half a second
    for _ in $(seq 1 $((IDLE_WAIT * 2))); do
        read -r _ u1 n1 s1 i1 w1 _ < /proc/stat
        sleep 0.5
        read -r _ u2 n2 s2 i2 w2 _ < /proc/stat
        local busy=$(( (u2 - u1) + (n2 - n1) + (s2 - s1) ))
        local idle=$(( (i2 - i1) + (w2 - w1) ))
        if [ $((busy + idle)) -gt 0 ] && [ $((idle * 100 / (busy + idle))) -ge 85 ]; then return 0; fi
    done
    log "host not idle after ${IDLE_WAIT} s (shared machine); running anyway"
}

start_broker() { # broker port -> sets BROKER_PID
    local broker="$1" port="$2" dir="$WORK/$1-$2"
    mkdir -p "$dir"
    case "$broker" in
        ferromq|ferromq-base)
            local bin="$FERROMQ"
            if [ "$broker" = ferromq-base ]; then bin="$BASELINE"; fi
            taskset -c 0 "$bin" --listen "127.0.0.1:$port" --data-dir "$dir/data" \
                --log-level warn >"$dir/log" 2>&1 &
            ;;
        mosquitto)
            printf 'listener %s 127.0.0.1\nallow_anonymous true\nlog_dest none\n' "$port" >"$dir/mosquitto.conf"
            taskset -c 0 "$MOSQUITTO" -c "$dir/mosquitto.conf" >"$dir/log" 2>&1 &
            ;;
        rumqttd)
            sed -e "s/@V4_PORT@/$port/" -e "s/@V5_PORT@/$((port + 1))/" \
                "$ROOT/bench/rumqttd.toml" >"$dir/rumqttd.toml"
            taskset -c 0 "$RUMQTTD" -q -c "$dir/rumqttd.toml" >"$dir/log" 2>&1 &
            ;;
    esac
    BROKER_PID=$!
    if ! wait_port "$port"; then
        log "$broker did not listen on $port; log:"; cat "$dir/log" >&2
        return 1
    fi
}

stop_broker() {
    kill "$BROKER_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$BROKER_PID" 2>/dev/null || break; sleep 0.05; done
    kill -9 "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
    BROKER_PID=""
}

run_one() { # broker scenario rep
    local broker="$1" scenario="$2" rep="$3" name args=()
    name="${scenario%%/*}"
    case "$scenario" in
        */nagle) ;;                      # an ordinary client: no TCP_QUICKACK
        *) args+=(--quickack) ;;
    esac
    case "$name" in
        idle-connections) args+=("$IDLE") ;;
        retained-100k) ;;
        *) args+=(--duration "$DURATION" --warmup "$WARMUP") ;;
    esac
    next_port
    wait_idle
    start_broker "$broker" "$PORT" || return 0
    local file="$OUT/${scenario//\//_}.$broker.$rep.json"
    if ! taskset -c 1 "$BENCH" "$name" --addr "127.0.0.1:$PORT" --broker-pid "$BROKER_PID" \
        --json "${args[@]}" >"$file" 2>"$file.err"; then
        log "$broker $scenario rep $rep failed: $(tail -1 "$file.err")"
        rm -f "$file"
    else
        log "$broker $scenario rep $rep: $(head -c 300 "$file")"
    fi
    stop_broker
}

rm -f "$OUT"/*.json "$OUT"/*.err
read -r -a BLIST <<<"$BROKERS"
for rep in $(seq 1 "$REPS"); do
    for scenario in $SCENARIOS; do
        # Rotate the broker order each repetition (and per scenario).
        n=${#BLIST[@]}
        for k in $(seq 0 $((n - 1))); do
            run_one "${BLIST[$(((k + rep) % n))]}" "$scenario" "$rep"
        done
    done
done

# --- table ---------------------------------------------------------------------
python3 "$ROOT/bench/table.py" "$OUT" "$SCENARIOS" "$BROKERS"
