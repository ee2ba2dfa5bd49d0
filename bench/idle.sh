#!/usr/bin/env bash
# Idle keep-alive connections: the proxy's memory with 10,000 idle client connections
# open, and whether it still serves a fresh request while they are held and after they close.
#
#   bench/idle.sh              # 10,000 connections
#   COUNT=2000 bench/idle.sh   # fewer
#
# The proxy (release build) runs against the nginx upstream of bench/run.sh. bench/idle_conns.py
# opens the connections, each with one request answered first, then holds them silent.
# Environment: COUNT=10000, PARALLEL=200 (connections being opened at once), SETTLE=2 (seconds
# between the last open and the measurement), PROXY_BIN=path (skip the build), KEEP=1,
# RESULT_FILE=path (also write peak_kib=, fresh_ms= and served= lines there, for bench/run.sh).
# Exits non-zero if not every connection opened or a fresh request was not served.
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

COUNT=${COUNT:-10000}
PARALLEL=${PARALLEL:-200}
SETTLE=${SETTLE:-2}
[[ $COUNT =~ ^[1-9][0-9]{0,4}$ ]] || die "COUNT must be 1..99999, not '$COUNT'"
[[ $PARALLEL =~ ^[1-9][0-9]{0,3}$ ]] || die "PARALLEL must be 1..9999, not '$PARALLEL'"
[[ $SETTLE =~ ^[0-9]{1,2}$ ]] || die "SETTLE must be 0..99 seconds, not '$SETTLE'"

ensure_deps nginx wrk python3
build_proxy
# The proxy and the client each hold COUNT sockets (they inherit this limit).
raise_nofile $((COUNT + 1024))
make_workdir

start_upstream
start_proxy proxy-idle false
PROXY=127.0.0.1:$PROXY_PORT
check_token_appended "$PROXY" proxy

# fresh_request LABEL: one new connection, one request; records "status, time" in FRESH_LAST.
FRESH_FAILED=0
fresh_request() {
	local t0 t1 resp status
	t0=$(date +%s%N)
	resp=$(http_get "$PROXY" "$BENCH_PATH") || true
	t1=$(date +%s%N)
	status=$(head -n 1 <<<"$resp" | awk '{ print $2 }')
	FRESH_MS=$(((t1 - t0) / 1000000))
	FRESH_LAST="HTTP ${status:-none} in $FRESH_MS ms"
	if [[ $status != 200 || $resp != *'"errcode":0'* ]]; then
		FRESH_FAILED=1
		FRESH_LAST+=" — FAILED"
	fi
}

fds() { find "/proc/$PROXY_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }

rss_before=$(proc_kib "$PROXY_PID" VmRSS)
fds_before=$(fds)

log "opening $COUNT idle keep-alive connections to $PROXY"
python3 "$BENCH_DIR/idle_conns.py" --port "$PROXY_PORT" --count "$COUNT" --parallel "$PARALLEL" \
	--path "$BENCH_PATH" --open-timeout 180 --hold 600 >"$WORK/idle.out" 2>"$WORK/idle.err" &
PIDS+=($!)
CLIENT_PID=$!

# Bounded wait for the client's OPEN line (its own open timeout is 180 s).
for ((i = 0; i < 2000; i++)); do
	grep -q '^OPEN ' "$WORK/idle.out" && break
	kill -0 "$CLIENT_PID" 2>/dev/null || { cat "$WORK/idle.err" >&2; die "idle_conns.py exited early"; }
	kill -0 "$PROXY_PID" 2>/dev/null || die "the proxy died while connections were opening; see $WORK/proxy-idle.log"
	sleep 0.1
done
open_line=$(grep '^OPEN ' "$WORK/idle.out") || die "idle_conns.py did not open its connections in time"
[[ $open_line =~ open=([0-9]+)\ failed=([0-9]+)\ seconds=([0-9.]+) ]] || die "cannot read: $open_line"
opened=${BASH_REMATCH[1]} failed=${BASH_REMATCH[2]} open_s=${BASH_REMATCH[3]}
sed 's/^/[bench] /' "$WORK/idle.err" >&2

sleep "$SETTLE"
rss_open=$(proc_kib "$PROXY_PID" VmRSS)
hwm_open=$(proc_kib "$PROXY_PID" VmHWM)
fds_open=$(fds)
threads=$(proc_kib "$PROXY_PID" Threads)
fresh_request
fresh_held=$FRESH_LAST
fresh_held_ms=$FRESH_MS

kill -TERM "$CLIENT_PID"
for ((i = 0; i < 100; i++)); do
	kill -0 "$CLIENT_PID" 2>/dev/null || break
	sleep 0.1
done
done_line=$(grep '^DONE ' "$WORK/idle.out") || done_line="DONE (client did not report)"
[[ $done_line =~ alive=([0-9]+) ]] && alive=${BASH_REMATCH[1]} || alive="?"

sleep 1
rss_after=$(proc_kib "$PROXY_PID" VmRSS)
fds_after=$(fds)
fresh_request
fresh_after=$FRESH_LAST
kill -0 "$PROXY_PID" 2>/dev/null || die "the proxy died; see $WORK/proxy-idle.log"

echo "### wechat-token-proxy with $COUNT idle keep-alive client connections"
echo
echo "- $(date -u '+%Y-%m-%d %H:%M UTC'), $("$PROXY_BIN" --version 2>/dev/null | head -n 1)"
machine_info
echo
echo "| measure | value |"
echo "|---|---:|"
echo "| connections opened (one request each, then idle) | $opened of $COUNT in ${open_s} s, $failed failed |"
echo "| proxy RSS before | $(kib_to_mib "$rss_before") MiB |"
echo "| proxy RSS with them open (${SETTLE} s after the last) | $(kib_to_mib "$rss_open") MiB |"
echo "| proxy peak RSS (VmHWM) | $(kib_to_mib "$hwm_open") MiB |"
echo "| proxy file descriptors before / open / after | $fds_before / $fds_open / $fds_after |"
echo "| proxy threads | $threads |"
echo "| still open when released (not closed by the proxy) | $alive |"
echo "| fresh request while they are held | $fresh_held |"
echo "| proxy RSS after they closed | $(kib_to_mib "$rss_after") MiB |"
echo "| fresh request after they closed | $fresh_after |"
echo
echo "Target: peak RSS ≤ 64 MiB with 10,000 idle connections, and a fresh request served at once."
if [[ -n ${RESULT_FILE:-} ]]; then
	printf 'peak_kib=%s\nfresh_ms=%s\nserved=%s\n' "$hwm_open" "$fresh_held_ms" \
		$((opened == COUNT && FRESH_FAILED == 0 ? 1 : 0)) >"$RESULT_FILE"
fi

((opened == COUNT)) || die "only $opened of $COUNT connections opened"
((FRESH_FAILED == 0)) || die "a fresh request was not served"
