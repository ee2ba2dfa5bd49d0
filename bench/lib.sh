# shellcheck shell=bash
# Shared by bench/run.sh and bench/idle.sh: dependencies, the fake WeChat upstream (nginx),
# the proxy under test, and cleanup. Sourced, never run. Everything listens on 127.0.0.1 only.

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$BENCH_DIR")

# What the upstream answers. ~100 bytes, like a small WeChat API reply.
UPSTREAM_BODY='{"errcode":0,"errmsg":"ok","data":{"openid":"o6_bmjrPTlm6_2sgVt7hMZOPfL2M","nickname":"bench"}}'
# Real tokens are ~140 opaque characters; the same string is nginx's fixed token in series C,
# so both proxies send the upstream the same bytes.
BENCH_TOKEN_PART=79_Qx3mZkWbP8dVhT2rYfLs5nJgE4cAuK7oRi9HtDwBv6yXeM1lN0pCzSaUjF
BENCH_TOKEN=BENCHTOKEN_$BENCH_TOKEN_PART$BENCH_TOKEN_PART
# The path every benchmark request uses: a real-looking API call with a query to preserve.
BENCH_PATH=${BENCH_PATH:-'/cgi-bin/user/info?openid=o6_bmjrPTlm6_2sgVt7hMZOPfL2M&lang=zh_CN'}

PIDS=()          # every process we started, killed at exit
USED_PORTS=" "   # ports handed out by free_port, so two servers never get the same one
WORK=""          # temporary directory for configs, logs and wrk output

log() { printf '[bench] %s\n' "$*" >&2; }
die() {
	printf '[bench] error: %s\n' "$*" >&2
	exit 1
}

# ensure_deps TOOL...: installs whichever of the tools (nginx, wrk, python3) is missing, from
# Debian packages; apt-get update runs only when the package lists do not know a package yet.
# Sets NGINX. Note: Debian's nginx packages also enable the system nginx service (port 80);
# the benchmark never uses it.
ensure_deps() {
	local tool need=() sudo=()
	NGINX=$(command -v nginx || true)
	if [[ -z $NGINX && -x /usr/sbin/nginx ]]; then NGINX=/usr/sbin/nginx; fi
	for tool in "$@"; do
		case $tool in
		nginx) [[ -n $NGINX ]] || need+=(nginx) ;;
		*) command -v "$tool" >/dev/null || need+=("$tool") ;;
		esac
	done
	if ((${#need[@]})); then
		command -v apt-get >/dev/null || die "missing ${need[*]} and no apt-get: install them by hand"
		if [[ $(id -u) != 0 ]]; then
			command -v sudo >/dev/null || die "missing ${need[*]}: install them as root (apt-get install ${need[*]})"
			sudo=(sudo)
		fi
		if ! apt-cache show "${need[@]}" >/dev/null 2>&1; then
			log "apt-get update"
			"${sudo[@]}" apt-get update -qq >&2 || die "apt-get update failed"
		fi
		# nginx-light (Debian 12) is enough: only proxy_pass, map and return are used.
		if [[ " ${need[*]} " == *" nginx "* ]] && apt-cache show nginx-light >/dev/null 2>&1; then
			need=("${need[@]/#nginx/nginx-light}")
		fi
		log "apt-get install ${need[*]}"
		"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2 ||
			die "apt-get install ${need[*]} failed"
		NGINX=$(command -v nginx || echo /usr/sbin/nginx)
	fi
	for tool in "$@"; do
		case $tool in
		nginx) [[ -x $NGINX ]] || die "nginx not found after installing it" ;;
		*) command -v "$tool" >/dev/null || die "$tool not found after installing it" ;;
		esac
	done
}

# Builds the release binary unless PROXY_BIN names one; sets PROXY_BIN.
build_proxy() {
	if [[ -n ${PROXY_BIN:-} ]]; then
		[[ -x $PROXY_BIN ]] || die "PROXY_BIN=$PROXY_BIN is not an executable"
		return
	fi
	command -v cargo >/dev/null || die "cargo not found: install Rust from https://rustup.rs (the crate needs Rust >= 1.80)"
	log "cargo build --release"
	(cd "$REPO_DIR" && cargo build --release >&2) || die "cargo build --release failed"
	local target=${CARGO_TARGET_DIR:-target}
	[[ $target == /* ]] || target=$REPO_DIR/$target
	PROXY_BIN=$target/release/wechat-token-proxy
	[[ -x $PROXY_BIN ]] || die "built, but $PROXY_BIN is missing"
}

# Raises the open-file limit as far as allowed; dies if it stays below $1.
raise_nofile() {
	local want=$1 hard
	hard=$(ulimit -Hn)
	if [[ $hard == unlimited ]] || ((hard >= 1048576)); then
		ulimit -n 1048576 2>/dev/null || ulimit -n 65536 2>/dev/null || true
	else
		ulimit -n "$hard" 2>/dev/null || true
	fi
	local soft
	soft=$(ulimit -n)
	[[ $soft == unlimited ]] || ((soft >= want)) ||
		die "open-file limit is $soft (hard $hard), need $want: raise it (ulimit -Hn) and rerun"
}

# make_workdir: a private temporary directory, removed at exit unless KEEP=1.
make_workdir() {
	WORK=$(mktemp -d "${TMPDIR:-/tmp}/wtp-bench.XXXXXX")
	# nginx workers may run as another user (nobody) and must reach their temp paths.
	chmod 755 "$WORK"
	trap cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
}

cleanup() {
	local rc=$? pid i
	trap - EXIT INT TERM
	for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	# Bounded: 5 s for everything to stop, then KILL.
	for ((i = 0; i < 50; i++)); do
		local alive=0
		for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
		((alive)) || break
		sleep 0.1
	done
	for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
	wait 2>/dev/null || true
	if [[ -n $WORK && -d $WORK ]]; then
		if [[ ${KEEP:-0} == 1 ]]; then
			log "kept $WORK"
		else
			rm -rf "$WORK"
		fi
	fi
	exit "$rc"
}

# free_port VAR: a loopback TCP port nothing listens on, stored in VAR. Taken from 20000-31999,
# below Linux's ephemeral range (32768-60999), so client sockets never collide with it.
# shellcheck disable=SC2034 # out is a nameref to the caller's variable
free_port() {
	local -n out=$1
	local p i fd
	for ((i = 0; i < 500; i++)); do
		p=$((20000 + (RANDOM * 32768 + RANDOM) % 12000))
		[[ $USED_PORTS == *" $p "* ]] && continue
		if ! { exec {fd}<>"/dev/tcp/127.0.0.1/$p"; } 2>/dev/null; then
			USED_PORTS+="$p "
			out=$p
			return 0
		fi
		exec {fd}>&-
	done
	die "no free loopback port found"
}

# http_get HOST:PORT PATH: prints the whole response (status line, headers, body).
# Plain bash (/dev/tcp), so a fresh machine needs no curl.
http_get() {
	local hp=$1 path=$2 fd
	{ exec {fd}<>"/dev/tcp/${hp%:*}/${hp##*:}"; } 2>/dev/null || return 1
	printf 'GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: wtp-bench\r\nConnection: close\r\n\r\n' "$path" "$hp" >&"$fd"
	timeout 5 cat <&"$fd" || true
	exec {fd}>&-
}

# http_status HOST:PORT PATH: the status code, or 000 when nothing answered.
http_status() {
	local line
	line=$(http_get "$1" "$2" | head -n 1) || true
	[[ $line =~ ^HTTP/1\.[01]\ ([0-9]{3}) ]] && echo "${BASH_REMATCH[1]}" || echo 000
}

# wait_status HOST:PORT PATH CODE SECONDS PID NAME LOGFILE: waits until PATH answers CODE.
wait_status() {
	local hp=$1 path=$2 code=$3 secs=$4 pid=$5 name=$6 logf=$7 i
	for ((i = 0; i < secs * 10; i++)); do
		[[ $(http_status "$hp" "$path") == "$code" ]] && return 0
		if ! kill -0 "$pid" 2>/dev/null; then
			tail -n 20 "$logf" >&2 || true
			die "$name exited during start (log above: $logf)"
		fi
		sleep 0.1
	done
	tail -n 20 "$logf" >&2 || true
	die "$name: http://$hp$path did not answer $code within ${secs}s (log above: $logf)"
}

# Common nginx preamble: own pid file and temp paths inside $WORK, never the system's.
nginx_main_conf() {
	local name=$1
	cat <<EOF
worker_processes 1;
pid $WORK/$name.pid;
error_log $WORK/$name.err warn;
events { worker_connections 16384; multi_accept on; }
EOF
}

nginx_http_common() {
	local name=$1
	cat <<EOF
    client_body_temp_path $WORK/$name-tmp/body;
    proxy_temp_path $WORK/$name-tmp/proxy;
    fastcgi_temp_path $WORK/$name-tmp/fastcgi;
    uwsgi_temp_path $WORK/$name-tmp/uwsgi;
    scgi_temp_path $WORK/$name-tmp/scgi;
    types { }
    default_type application/json;
    # Keep client connections open for the whole run, as wrk and the proxies expect.
    keepalive_requests 100000000;
    keepalive_timeout 300s;
EOF
}

# run_nginx NAME CONF_FILE: starts nginx in the foreground of a background job.
run_nginx() {
	local name=$1 conf=$2
	mkdir -p "$WORK/$name-tmp"
	# -e: nginx's own startup errors go to our file, not /var/log/nginx (which may not exist);
	# both writers append, so sharing the file is safe.
	# shellcheck disable=SC2094
	"$NGINX" -p "$WORK/$name-tmp" -e "$WORK/$name.err" -c "$conf" -g 'daemon off;' 2>>"$WORK/$name.err" &
	PIDS+=($!)
	LAST_PID=$!
}

# start_upstream: the fake WeChat server. Sets UPSTREAM_PORT and UPSTREAM_PID.
start_upstream() {
	free_port UPSTREAM_PORT
	{
		nginx_main_conf upstream
		cat <<EOF
http {
$(nginx_http_common upstream)
    access_log off;
    server {
        listen 127.0.0.1:$UPSTREAM_PORT backlog=4096;
        location = /cgi-bin/stable_token {
            return 200 '{"access_token":"$BENCH_TOKEN","expires_in":7200}';
        }
        location = /cgi-bin/token {
            return 200 '{"access_token":"$BENCH_TOKEN","expires_in":7200}';
        }
        # Echoes the query it received, so the scripts can see the token was appended.
        location = /bench/echo {
            return 200 '{"errcode":0,"errmsg":"ok","args":"\$args"}';
        }
        location / {
            return 200 '$UPSTREAM_BODY';
        }
        # Connections accepted so far: how many the proxy opened.
        location = /bench/nginx_status {
            stub_status;
        }
    }
}
EOF
	} >"$WORK/upstream.conf"
	run_nginx upstream "$WORK/upstream.conf"
	UPSTREAM_PID=$LAST_PID
	wait_status "127.0.0.1:$UPSTREAM_PORT" "$BENCH_PATH" 200 10 "$UPSTREAM_PID" "upstream nginx" "$WORK/upstream.err"
	log "upstream nginx on 127.0.0.1:$UPSTREAM_PORT"
}

# start_nginx_proxy: series C and C-log, nginx as a token-adding proxy (one worker, upstream
# keepalive 64) on two ports, the second with an access log. $request_uri is the client's raw
# path and query, so the query keeps its bytes, as in the proxy's rewrite; the fixed token is
# appended after "&", or "?" when there is no query. Sets NGINX_PROXY_PORT,
# NGINX_PROXY_LOG_PORT, NGINX_PROXY_PID; the access log is $WORK/nginx-proxy-access.log.
start_nginx_proxy() {
	free_port NGINX_PROXY_PORT
	free_port NGINX_PROXY_LOG_PORT
	local loc
	loc="location / {
            proxy_pass http://wechat\$request_uri\${token_sep}access_token=$BENCH_TOKEN;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }"
	{
		nginx_main_conf nginx-proxy
		cat <<EOF
http {
$(nginx_http_common nginx-proxy)
    access_log off;
    upstream wechat {
        server 127.0.0.1:$UPSTREAM_PORT;
        keepalive 64;
        keepalive_requests 100000000;
    }
    map \$args \$token_sep {
        ""      "?";
        default "&";
    }
    server {
        listen 127.0.0.1:$NGINX_PROXY_PORT backlog=4096;
        $loc
    }
    server {
        listen 127.0.0.1:$NGINX_PROXY_LOG_PORT backlog=4096;
        access_log $WORK/nginx-proxy-access.log combined;
        $loc
    }
}
EOF
	} >"$WORK/nginx-proxy.conf"
	run_nginx nginx-proxy "$WORK/nginx-proxy.conf"
	NGINX_PROXY_PID=$LAST_PID
	wait_status "127.0.0.1:$NGINX_PROXY_PORT" "$BENCH_PATH" 200 10 "$NGINX_PROXY_PID" "nginx proxy" "$WORK/nginx-proxy.err"
	log "nginx proxy on 127.0.0.1:$NGINX_PROXY_PORT (C) and 127.0.0.1:$NGINX_PROXY_LOG_PORT (C-log)"
}

# start_proxy NAME ACCESS_LOG(true|false): the proxy under test in front of the upstream.
# Sets PROXY_PORT, ADMIN_PORT, PROXY_PID; its stderr goes to $WORK/NAME.log.
start_proxy() {
	local name=$1 access_log=$2
	free_port PROXY_PORT
	free_port ADMIN_PORT
	cat >"$WORK/$name.toml" <<EOF
[proxy]
listen = "127.0.0.1:$PROXY_PORT"
admin_listen = "127.0.0.1:$ADMIN_PORT"
${PROXY_EXTRA:-}

[upstream]
connect_timeout_ms = 3000
request_timeout_ms = 30000

[apps.mp]
kind = "mp"
appid = "wx000000000000beec"
secret_env = "WTP_BENCH_SECRET"
token_api = "stable"
base_url = "http://127.0.0.1:$UPSTREAM_PORT"

[log]
access_log = $access_log
EOF
	WTP_BENCH_SECRET=bench-dummy-secret RUST_LOG=${BENCH_RUST_LOG:-info} \
		"$PROXY_BIN" --config "$WORK/$name.toml" 2>>"$WORK/$name.log" &
	PIDS+=($!)
	PROXY_PID=$!
	wait_status "127.0.0.1:$ADMIN_PORT" /readyz 200 30 "$PROXY_PID" "proxy $name" "$WORK/$name.log"
	grep -q "listening listener=proxy addr=127.0.0.1:$PROXY_PORT" "$WORK/$name.log" ||
		log "note: proxy $name did not log 'listening listener=proxy addr=127.0.0.1:$PROXY_PORT'"
	log "proxy $name on 127.0.0.1:$PROXY_PORT (admin $ADMIN_PORT, pid $PROXY_PID, access_log=$access_log)"
}

# check_token_appended HOST:PORT NAME: the upstream must see the query kept and the token added.
# The client sends no access_token, so one in the echo was added on the way. The proxy scrubs
# the token it sent out of answers (its placeholder stands in); nginx echoes it as it is.
check_token_appended() {
	local hp=$1 name=$2 resp
	resp=$(http_get "$hp" '/bench/echo?lang=zh_CN&openid=o6_bmjrPTlm6')
	[[ $resp == *'"args":"'*"lang=zh_CN&openid=o6_bmjrPTlm6"* ]] &&
		[[ $resp == *"access_token=$BENCH_TOKEN"* || $resp == *"access_token=WECHAT_TOKEN_PROXY_PLACEHOLDER"* ]] ||
		die "$name did not forward with the token appended; it answered:"$'\n'"$resp"
}

# proc_kib PID FIELD: a Vm* field of /proc/PID/status in KiB.
proc_kib() {
	awk -v f="$2:" '$1 == f { print $2; found = 1 } END { if (!found) print 0 }' "/proc/$1/status" 2>/dev/null || echo 0
}

# tree_ticks PID: CPU time (user + system, clock ticks) of PID and its direct children,
# e.g. an nginx master and its worker.
tree_ticks() {
	local pid=$1 kids="" p total=0 rest ppid
	if [[ -r /proc/$pid/task/$pid/children ]]; then
		kids=$(cat "/proc/$pid/task/$pid/children" 2>/dev/null || true)
	else
		for p in /proc/[0-9]*; do
			rest=$(cat "$p/stat" 2>/dev/null) || continue
			rest=${rest##*) }
			read -r _ ppid _ <<<"$rest"
			[[ $ppid == "$pid" ]] && kids+=" ${p#/proc/}"
		done
	fi
	for p in $pid $kids; do
		rest=$(cat "/proc/$p/stat" 2>/dev/null) || continue
		# Fields after "pid (comm) ": state ppid ... utime is the 12th, stime the 13th.
		rest=${rest##*) }
		total=$((total + $(awk '{ print $12 + $13 }' <<<"$rest")))
	done
	echo "$total"
}

# upstream_accepts: connections the upstream nginx has accepted since it started.
upstream_accepts() {
	http_get "127.0.0.1:$UPSTREAM_PORT" /bench/nginx_status | awk 'f { print $1; exit } /server accepts handled/ { f = 1 }'
}

# upstream_conns_of PID: established connections from process PID to the upstream.
upstream_conns_of() {
	ss -Htnp state established "( dport = :$UPSTREAM_PORT )" 2>/dev/null | grep -c "pid=$1," || true
}

# load_avg: the 1, 5 and 15 minute load averages.
load_avg() { awk '{ print $1, $2, $3 }' /proc/loadavg; }

kib_to_mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

machine_info() {
	local model
	model=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
	[[ -n $model ]] || model=$(lscpu 2>/dev/null | awk -F': *' '/^Model name/ { print $2; exit }')
	echo "- machine: $(nproc) CPUs, ${model:-unknown CPU}, $(awk '/^MemTotal/ { printf "%.1f GiB RAM", $2 / 1048576 }' /proc/meminfo)"
	echo "- kernel: $(uname -srm)"
	echo "- $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), $(wrk -v 2>&1 | head -n 1 | awk '{ print $1, $2 }')"
}
