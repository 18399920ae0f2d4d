#!/usr/bin/env bash
# Two `nb serve` replicas of one deployment behind nginx (Debian's package) on loopback:
# a client trains through nginx and must get exactly the losses of a client talking to one
# replica directly; both replicas must have served products. Then 2 clients load it for
# 20 s. Writes outputs/nginx_replicas.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-Zen}
command -v nginx >/dev/null || { echo "installing nginx..." >&2; (apt-get install -y nginx-light || apt-get install -y nginx) >/dev/null; }
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
swift build -c release -Xswiftc -enable-testing --product nb >/dev/null
swift build -c release -Xswiftc -enable-testing --product Benchmarks >/dev/null
BIN=.build/release
WORK=$(mktemp -d); chmod 755 "$WORK"
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill $p 2>/dev/null || true; done; [ -f "$WORK/nginx.pid" ] && kill $(cat "$WORK/nginx.pid") 2>/dev/null; rm -rf "$WORK"' EXIT
$BIN/Benchmarks --make-deployment gpt2 "$WORK/d" >/dev/null
PORTS=()
for r in 1 2; do
  $BIN/nb serve "$WORK/d" --port 0 >"$WORK/r$r.out" 2>"$WORK/r$r.log" &
  PIDS+=($!)
  for _ in $(seq 100); do grep -q listening "$WORK/r$r.out" 2>/dev/null && break; sleep 0.2; done
  PORTS+=($(sed -n 's/.*127.0.0.1:\([0-9]*\).*/\1/p' "$WORK/r$r.out"))
done
LB=18480
cat > "$WORK/nginx.conf" <<CONF
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 64; }
http {
  access_log $WORK/nginx-access.log;
  client_body_temp_path $WORK/body; proxy_temp_path $WORK/proxy;
  fastcgi_temp_path $WORK/fcgi; uwsgi_temp_path $WORK/uwsgi; scgi_temp_path $WORK/scgi;
  upstream nb { server 127.0.0.1:${PORTS[0]}; server 127.0.0.1:${PORTS[1]}; keepalive 8; }
  server {
    listen 127.0.0.1:$LB;
    client_max_body_size 1024m;
    location / {
      proxy_pass http://nb;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_read_timeout 600s;
      # Stream bodies both ways: no temporary files (nginx's workers run as www-data).
      proxy_request_buffering off;
      proxy_buffering off;
      proxy_send_timeout 600s;
      proxy_next_upstream error timeout http_502 http_503;
    }
  }
}
CONF
$NGINX -c "$WORK/nginx.conf" -p "$WORK"
sleep 0.5
DIRECT=$($BIN/Benchmarks --remote-client "$WORK/d" "http://127.0.0.1:${PORTS[0]}" 2 32 2)
VIA=$($BIN/Benchmarks --remote-client "$WORK/d" "http://127.0.0.1:$LB" 2 32 2)
R1=$(grep -c '"direction"' "$WORK/r1.log" || true); R2=$(grep -c '"direction"' "$WORK/r2.log" || true)
LOAD=$($BIN/Benchmarks --load-test "$WORK/d" "http://127.0.0.1:$LB" 2 20 32)
R1B=$(grep -c '"direction"' "$WORK/r1.log" || true); R2B=$(grep -c '"direction"' "$WORK/r2.log" || true)
python3 - "$DIRECT" "$VIA" "$R1" "$R2" "$LOAD" "$R1B" "$R2B" "$($NGINX -v 2>&1)" <<'PY'
import json, sys, datetime
direct, via = json.loads(sys.argv[1].splitlines()[-1]), json.loads(sys.argv[2].splitlines()[-1])
r1, r2, load, r1b, r2b, version = int(sys.argv[3]), int(sys.argv[4]), json.loads(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7]), sys.argv[8]
same = direct["losses"] == via["losses"]
lines = [f"# Two nb serve replicas behind nginx ({datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC)", "",
  f"{version}; deployment: GPT-2 shape, every linear layer remote; client: 2 training steps of 2×32 tokens.", "",
  "| | direct to replica 1 | through nginx (2 replicas) |", "|---|---|---|",
  f"| losses | {', '.join(f'{x:.6f}' for x in direct['losses'])} | {', '.join(f'{x:.6f}' for x in via['losses'])} |",
  f"| time per step | {direct['step']:.2f} s | {via['step']:.2f} s |",
  f"| retries | {direct['retries']} | {via['retries']} |", "",
  f"Losses identical: **{'yes' if same else 'NO'}**. Products served by replica 1 / replica 2 after both clients: {r1} / {r2} (replica 1 also served the direct client).", "",
  f"Load through nginx, 2 clients × 20 s: {load['requests']} products, {load['errors']} errors, {load['requestsPerSecond']:.2f} products/s, "
  f"latency p50 {load['p50']*1000:.0f} ms, p99 {load['p99']*1000:.0f} ms; replica 1 / 2 served {r1b - r1} / {r2b - r2} of them."]
text = "\n".join(lines) + "\n"
print(text)
import os; os.makedirs("outputs", exist_ok=True); open("outputs/nginx_replicas.md", "w").write(text)
sys.exit(0 if same and r2 > 0 and load["errors"] == 0 else 1)
PY
