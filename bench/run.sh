#!/usr/bin/env bash
# wechat-token-proxy against nginx doing the simpler job, on this machine, in one run, and
# every figure of the project's performance targets with met / not met.
#
#   bench/run.sh                      # full run: 3 rounds x 4 concurrencies x 3 series x 4 s,
#                                     # the memory run and the idle probe (~8 min)
#   DURATION=2s ROUNDS=1 COUNT=2000 bench/run.sh # smoke run
#
# Throughput series, run interleaved (A B C, round after round) so machine drift hits all alike:
#   A      wrk -> upstream nginx                      (the ceiling)
#   B      wrk -> wechat-token-proxy -> upstream      (access_log = false)
#   C      wrk -> nginx proxy_pass + fixed token -> upstream (access_log off, keepalive 64)
#   B-log  as B, access_log = true, stderr to a file
#   B0     as B, but BASELINE_BIN (an earlier build): before and after a change in one run
#   C-log  as C, nginx access_log to a file
# B-log and C-log run only when ONLY names them.
# The upstream is nginx (one worker, access_log off) answering a fixed ~100-byte WeChat JSON body,
# and a fixed token at /cgi-bin/stable_token so the proxy's real token path runs.
#
# Then the memory run, on a proxy of its own started fresh: its RSS after a short warm-up (the
# baseline), its peak RSS (VmHWM) during MEM_CONNS busy connections each (default 1000, then the
# 5000 burst), its RSS 10 s after the burst, the upstream connections it opened (nginx's
# stub_status accepts) and the most it held at once (ss, sampled). Then bench/idle.sh (COUNT idle
# keep-alive connections). The last table holds every target with met / not met.
#
# Environment:
#   ROUNDS=3         rounds; the table shows the median over rounds (peak RSS: the maximum)
#   DURATION=4s      wrk -d per run (the memory runs too)
#   CONNS="8 64 256 1024"   wrk -c values, one series each
#   ONLY=A,B,C       subset of series (A,C need no proxy build); add B-log,C-log for access logs
#   MEMORY=1         0: skip the memory run and the idle probe
#   MEM_CONNS="1000 5000"   the memory run's concurrencies; the last is the burst
#   COUNT=10000      idle keep-alive connections for the idle probe
#   PROXY_BIN=path   use this binary instead of running cargo build --release
#   BASELINE_BIN=path  the binary series B0 runs, e.g. ONLY=B0,B CONNS="8 64" MEMORY=0
#   KEEP=1           keep the work directory (configs, logs, raw wrk output)
#   BENCH_RUST_LOG=info  RUST_LOG for the proxy
# The table goes to stdout, progress to stderr: bench/run.sh > table.md
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-4s}
CONNS=${CONNS:-8 64 256 1024}
ONLY=${ONLY:-A,B,C}
MEMORY=${MEMORY:-1}
MEM_CONNS=${MEM_CONNS:-1000 5000}
COUNT=${COUNT:-10000}
THREADS=1
ALL_SERIES=(A B0 B C B-log C-log)

[[ $ROUNDS =~ ^[1-9][0-9]?$ ]] || die "ROUNDS must be 1..99, not '$ROUNDS'"
[[ $DURATION =~ ^([1-9][0-9]*)([smh]?)$ ]] || die "DURATION must look like 10s, 2s or 1m, not '$DURATION'"
case ${BASH_REMATCH[2]} in
m) DURATION_S=$((BASH_REMATCH[1] * 60)) ;;
h) DURATION_S=$((BASH_REMATCH[1] * 3600)) ;;
*) DURATION_S=${BASH_REMATCH[1]} ;;
esac
for c in $CONNS $MEM_CONNS; do [[ $c =~ ^[1-9][0-9]{0,4}$ ]] || die "CONNS and MEM_CONNS must be numbers, not '$CONNS' / '$MEM_CONNS'"; done
[[ $MEMORY == [01] ]] || die "MEMORY must be 0 or 1, not '$MEMORY'"
SERIES=()
for s in "${ALL_SERIES[@]}"; do [[ ",$ONLY," == *",$s,"* ]] && SERIES+=("$s"); done
for s in ${ONLY//,/ }; do [[ " ${ALL_SERIES[*]} " == *" $s "* ]] || die "ONLY: unknown series '$s' (known: ${ALL_SERIES[*]})"; done
((${#SERIES[@]})) || die "ONLY selects no series"
want() { [[ " ${SERIES[*]} " == *" $1 "* ]]; }

ensure_deps nginx wrk python3
LOAD_START=$(load_avg)
if want B || want B-log || ((MEMORY)); then build_proxy; fi
max_c=0
for c in $CONNS; do ((c > max_c)) && max_c=$c; done
# Each process holds its own sockets: wrk and the proxy one per client connection, the proxy
# and nginx one per upstream connection too.
need=$((max_c * 4 + 256))
if ((MEMORY)); then for c in $MEM_CONNS $COUNT; do ((c + 1024 > need)) && need=$((c + 1024)); done; fi
raise_nofile "$need"
make_workdir
CLK_TCK=$(getconf CLK_TCK)

declare -A PORT=() PID=() LOGF=()

start_upstream
PORT[A]=$UPSTREAM_PORT

if want C || want C-log; then
	start_nginx_proxy
	PORT[C]=$NGINX_PROXY_PORT
	PORT[C-log]=$NGINX_PROXY_LOG_PORT
	PID[C]=$NGINX_PROXY_PID
	PID[C-log]=$NGINX_PROXY_PID
	LOGF[C-log]=$WORK/nginx-proxy-access.log
fi

if want B; then
	start_proxy proxy-b false
	PORT[B]=$PROXY_PORT
	PID[B]=$PROXY_PID
fi
if want B0; then
	[[ -x ${BASELINE_BIN:-} ]] || die "series B0 needs BASELINE_BIN, an executable (an earlier build of the proxy)"
	after=$PROXY_BIN
	PROXY_BIN=$BASELINE_BIN
	start_proxy proxy-b0 false
	PROXY_BIN=$after
	PORT[B0]=$PROXY_PORT
	PID[B0]=$PROXY_PID
fi
if want B-log; then
	start_proxy proxy-b-log true
	PORT[B-log]=$PROXY_PORT
	PID[B-log]=$PROXY_PID
	LOGF[B-log]=$WORK/proxy-b-log.log
fi

for s in "${SERIES[@]}"; do
	[[ $s == A ]] || check_token_appended "127.0.0.1:${PORT[$s]}" "series $s"
done

url() { echo "http://127.0.0.1:${PORT[$1]}$BENCH_PATH"; }

# run_wrk SERIES CONNS SECONDS OUTFILE
run_wrk() {
	timeout $(($3 + 30)) wrk -t"$THREADS" -c"$2" -d"$3s" --latency "$(url "$1")" >"$4" 2>&1 ||
		die "wrk failed for series $1 at -c$2: $(tail -n 5 "$4")"
}

# parse_wrk FILE: "req/s p50_ms p99_ms requests errors" (errors: socket errors + non-2xx/3xx).
parse_wrk() {
	awk '
		function ms(v, n) {
			n = v + 0
			if (v ~ /us$/) return n / 1000
			if (v ~ /ms$/) return n
			if (v ~ /m$/) return n * 60000
			if (v ~ /s$/) return n * 1000
			return n
		}
		$1 == "50%" { p50 = ms($2) }
		$1 == "99%" { p99 = ms($2) }
		/ requests in / { req = $1 }
		/^Requests\/sec:/ { rps = $2 }
		/Non-2xx or 3xx responses:/ { err += $NF }
		/Socket errors:/ { err += $4 + $6 + $8 + $10 }
		END {
			if (rps == "" || p99 == "") exit 1
			printf "%.0f %.3f %.3f %d %d\n", rps, p50, p99, req, err
		}' "$1"
}

# Warm-up (not recorded): connection pools, page cache, CPU frequency.
for s in "${SERIES[@]}"; do
	run_wrk "$s" "$max_c" 2 "$WORK/warmup-$s.txt"
	[[ -z ${LOGF[$s]:-} ]] || : >"${LOGF[$s]}"
done

RESULTS=$WORK/results.tsv
: >"$RESULTS"
log "$ROUNDS round(s) x c=[$CONNS] x ${SERIES[*]}, ${DURATION_S}s each"
for ((round = 1; round <= ROUNDS; round++)); do
	for c in $CONNS; do
		for s in "${SERIES[@]}"; do
			out=$WORK/wrk-$s-c$c-r$round.txt
			pid=${PID[$s]:-}
			# Peak RSS per run: reset the high-water mark to the current RSS (Linux >= 4.0).
			if [[ $s == B* ]]; then echo 5 >"/proc/$pid/clear_refs" 2>/dev/null || true; fi
			t0=0
			[[ -z $pid ]] || t0=$(tree_ticks "$pid")
			run_wrk "$s" "$c" "$DURATION_S" "$out"
			t1=0
			[[ -z $pid ]] || t1=$(tree_ticks "$pid")
			read -r rps p50 p99 req err < <(parse_wrk "$out") || die "cannot parse wrk output $out"
			rss=- cpu=- note=""
			if [[ $s == B* ]]; then
				kill -0 "$pid" 2>/dev/null || die "proxy for $s died; see $WORK"
				rss=$(kib_to_mib "$(proc_kib "$pid" VmHWM)")
				note+=" peak RSS ${rss} MiB"
			fi
			if [[ -n $pid ]] && ((req > 0)); then
				cpu=$(awk -v t=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$req" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
				note+=" cpu ${cpu} us/req"
			fi
			if [[ -n ${LOGF[$s]:-} ]]; then
				note+=" log $(wc -l <"${LOGF[$s]}") lines"
				: >"${LOGF[$s]}" # logs are opened O_APPEND: truncating keeps the disk small
			fi
			((err == 0)) || note+=" ERRORS $err"
			printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$s" "$c" "$round" "$rps" "$p50" "$p99" "$rss" "$cpu" "$err" >>"$RESULTS"
			log "round $round/$ROUNDS c$c $s: $rps req/s p50 ${p50} ms p99 ${p99} ms$note"
			sleep 1
		done
	done
done

# The memory run: a proxy of its own, started fresh, so its baseline is a new pod's.
declare -A MEM_HWM=()
if ((MEMORY)); then
	# The throughput series' proxies and nginx stay idle from here on; only this one is loaded.
	start_proxy proxy-mem false
	MEM_PID=$PROXY_PID
	PORT[M]=$PROXY_PORT
	run_wrk M 8 1 "$WORK/mem-warmup.txt"
	sleep 2
	mem_base=$(proc_kib "$MEM_PID" VmRSS)
	accepts0=$(upstream_accepts)
	up_max=0
	mem_err=0
	for c in $MEM_CONNS; do
		echo 5 >"/proc/$MEM_PID/clear_refs" 2>/dev/null || true
		out=$WORK/wrk-mem-c$c.txt
		run_wrk M "$c" "$DURATION_S" "$out" &
		wrk_pid=$!
		# The most upstream connections the proxy holds at once, sampled while wrk runs.
		while kill -0 "$wrk_pid" 2>/dev/null; do
			n=$(upstream_conns_of "$MEM_PID")
			((n > up_max)) && up_max=$n
			sleep 0.2
		done
		wait "$wrk_pid" || die "wrk failed in the memory run at -c$c"
		read -r rps _ p99 _ err < <(parse_wrk "$out") || die "cannot parse wrk output $out"
		mem_err=$((mem_err + err))
		MEM_HWM[$c]=$(proc_kib "$MEM_PID" VmHWM)
		log "memory c$c: $rps req/s p99 ${p99} ms, peak RSS $(kib_to_mib "${MEM_HWM[$c]}") MiB, errors $err"
	done
	accepts1=$(upstream_accepts)
	up_opened=$((accepts1 - accepts0))
	log "burst over; waiting 10 s"
	sleep 10
	mem_after=$(proc_kib "$MEM_PID" VmRSS)
	up_after=$(upstream_conns_of "$MEM_PID")
	kill -0 "$MEM_PID" 2>/dev/null || die "the memory run's proxy died; see $WORK/proxy-mem.log"
	mem_cap=$(grep -o 'max_upstream_connections=[0-9]*' "$WORK/proxy-mem.log" | head -n 1 | cut -d= -f2 || true)

	log "bench/idle.sh with COUNT=$COUNT"
	IDLE_OUT=$WORK/idle.md
	PROXY_BIN=$PROXY_BIN COUNT=$COUNT RESULT_FILE=$WORK/idle.result "$BENCH_DIR/idle.sh" >"$IDLE_OUT" ||
		log "bench/idle.sh failed; see its table below"
fi

# The report: medians over rounds, ratios of B to C (and B-log to C-log) at each concurrency.
commit=$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo "no commit")
if [[ -n $(git -C "$REPO_DIR" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]]; then commit+=" + local changes"; fi
echo "### wechat-token-proxy vs nginx as a token-adding proxy"
echo
echo "- $(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit${PROXY_BIN:+, $("$PROXY_BIN" --version 2>/dev/null | head -n 1)}"
machine_info
echo "- wrk -t$THREADS -c{${CONNS// /,}} -d${DURATION_S}s --latency, GET $BENCH_PATH; $ROUNDS interleaved round(s); each cell is the median over rounds"
echo "- proxy peak RSS: VmHWM of wechat-token-proxy during a run (reset before each), the highest over rounds"
echo "- proxy-tier CPU: user+system time of wechat-token-proxy, or of nginx master+worker, per request"
echo "- B-log and C-log write their access logs to a file; all other series log no requests"
echo "- load average (1, 5, 15 min) at start: $LOAD_START; at the end: $(load_avg)"
echo
awk -F'\t' -v series="${SERIES[*]}" -v conns="$CONNS" '
	function med(arr, k,    m, i, j, t, a) {
		m = n[k]
		for (i = 1; i <= m; i++) a[i] = arr[k, i] + 0
		for (i = 2; i <= m; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
		return (m % 2) ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
	}
	{
		k = $1 SUBSEP $2; i = ++n[k]
		rps[k, i] = $4; p99[k, i] = $6; p50[k, i] = $5; cpu[k, i] = $8
		if ($7 != "-" && (!(k in rss) || $7 + 0 > rss[k] + 0)) rss[k] = $7
		hascpu[k] = ($8 != "-"); err[k] += $9
	}
	function ratio(a, b) { return b > 0 ? a / b : 0 }
	END {
		label["A"] = "A: nginx direct (ceiling)"
		label["B"] = "B: wechat-token-proxy"
		label["B0"] = "B0: wechat-token-proxy, BASELINE_BIN"
		label["C"] = "C: nginx proxy_pass + fixed token"
		label["B-log"] = "B-log: wechat-token-proxy, access log on"
		label["C-log"] = "C-log: nginx proxy, access log on"
		ref["B"] = "C"; ref["B-log"] = "C-log"
		print "| series | conns | req/s | p50 ms | p99 ms | req/s vs C | p99 vs C | proxy peak RSS MiB | proxy-tier CPU µs/req | errors |"
		print "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
		ns = split(series, S, " "); nc = split(conns, C, " ")
		for (ci = 1; ci <= nc; ci++) for (si = 1; si <= ns; si++) {
			s = S[si]; c = C[ci]; k = s SUBSEP c
			if (!(k in n)) continue
			r = med(rps, k); q99 = med(p99, k)
			printf "%s\t%s\t%s\t%s\n", s, c, r, q99 > medians
			rr = "—"; rp = "—"
			if (s in ref && ((ref[s] SUBSEP c) in n)) {
				rk = ref[s] SUBSEP c
				rr = sprintf("%.2f", r / med(rps, rk))
				rp = sprintf("%.2f", q99 / med(p99, rk))
			}
			printf "| %s | %s | %.0f | %.3f | %.3f | %s | %s | %s | %s | %d |\n", label[s], c, r, med(p50, k), q99, rr, rp,
				(k in rss) ? rss[k] : "—", hascpu[k] ? sprintf("%.1f", med(cpu, k)) : "—", err[k]
		}
	}' medians="$WORK/medians.tsv" "$RESULTS"
echo

if want B0 && want B; then
	echo "### This build (B) against BASELINE_BIN (B0), same run, interleaved"
	echo
	echo "| conns | B0 req/s | B req/s | B / B0 | B0 p99 ms | B p99 ms |"
	echo "|---:|---:|---:|---:|---:|---:|"
	awk -F'\t' '{ r[$1, $2] = $3; p[$1, $2] = $4; if (!($2 in seen)) { seen[$2] = 1; order[++n] = $2 } }
		END { for (i = 1; i <= n; i++) { c = order[i]; if ((("B0", c) in r) && (("B", c) in r))
			printf "| %s | %.0f | %.0f | %.3f | %.3f | %.3f |\n", c, r["B0", c], r["B", c], r["B", c] / r["B0", c], p["B0", c], p["B", c] } }' "$WORK/medians.tsv"
	echo
fi

if ((MEMORY)); then
	echo "### Memory and upstream connections (a fresh proxy, wrk -t1 -d${DURATION_S}s per level)"
	echo
	echo "| measure | value |"
	echo "|---|---:|"
	echo "| RSS after warm-up (the baseline) | $(kib_to_mib "$mem_base") MiB |"
	for c in $MEM_CONNS; do echo "| peak RSS at $c busy connections | $(kib_to_mib "${MEM_HWM[$c]}") MiB |"; done
	echo "| RSS 10 s after the last burst | $(kib_to_mib "$mem_after") MiB |"
	echo "| upstream connections opened during the memory runs | $up_opened |"
	echo "| most upstream connections held at once (sampled) | $up_max (cap ${mem_cap:-unknown}) |"
	echo "| upstream connections still open 10 s after the burst | $up_after |"
	echo "| errors (socket errors + non-2xx) in the memory runs | $mem_err |"
	echo
	sed -n '/^| measure/,/^$/p' "$IDLE_OUT" | sed "1i ### bench/idle.sh: $COUNT idle keep-alive client connections\n"
	echo
fi

# Every target, from the figures above.
echo "### Targets"
echo
echo "| figure | target | measured | |"
echo "|---|---|---:|---|"
verdict() { if awk "BEGIN { exit !($1) }"; then echo "met"; else echo "**not met**"; fi; }
for c in $CONNS; do
	read -r rb pb < <(awk -F'\t' -v c="$c" '$1 == "B" && $2 == c { print $3, $4 }' "$WORK/medians.tsv") || continue
	read -r rc pc < <(awk -F'\t' -v c="$c" '$1 == "C" && $2 == c { print $3, $4 }' "$WORK/medians.tsv") || continue
	r=$(awk -v a="$rb" -v b="$rc" 'BEGIN { printf "%.2f", a / b }')
	q=$(awk -v a="$pb" -v b="$pc" 'BEGIN { printf "%.2f", a / b }')
	echo "| req/s ÷ nginx at $c connections | ≥ 1.20 | $r | $(verdict "$r >= 1.2") |"
	echo "| p99 ÷ nginx at $c connections | ≤ 1.00 | $q | $(verdict "$q <= 1.0") |"
done
if ((MEMORY)); then
	set -- $MEM_CONNS
	lo=$1 hi=${!#}
	mlo=$(kib_to_mib "${MEM_HWM[$lo]}") mhi=$(kib_to_mib "${MEM_HWM[$hi]}")
	echo "| RSS at $lo busy connections | ≤ 24 MiB | $mlo MiB | $(verdict "$mlo <= 24") |"
	echo "| RSS at $hi busy connections | ≤ 64 MiB | $mhi MiB | $(verdict "$mhi <= 64") |"
	after=$(kib_to_mib "$mem_after") twice=$(kib_to_mib $((mem_base * 2)))
	echo "| RSS 10 s after the $hi burst | ≤ 2 × before ($twice MiB) | $after MiB | $(verdict "$after <= $twice") |"
	idle_peak=- idle_fresh=- idle_ok=0
	if [[ -r $WORK/idle.result ]]; then
		idle_peak=$(kib_to_mib "$(awk -F= '$1 == "peak_kib" { print $2 }' "$WORK/idle.result")")
		idle_fresh=$(awk -F= '$1 == "fresh_ms" { print $2 }' "$WORK/idle.result")
		idle_ok=$(awk -F= '$1 == "served" { print $2 }' "$WORK/idle.result")
	fi
	idle_v="**not met**"
	if [[ $idle_ok == 1 ]] && [[ $(verdict "$idle_peak <= 64 && $idle_fresh < 100") == met ]]; then idle_v=met; fi
	echo "| $COUNT idle keep-alive connections | ≤ 64 MiB, a fresh request served at once (< 100 ms) | $idle_peak MiB, fresh request in ${idle_fresh} ms | $idle_v |"
	if [[ -n $mem_cap ]]; then
		capped=$(verdict "$up_max <= $mem_cap && $mem_err == 0")
	else
		capped="**not met** (no cap)"
	fi
	echo "| upstream connections per app | capped; beyond it requests queue, never fail | at most $up_max at once (cap ${mem_cap:-none}), $up_opened opened, $mem_err errors | $capped |"
fi
