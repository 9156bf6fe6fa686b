#!/usr/bin/env bash
# bench/instructions.sh — user-space instructions per proxied request, counted by callgrind.
#
# wrk figures on a shared 2-core box move with whatever else runs; instruction counts do not:
# the same build, inputs and environment give the same count to a fraction of a percent, even
# with the other core loaded. So this is the figure to compare optimisations by. It counts user
# space only (syscalls are the kernel's and cost the same for every proxy here).
#
#   bash bench/instructions.sh                 # every row below, then the ratios against Tunnel v2's targets
#   N=5000 bash bench/instructions.sh          # requests counted per row (default 3000)
#   ROWS="nginx decorator" bash bench/instructions.sh
#
# Rows (ROWS, default all, in this order):
#   nginx               nginx as a reverse proxy, 1 worker, upstream keep-alive
#   round1              `decorator run` at BASELINE (default ba5ed83, the end of round 1), from a
#                       `git archive` of that commit (bench/baseline.sh) on the same venv
#   decorator           `decorator run`, no rules (the compiled build when there is one)
#   decorator+rules     the same with bench/rules/card.yaml
#   decorator+100rules  the same with card.yaml and nomatch100.yaml
#   decorator+api       the same with card.yaml and api.yaml (a ratelimit and a cors rule on /api/**,
#                       the requests are for /)
#   decorator-pure+rules, decorator-pure+api   decorator+rules and decorator+api with DECORATOR_PURE_PYTHON=1
#   decorator-pure      `decorator run` with DECORATOR_PURE_PYTHON=1 (pure Python even when compiled)
#   decorator+tracing   `decorator run` with OTLP tracing on and every request sampled (always_on; spans
#                       exported in batches to the upstream nginx, which answers /v1/traces 200)
#   decorator-pure+tracing  the same in pure Python
# then the ratios (exit 1 when a target fails or a row it needs is missing):
#   decorator / nginx <= 3.5, decorator+rules / decorator <= 1.10, decorator-pure / round1 <= 1.05,
#   decorator+api / decorator <= 1.10 (issue 11), decorator / round1, decorator+100rules / decorator
#   decorator+tracing / decorator <= 1.15 (issue 13), and decorator-pure+api / decorator-pure,
#   decorator-pure+tracing / decorator-pure as information.
# PY (default .venv/bin/python) and DECORATOR_SRC (a source tree put on PYTHONPATH for every row but
# round1, e.g. a git worktree running pure Python) choose what is measured.
#
# Each row: the proxy runs under valgrind with instrumentation off; after 500 warm-up requests
# (10 keep-alive connections) instrumentation goes on for N requests, then off, and the count is
# divided by N. Upstream: nginx answering "hello world\n" on UP_PORT. Needs valgrind and nginx.
set -u
cd "$(dirname "$0")/.."
REPO=$PWD
N=${N:-3000}
ROWS=${ROWS:-nginx round1 decorator decorator+rules decorator+100rules decorator+api decorator-pure decorator-pure+api decorator+tracing}
. bench/baseline.sh
UP_PORT=${UP_PORT:-18287}
PX_PORT=${PX_PORT:-18280}
WORK=$(mktemp -d /tmp/decorator-instr.XXXXXX)
PY=${PY:-.venv/bin/python}
for t in valgrind callgrind_control nginx; do
  command -v "$t" >/dev/null || { echo "instructions.sh: $t not found (apt-get install -y valgrind nginx)" >&2; exit 2; }
done
[ -x "$PY" ] || { echo "instructions.sh: no .venv (run make test or make demo once)" >&2; exit 2; }

mkdir -p "$WORK/up/logs"
cat > "$WORK/up/nginx.conf" <<EOF
worker_processes 1; daemon off; master_process off; pid $WORK/up/nginx.pid; error_log $WORK/up/logs/error.log warn;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
  client_body_temp_path $WORK/up/b; proxy_temp_path $WORK/up/p; fastcgi_temp_path $WORK/up/f;
  uwsgi_temp_path $WORK/up/u; scgi_temp_path $WORK/up/s;
  server { listen 127.0.0.1:$UP_PORT; location = / { return 200 "hello world\n"; }
    location = /v1/traces { return 200; } location = /v1/metrics { return 200; } } }
EOF
mkdir -p "$WORK/px/logs"
cat > "$WORK/px/nginx.conf" <<EOF
worker_processes 1; daemon off; master_process off; pid $WORK/px/nginx.pid; error_log $WORK/px/logs/error.log warn;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
  client_body_temp_path $WORK/px/b; proxy_temp_path $WORK/px/p; fastcgi_temp_path $WORK/px/f;
  uwsgi_temp_path $WORK/px/u; scgi_temp_path $WORK/px/s;
  upstream up { server 127.0.0.1:$UP_PORT; keepalive 128; }
  server { listen 127.0.0.1:$PX_PORT;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
EOF
cat > "$WORK/client.py" <<'EOF'
import socket, sys
n, port = int(sys.argv[1]), int(sys.argv[2])
conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(10)]
req = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
done = 0
while done < n:
    for c in conns:
        c.sendall(req)
    for c in conns:
        buf = b""
        while True:
            buf += c.recv(65536)
            head, sep, rest = buf.partition(b"\r\n\r\n")
            if sep:
                cl = [ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")]
                if cl and len(rest) >= int(cl[0].split(b":")[1]):
                    break
    done += len(conns)
EOF

nginx -c "$WORK/up/nginx.conf" -p "$WORK/up/" >/dev/null 2>&1 &
UP=$!
trap 'kill $UP 2>/dev/null; wait 2>/dev/null' EXIT
wait_port() { for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.2; done; return 1; }
wait_port "$UP_PORT" || { echo "upstream nginx did not start" >&2; exit 1; }

# valgrind does not follow exec by default, so the environment is set before it, not by an `env`
# inside the measured command; the caller's settings (rules, pure mode, PYTHONPATH) are kept out.
row() {  # row LABEL [VAR=value ...] CMD...
  local label=$1 envs=(); shift
  while [[ "$1" =~ ^[A-Z_][A-Z0-9_]*= ]]; do envs+=("$1"); shift; done
  rm -f "$WORK"/cg.out*
  env -u RULES -u DASHBOARD -u MOTHERSHIP -u LOG_LEVEL -u DECORATOR_PURE_PYTHON -u PYTHONPATH \
    -u OTEL_EXPORTER_OTLP_ENDPOINT -u OTEL_EXPORTER_OTLP_TRACES_ENDPOINT -u OTEL_EXPORTER_OTLP_METRICS_ENDPOINT \
    -u OTEL_TRACES_SAMPLER -u OTEL_SDK_DISABLED "${envs[@]}" \
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/cg.out" "$@" >"$WORK/$label.log" 2>&1 &
  local pid=$!
  if ! wait_port "$PX_PORT"; then
    echo "$label: did not start"; cat "$WORK/$label.log" >&2; kill $pid; MISSING+=("$label"); return
  fi
  "$PY" "$WORK/client.py" 500 "$PX_PORT"
  callgrind_control -i on $pid >/dev/null 2>&1
  "$PY" "$WORK/client.py" "$N" "$PX_PORT"
  callgrind_control -i off $pid >/dev/null 2>&1
  callgrind_control -d $pid >/dev/null 2>&1
  sleep 1
  kill -TERM $pid; wait $pid 2>/dev/null
  local ir
  ir=$(grep -h "^summary:\|^totals:" "$WORK"/cg.out* | awk '{s+=$2} END{print s+0}')
  if [ "$ir" -le 0 ]; then  # no callgrind dump: a zero would pass every "<=" target
    echo "$label: no instruction count (see the log above)"; cat "$WORK/$label.log" >&2; MISSING+=("$label")
  else
    printf '%-22s %10d instructions/request\n' "$label" $((ir / N))
    IR[$label]=$((ir / N))
  fi
  for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$PX_PORT") 2>/dev/null || break; sleep 0.1; done
}

# -P: no working directory on sys.path, so which `decorator` is imported depends on PYTHONPATH only
# (the round1 row sets it; bench/baseline.sh says why).
DEC=("$PY" -P -m decorator run --port "$PX_PORT" --target "$UP_PORT" --admin-port 0)
SRC=(PYTHONPATH="${DECORATOR_SRC:-$REPO}")  # this tree's code, whichever tree the venv was installed from
want() { case " $ROWS " in *" $1 "*) return 0;; esac; return 1; }
declare -A IR=()
MISSING=()
CPU=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)
[ -n "$CPU" ] || CPU=$(sed -n 's/^model name[[:space:]]*: *//p' /proc/cpuinfo | head -1)
echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null) N=$N, user-space instructions (callgrind); cpu: ${CPU:-unknown}; round1 = $BASELINE"
want nginx && row nginx nginx -c "$WORK/px/nginx.conf" -p "$WORK/px/"
if want round1; then
  if R1=$(baseline_tree "$REPO") && baseline_check "$REPO/$PY" "$R1"; then
    row round1 PYTHONPATH="$R1" "${DEC[@]}"
  else
    echo "round1: not measured (see above)"; MISSING+=(round1)
  fi
fi
want decorator && row decorator "${SRC[@]}" "${DEC[@]}"
want decorator+rules && row decorator+rules "${SRC[@]}" "${DEC[@]}" --rules bench/rules/card.yaml
want decorator+100rules && row decorator+100rules "${SRC[@]}" "${DEC[@]}" --rules bench/rules/card.yaml bench/rules/nomatch100.yaml
want decorator+api && row decorator+api "${SRC[@]}" "${DEC[@]}" --rules bench/rules/card.yaml bench/rules/api.yaml
want decorator-pure && row decorator-pure "${SRC[@]}" DECORATOR_PURE_PYTHON=1 "${DEC[@]}"
want decorator-pure+rules && row decorator-pure+rules "${SRC[@]}" DECORATOR_PURE_PYTHON=1 "${DEC[@]}" \
  --rules bench/rules/card.yaml
want decorator-pure+api && row decorator-pure+api "${SRC[@]}" DECORATOR_PURE_PYTHON=1 "${DEC[@]}" \
  --rules bench/rules/card.yaml bench/rules/api.yaml
OTEL=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$UP_PORT" OTEL_TRACES_SAMPLER=always_on)
want decorator+tracing && row decorator+tracing "${SRC[@]}" "${OTEL[@]}" "${DEC[@]}"
want decorator-pure+tracing && row decorator-pure+tracing "${SRC[@]}" DECORATOR_PURE_PYTHON=1 "${OTEL[@]}" "${DEC[@]}"
rm -rf "$WORK"

# Ratios against Tunnel v2's targets. A target whose rows were not both measured is skipped when
# the rows were not asked for (ROWS), and fails when they were asked for but did not run.
echo
echo "# ratios (targets: Tunnel v2)"
FAIL=0
ratio() {  # ratio WHAT A B TARGET   (TARGET: "<= x" or "info")
  local what=$1 a=$2 b=$3 target=$4 r verdict
  if ! want "$a" || ! want "$b"; then return; fi
  if [ -z "${IR[$a]:-}" ] || [ -z "${IR[$b]:-}" ] || [ "${IR[$b]}" -le 0 ]; then
    printf '%-36s %-28s %-8s %s\n' "$what" "n/a (a row is missing)" "$target" FAIL; FAIL=1; return
  fi
  r=$(awk -v x="${IR[$a]}" -v y="${IR[$b]}" 'BEGIN{printf "%.3f", x/y}')
  case $target in
    "<= "*) if awk -v r="$r" -v t="${target#<= }" 'BEGIN{exit !(r <= t)}'; then verdict=PASS; else verdict=FAIL; FAIL=1; fi;;
    *) verdict=-;;
  esac
  printf '%-36s %-28s %-8s %s\n' "$what" "$r  (${IR[$a]} / ${IR[$b]})" "$target" "$verdict"
}
printf '%-36s %-28s %-8s %s\n' ratio value target result
ratio "decorator / nginx" decorator nginx "<= 3.5"
ratio "decorator+rules / decorator" decorator+rules decorator "<= 1.10"
ratio "decorator+100rules / decorator" decorator+100rules decorator info
ratio "decorator / round1" decorator round1 info
ratio "decorator-pure / round1" decorator-pure round1 "<= 1.05"
ratio "decorator+api / decorator" decorator+api decorator "<= 1.10"
ratio "decorator-pure+rules / decorator-pure" decorator-pure+rules decorator-pure info
ratio "decorator-pure+api / decorator-pure" decorator-pure+api decorator-pure info
ratio "decorator-pure+api / decorator-pure+rules" decorator-pure+api decorator-pure+rules info
ratio "decorator+tracing / decorator" decorator+tracing decorator "<= 1.15"
ratio "decorator-pure+tracing / decorator-pure" decorator-pure+tracing decorator-pure info
[ ${#MISSING[@]} -eq 0 ] || { echo "# rows that did not run: ${MISSING[*]}"; FAIL=1; }
exit $FAIL
