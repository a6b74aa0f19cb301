#!/usr/bin/env bash
# fedrec deployment demo on one machine: the steps of the README's Deployment section, end to end.
#
#   scripts/deploy_demo.sh [WORKDIR]        (default: runs/deploy-demo; must not exist)
#   ROUNDS=3 DP=true SECAGG=false KEEP=0 FLOOR_BELOW=10000.0 scripts/deploy_demo.sh /tmp/demo
#
# The demo's 400 users are fewer than dp.floor-below (10,000): with DP the run releases the private floor model
# and trains no round; FLOOR_BELOW=0.0 trains anyway (to watch SecAgg+ rounds).
#
# Certificates -> demo data -> SuperLink (TLS, SuperNode auth, no runtime installs) -> register node keys ->
# two SuperNodes -> `flwr run` -> logs -> run directory -> `fedrec audit`. Every process runs in its own session
# on a free 127.0.0.1 port with its own FLWR_HOME; all are stopped by PID on exit (KEEP=1: wait for Enter first).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${FEDREC_BIN:-$REPO/.venv/bin}"
WORK="$(realpath -m "${1:-$REPO/runs/deploy-demo}")"
ROUNDS="${ROUNDS:-3}" DP="${DP:-true}" SECAGG="${SECAGG:-false}" KEEP="${KEEP:-0}"
CONN=fedrec-demo
export PATH="$BIN:$PATH" PYTHONUNBUFFERED=1
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1

[[ -e "$WORK" ]] && { echo "error: $WORK already exists (remove it or pass another directory)" >&2; exit 2; }
mkdir -p "$WORK/logs"
PIDS=()

cleanup() {  # stop what we started, by PID (each is its own process group): TERM, grace, KILL
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do
    local alive=0
    for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [[ $alive == 0 ]] && break
    sleep 0.2
  done
  for pid in "${PIDS[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

free_port() { python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

start() {  # start NAME FLWR_HOME CMD...: detached, own session, log in $WORK/logs/NAME.log
  local name=$1 home=$2; shift 2
  mkdir -p "$home"
  FLWR_HOME="$home" setsid "$@" >"$WORK/logs/$name.log" 2>&1 </dev/null &
  PIDS+=("$!")
  echo "started $name (pid $!)"
}

echo "== 1. certificates (CA, SuperLink certificate, SuperNode auth keys)"
fedrec certs create --out "$WORK/certs" --host 127.0.0.1 --host localhost --node edge-1 --node edge-2

echo "== 2. data: each owner's prepared dataset over one item catalog (demo: synthetic)"
fedrec deploy demo-data --out "$WORK/data" --nodes 2 --users 400 --items 500

echo "== 3. SuperLink: TLS, SuperNode authentication, no runtime dependency installation"
PORT=$(free_port)
start superlink "$WORK/superlink-home" flower-superlink \
  --ssl-ca-certfile "$WORK/certs/ca.crt" --ssl-certfile "$WORK/certs/superlink.crt" \
  --ssl-keyfile "$WORK/certs/superlink.key" --host 127.0.0.1 --port "$PORT" \
  --enable-supernode-auth --disable-runtime-dependency-installation --database "$WORK/superlink-home/state.db"
python - "$PORT" "$WORK/certs/ca.crt" <<'EOF'
import http.client, ssl, sys, time
ctx = ssl.create_default_context(cafile=sys.argv[2])
for _ in range(120):
    try:
        c = http.client.HTTPSConnection("127.0.0.1", int(sys.argv[1]), context=ctx, timeout=2)
        c.request("GET", "/health"); c.getresponse(); sys.exit(0)
    except OSError:
        time.sleep(0.5)
sys.exit("SuperLink did not come up")
EOF

echo "== 4. the operator's flwr CLI: a TLS connection to the SuperLink"
export FLWR_HOME="$WORK/cli-home"
mkdir -p "$FLWR_HOME"
cat >"$FLWR_HOME/config.toml" <<EOF
[superlink]
default = "$CONN"

[superlink.$CONN]
address = "127.0.0.1:$PORT"
root-certificates = "$WORK/certs/ca.crt"
EOF

echo "== 5. register the SuperNodes' public keys"
for n in edge-1 edge-2; do flwr supernode register "$WORK/certs/nodes/$n.pub" "$CONN" --name "$n"; done

echo "== 6. SuperNodes: node_config names the dataset, the state dir and the ledger signing key"
for i in 1 2; do
  fedrec deploy node-config --data-path "$WORK/data/node-$i/data" --state-dir "$WORK/nodes/edge-$i/state" \
    --name "edge-$i" --out "$WORK/nodes/edge-$i/node.toml"
  start "supernode-edge-$i" "$WORK/nodes/edge-$i/flwr-home" flower-supernode \
    --root-certificates "$WORK/certs/ca.crt" --superlink "127.0.0.1:$PORT" --host 127.0.0.1 --port "$(free_port)" \
    --auth-supernode-private-key "$WORK/certs/nodes/edge-$i" --node-config "$WORK/nodes/edge-$i/node.toml"
done
for _ in $(seq 120); do
  online=$(flwr supernode list "$CONN" --format json | python -c \
    'import json, sys; print(sum(n["status"] == "online" for n in json.load(sys.stdin)["nodes"]))')
  [[ "$online" == 2 ]] && break
  sleep 1
done
flwr supernode list "$CONN"

echo "== 7. flwr run (the coordinator needs only the item catalog)"
cat >"$WORK/run-config.toml" <<EOF
federation.rounds = $ROUNDS
federation.min-nodes = 2
dp.enabled = $DP
transport.secure-aggregation = $SECAGG
data.catalog-path = "$WORK/data/coordinator/catalog.parquet"
federation.run-dir = "$WORK/run"
dp.floor-below = ${FLOOR_BELOW:-10000.0}
EOF
flwr run "$REPO" "$CONN" --stream --run-config "$WORK/run-config.toml" 2>&1 | tee "$WORK/logs/flwr-run.log"

echo "== 8. logs: flwr ls / flwr log, and the process logs in $WORK/logs"
flwr ls "$CONN"

echo "== 9. the run directory (on the coordinator host; here: $WORK/run)"
ls -l "$WORK/run"

echo "== 10. audit the federation's privacy ledger"
if [[ "$DP" == true ]]; then fedrec audit "$WORK/run/federation_ledger.jsonl" --budget 8.0; fi

if [[ "$KEEP" == 1 ]]; then read -r -p "deployment is up; press Enter to stop it " _; fi
echo "stopping ${#PIDS[@]} processes"
