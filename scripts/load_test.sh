#!/usr/bin/env bash
# Load test of `nb serve`: N concurrent clients (default 4), each sending the encrypted
# products of training steps (every remote module, forward and backward) for S seconds
# (default 60). Prints throughput and latency percentiles; writes outputs/load_test.md.
#   scripts/load_test.sh [CLIENTS] [SECONDS] [ROWS] [MODEL: gpt2|smollm2]
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${1:-4} SECONDS_=${2:-60} ROWS=${3:-32} MODEL=${4:-gpt2}
export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-Zen}
swift build -c release -Xswiftc -enable-testing --product nb >/dev/null
swift build -c release -Xswiftc -enable-testing --product Benchmarks >/dev/null
BIN=.build/release
WORK=$(mktemp -d)
trap 'kill $SERVER 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
echo "load test: making a $MODEL deployment (every linear layer remote)..." >&2
$BIN/Benchmarks --make-deployment "$MODEL" "$WORK/d" >/dev/null
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$WORK/token"; chmod 600 "$WORK/token"
$BIN/nb serve "$WORK/d" --port 0 --concurrency 2 --token-file "$WORK/token" >"$WORK/serve.out" 2>"$WORK/serve.log" &
SERVER=$!
for _ in $(seq 100); do grep -q listening "$WORK/serve.out" 2>/dev/null && break; sleep 0.2; done
URL=$(sed -n 's/.*listening on //p' "$WORK/serve.out")
echo "load test: $CLIENTS clients × $SECONDS_ s against $URL ($ROWS rows per product)..." >&2
RSS_BEFORE=$(awk '/VmRSS/{print $2}' /proc/$SERVER/status)
RESULT=$(NB_BENCH_TOKEN=$(cat "$WORK/token") $BIN/Benchmarks --load-test "$WORK/d" "$URL" "$CLIENTS" "$SECONDS_" "$ROWS")
RSS_AFTER=$(awk '/VmRSS/{print $2}' /proc/$SERVER/status)
LOGGED=$(grep -c '"direction"' "$WORK/serve.log" || true)
STATUS_500=$(grep -c '"status":5' "$WORK/serve.log" || true)
kill -TERM $SERVER; wait $SERVER; SERVER=
python3 - "$RESULT" "$RSS_BEFORE" "$RSS_AFTER" "$LOGGED" "$STATUS_500" "$MODEL" "$ROWS" <<'PY'
import json, sys, datetime
r = json.loads(sys.argv[1]); before, after, logged, s500, model, rows = sys.argv[2:8]
lines = [
  f"# nb serve load test ({datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC)", "",
  f"{r['clients']} concurrent clients for {r['seconds']:.0f} s; deployment: {model} ({r['modules']} remote modules); {rows} rows per product; server `--concurrency 2` on 2 cores.", "",
  "| metric | value |", "|---|---:|",
  f"| products answered | {r['requests']} |", f"| errors | {r['errors']} |",
  f"| training steps' worth of products (all modules × 2 directions) | {r['steps']} |",
  f"| throughput | {r['requestsPerSecond']:.2f} products/s |",
  f"| client → server | {r['sentMBps']:.1f} MB/s |", f"| server → client | {r['receivedMBps']:.1f} MB/s |",
  f"| latency p50 | {r['p50']*1000:.0f} ms |", f"| latency p90 | {r['p90']*1000:.0f} ms |",
  f"| latency p99 | {r['p99']*1000:.0f} ms |", f"| latency max | {r['max']*1000:.0f} ms |",
  f"| server RSS before / after | {int(before)/1024:.0f} / {int(after)/1024:.0f} MiB |",
  f"| product requests in the server's log / 5xx | {logged} / {s500} |",
]
if r['errors']: lines.append(f"\nfirst error: {r['firstError']}")
text = "\n".join(lines) + "\n"
print(text)
import os; os.makedirs("outputs", exist_ok=True); open("outputs/load_test.md", "w").write(text)
PY
