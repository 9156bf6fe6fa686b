#!/usr/bin/env bash
# bench/run.sh — decorator against nginx, haproxy, node-ambassador and the bare upstream, in one run,
# then the ratios against the targets of Tunnel v2 (the tunnel against nginx and round 1), issue 3
# (memory) and issue 4 (rules), and the RSS soak.
#
#   bash bench/run.sh                  # or: make bench
#   DURATION=3 REPEATS=1 SOAK=0 bash bench/run.sh   # quick look (figures too noisy to quote)
#
# The measuring is done by the shared peers.sh (nginx upstream answering "hello world\n", wrk -c50,
# proxy pinned to its own core); this script adds these rows to the same run:
#   round1               `decorator run` at BASELINE (ba5ed83, the end of round 1), a `git archive` of
#                        that commit run on the same venv (bench/baseline.sh)
#   decorator            no rules (the compiled build when there is one)
#   decorator-pure       the same with DECORATOR_PURE_PYTHON=1 (not in the default ROWS)
#   decorator+rules      the three design-card rules (bench/rules/card.yaml)
#   decorator+100rules   the same plus 100 rules that never match (bench/rules/nomatch100.yaml)
#   uvloop-pump          bench/floor_pump.py: CPython + uvloop copying bytes with no HTTP work (the floor)
# then prints bench/ratios.py's table and, unless SOAK=0, bench/rss_soak.py's idle/flat RSS check.
#
# Environment (defaults):
#   PEERS=<repo>/../shared/bench/peers.sh    the shared benchmark script
#   ROWS="direct nginx haproxy node-ambassador uvloop-pump round1 decorator decorator+rules decorator+100rules"
#         (add decorator-pure; add mitmproxy proxy.py node-amb+telemetry for those rows, with SKIP_INSTALL=0)
#   BASELINE=ba5ed83                 the commit the round1 row runs (BASELINE_TREE=<dir>: an exported tree)
#   DURATION=10 REPEATS=3 CONNS=50   forwarded to peers.sh (as are PX_PORT=18080 UP_PORT=18087,
#         WRK_CPUS/UP_CPUS/PROXY_CPUS with peers.sh's placement: proxy alone on CPU 1)
#   NA_MIRROR=/tmp/na                node-ambassador tree or git dir (see the hint printed if missing)
#   SKIP_INSTALL=1                   peers.sh's apt/pip installs off (0 lets it install what is missing)
#   SOAK=1  SOAK_REQUESTS=1000000    run bench/rss_soak.py after the table
#   RULES_ROUNDS=3                   interleaved rounds of the three decorator rows for the rules ratios (0: off)
#   OUT=<peers workdir>/run          where the table, ratios and soak results are written
#
# Exit status: 0 when every row ran and every target passed, 1 otherwise, 2 when peers.sh or the
# project's venv is missing.
set -u
export LC_ALL=C
# Ctrl-C: peers.sh and rss_soak.py clean up their own processes; then stop here, not at the next step.
trap 'exit 130' INT TERM

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
PEERS=${PEERS:-$HERE/../../shared/bench/peers.sh}
DECORATOR=${DECORATOR:-$REPO/.venv/bin/decorator}
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
ROWS=${ROWS:-direct nginx haproxy node-ambassador uvloop-pump round1 decorator decorator+rules decorator+100rules}
SOAK=${SOAK:-1}
RULES_ROUNDS=${RULES_ROUNDS:-3}
SOAK_REQUESTS=${SOAK_REQUESTS:-1000000}
export DURATION=${DURATION:-10} REPEATS=${REPEATS:-3} CONNS=${CONNS:-50}
export PX_PORT=${PX_PORT:-18080} UP_PORT=${UP_PORT:-18087}
export NA_MIRROR=${NA_MIRROR:-/tmp/na}
export SKIP_INSTALL=${SKIP_INSTALL:-1}
export WORKDIR=${WORKDIR:-$(mktemp -d /tmp/decorator-bench.XXXXXX)}
OUT=${OUT:-$WORKDIR/run}
mkdir -p "$OUT"

say() { echo "[bench] $*" >&2; }
. "$HERE/baseline.sh"
# The targets hold "on every machine", so every table names the one it ran on.
CPU=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)
[ -n "$CPU" ] || CPU=$(sed -n 's/^model name[[:space:]]*: *//p' /proc/cpuinfo | head -1)
CPU=${CPU:-unknown}

if [ ! -f "$PEERS" ]; then
  say "peers.sh not found at $PEERS"
  say "it lives in the shared directory beside the repository (../shared/bench/peers.sh); set PEERS=/path/to/peers.sh"
  exit 2
fi
if [ ! -x "$DECORATOR" ] || [ ! -x "$PYTHON" ]; then
  say "no project venv at $REPO/.venv (run 'make test' or 'make demo' once, or set DECORATOR=/path/to/decorator)"
  exit 2
fi
case " $ROWS " in *" node-amb"*)
  if [ ! -e "$NA_MIRROR/index.js" ] && [ ! -d "$NA_MIRROR/objects" ] && [ ! -d "$NA_MIRROR/.git" ]; then
    say "node-ambassador not found at NA_MIRROR=$NA_MIRROR: its row will read MISSING. Get it with"
    say "  git clone https://github.com/cesarvr/node-ambassador $NA_MIRROR"
    say "or, from a local mirror: mkdir -p $NA_MIRROR && git --git-dir=MIRROR archive HEAD | tar -x -C $NA_MIRROR"
  fi;;
esac

q() { printf '%q' "$1"; }
CARD=$(q "$REPO/bench/rules/card.yaml")
NOMATCH=$(q "$REPO/bench/rules/nomatch100.yaml")
# peers.sh passes PORT and TARGET_PORT in the environment, which `decorator run` reads; settings
# the caller may have exported for other purposes (rules, a dashboard, debug logs, pure mode, a
# PYTHONPATH that would swap the code) must not leak in.
CLEAN="env -u RULES -u DASHBOARD -u MOTHERSHIP -u LOG_LEVEL -u DECORATOR_PURE_PYTHON -u PYTHONPATH"
RUN="$CLEAN $(q "$DECORATOR") run --admin-port 0"
# The 100 non-matching rules come first so that any rule scanned in order is paid for on every request.
DEC_ROWS=()
for row in $ROWS; do
  case $row in
    decorator)          DEC_ROWS+=("decorator=$RUN");;
    decorator-pure)     DEC_ROWS+=("decorator-pure=$CLEAN DECORATOR_PURE_PYTHON=1 $(q "$DECORATOR") run --admin-port 0");;
    round1)
      # python -P: neither the working directory nor the editable install may shadow the baseline.
      if R1=$(baseline_tree "$REPO") && baseline_check "$PYTHON" "$R1"; then
        DEC_ROWS+=("round1=$CLEAN PYTHONPATH=$(q "$R1") $(q "$PYTHON") -P -m decorator run --admin-port 0")
      else
        say "WARNING: the round1 row ($BASELINE) cannot run; its ratios will read n/a"
      fi;;
    decorator+rules)    DEC_ROWS+=("decorator+rules=$RUN --rules $CARD");;
    decorator+100rules) DEC_ROWS+=("decorator+100rules=$RUN --rules $NOMATCH $CARD");;
    uvloop-pump)        DEC_ROWS+=("uvloop-pump=$(q "$PYTHON") $(q "$HERE/floor_pump.py")");;
  esac
done
# Fail early, with decorator's own message, when the rule files do not load.
case " $ROWS " in *" decorator+rules "*|*" decorator+100rules "*) want_rules=1;; *) want_rules=0;; esac
if [ "$want_rules" = 1 ] && ! "$DECORATOR" validate "$REPO/bench/rules/nomatch100.yaml" "$REPO/bench/rules/card.yaml" >"$OUT/validate.txt" 2>&1; then
  if grep -q "rules.commands\|No module named" "$OUT/validate.txt"; then
    say "note: 'decorator validate' is not available yet; the rules rows will show whether the rules load"
  else
    say "bench rules do not validate:"; cat "$OUT/validate.txt" >&2
  fi
fi

# Until `decorator run` applies --rules, the rules rows would silently measure the rule-less proxy:
# check once, with a stdlib upstream that answers 404, that the friendly 404 page comes back.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
rules_active() {
  local up px upid dpid i body=""
  up=$(free_port); px=$(free_port)
  mkdir -p "$OUT/preflight"
  python3 -m http.server --bind 127.0.0.1 --directory "$OUT/preflight" "$up" >"$OUT/preflight/up.log" 2>&1 &
  upid=$!
  "$DECORATOR" run --port "$px" --target "$up" --admin-port 0 --rules "$REPO/bench/rules/card.yaml" \
    >"$OUT/preflight/decorator.log" 2>&1 &
  dpid=$!
  for i in $(seq 50); do
    body=$(curl -s -m 2 "http://127.0.0.1:$px/missing" 2>/dev/null) && [ -n "$body" ] && break
    kill -0 "$dpid" 2>/dev/null || break
    sleep 0.1
  done
  kill -TERM "$dpid" "$upid" 2>/dev/null; wait "$dpid" "$upid" 2>/dev/null
  case $body in *"Sorry, that page is not here"*) return 0;; esac
  return 1
}
RATIO_FLAGS=()
if [ "$want_rules" = 1 ] && ! rules_active; then
  say "WARNING: 'decorator run --rules bench/rules/card.yaml' did not serve the friendly 404 page:"
  say "  the rules rows measure a proxy WITHOUT active rules; their ratios are reported as n/a"
  say "  (log: $OUT/preflight/decorator.log)"
  RATIO_FLAGS+=(--rules-inactive)
fi

say "peers.sh: $PEERS"
say "rows: $ROWS; ${DURATION}s x $REPEATS, -c$CONNS; ports proxy=$PX_PORT upstream=$UP_PORT; workdir $WORKDIR"
say "cpu: $CPU; round1 = $BASELINE"
ONLY=$ROWS bash "$PEERS" "${DEC_ROWS[@]}" | tee "$OUT/peers.txt"
peers_rc=${PIPESTATUS[0]}
if [ "$peers_rc" = 2 ] || [ "$peers_rc" = 3 ]; then
  say "peers.sh could not set up (exit $peers_rc); see above"
  exit 2
fi

# The rules targets compare rows that ran a minute or more apart, and a shared VM drifts by ±10% in
# that time. So the three decorator rows also run back to back in RULES_ROUNDS short rounds; the
# verdict is the median of the per-round ratios (ratios.py --round). The order rotates per round.
round_args=()
RR_ROWS=()
for spec in "${DEC_ROWS[@]}"; do case ${spec%%=*} in decorator|decorator+rules|decorator+100rules) RR_ROWS+=("$spec");; esac; done
if [ "${RULES_ROUNDS}" -gt 0 ] && [ "${#RR_ROWS[@]}" -ge 2 ]; then
  mkdir -p "$OUT/rounds"
  n=${#RR_ROWS[@]}
  for r in $(seq "$RULES_ROUNDS"); do
    # Each round starts with a different row, so that no row always runs last (drift shows there).
    order=()
    for i in $(seq 0 $((n - 1))); do order+=("${RR_ROWS[$(( (i + r - 1) % n ))]}"); done
    say "rules round $r/$RULES_ROUNDS: decorator rows back to back (REPEATS=1), first: ${order[0]%%=*}"
    REPEATS=1 ONLY="decorator decorator+rules decorator+100rules" bash "$PEERS" "${order[@]}" >"$OUT/rounds/peers.$r.txt" 2>&1
    round_args+=(--round "$OUT/rounds/peers.$r.txt")
  done
fi

soak_args=()
if [ "$SOAK" = 1 ]; then
  say "RSS soak: $SOAK_REQUESTS requests through 'decorator run' (bench/rss_soak.py)"
  "$PYTHON" "$HERE/rss_soak.py" --requests "$SOAK_REQUESTS" --json "$OUT/soak.json" | tee "$OUT/soak.txt"
  soak_args=(--soak "$OUT/soak.json")
fi

echo
HEADER="# ratios ($(date -u +%FT%TZ), $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null), cpu: $CPU, ${DURATION}s x $REPEATS, -c$CONNS, proxy cpus ${PROXY_CPUS:-1}, round1 = $BASELINE)"
echo "$HEADER"
python3 "$HERE/ratios.py" "$OUT/peers.txt" "${soak_args[@]}" "${round_args[@]}" "${RATIO_FLAGS[@]}" | tee "$OUT/ratios.txt"
ratios_rc=${PIPESTATUS[0]}
{ echo "$HEADER"; echo
  python3 "$HERE/ratios.py" "$OUT/peers.txt" "${soak_args[@]}" "${round_args[@]}" "${RATIO_FLAGS[@]}" --markdown; } >"$OUT/ratios.md"
say "results kept in $OUT (peers.txt, ratios.txt, ratios.md$([ "$SOAK" = 1 ] && echo ", soak.txt, soak.json"))"

[ "$peers_rc" = 0 ] && [ "$ratios_rc" = 0 ] && exit 0
exit 1
