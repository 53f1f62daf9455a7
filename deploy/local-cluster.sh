#!/usr/bin/env bash
# Starts an N-node ferromq cluster on loopback for trying things out:
#   deploy/local-cluster.sh 3
# Each node gets its own data directory under a temporary folder and its own ports
# (MQTT 1883+i, HTTP 8080+i, cluster gRPC 7946+i, i = 0..N-1; override the bases with
# MQTT_BASE, HTTP_BASE, GRPC_BASE). Node 0 bootstraps, the others join through it.
# Prints each node's addresses once all are joined and ready; Ctrl-C stops them all.
# FERROMQ_BIN picks the binary (default: target/release/ferromq, else target/debug).
set -euo pipefail

n="${1:-3}"
if ! [[ "$n" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 N   (number of nodes, at least 1)" >&2
  exit 64
fi
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${FERROMQ_BIN:-}"
if [[ -z "$bin" ]]; then
  for b in "$root/target/release/ferromq" "$root/target/debug/ferromq"; do
    [[ -x "$b" ]] && bin="$b" && break
  done
fi
if [[ -z "$bin" || ! -x "$bin" ]]; then
  echo "no ferromq binary: run 'cargo build --release -p ferromq' first (or set FERROMQ_BIN)" >&2
  exit 69
fi
mqtt_base="${MQTT_BASE:-1883}"
http_base="${HTTP_BASE:-8080}"
grpc_base="${GRPC_BASE:-7946}"
dir="$(mktemp -d -t ferromq-cluster-XXXXXX)"
pids=()

cleanup() {
  trap - INT TERM EXIT
  echo
  echo "stopping ${#pids[@]} node(s)..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  echo "logs and data kept in $dir"
}
trap cleanup INT TERM EXIT

for ((i = 0; i < n; i++)); do
  node="$dir/node$i"
  mkdir -p "$node"
  bootstrap=never
  [[ $i -eq 0 ]] && bootstrap=always
  FERROMQ_CLUSTER_ENABLED=true \
  FERROMQ_CLUSTER_LISTEN="127.0.0.1:$((grpc_base + i))" \
  FERROMQ_CLUSTER_SEEDS="127.0.0.1:$grpc_base" \
  FERROMQ_CLUSTER_BOOTSTRAP="$bootstrap" \
  FERROMQ_PERSISTENCE_ENABLED=true \
    "$bin" --listen "127.0.0.1:$((mqtt_base + i))" --http-listen "127.0.0.1:$((http_base + i))" \
      --data-dir "$node/data" >"$node/broker.log" 2>&1 &
  pids+=($!)
done

echo "waiting for $n node(s) to join (logs in $dir/node*/broker.log)..."
deadline=$((SECONDS + 120))
for ((i = 0; i < n; i++)); do
  until "$bin" ctl --url "http://127.0.0.1:$((http_base + i))" health --ready >/dev/null 2>&1; do
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
      echo "node $i exited; its log:" >&2
      tail -n 20 "$dir/node$i/broker.log" >&2
      exit 1
    fi
    if ((SECONDS > deadline)); then
      echo "node $i not ready after 120 s; its log:" >&2
      tail -n 20 "$dir/node$i/broker.log" >&2
      exit 1
    fi
    sleep 0.2
  done
done

echo
printf '%-6s %-22s %-28s %-22s\n' NODE MQTT HTTP CLUSTER
for ((i = 0; i < n; i++)); do
  printf '%-6s %-22s %-28s %-22s\n' "$i" "127.0.0.1:$((mqtt_base + i))" \
    "http://127.0.0.1:$((http_base + i))" "127.0.0.1:$((grpc_base + i))"
done
echo
"$bin" ctl --url "http://127.0.0.1:$http_base" cluster status || true
echo
echo "try: mosquitto_sub -p $((mqtt_base + 1)) -t 'test/#' -v   and   mosquitto_pub -p $mqtt_base -t test/topic -m hello"
echo "Ctrl-C stops the cluster."
wait
