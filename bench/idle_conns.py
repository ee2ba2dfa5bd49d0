#!/usr/bin/env python3
"""Open many idle keep-alive HTTP/1.1 client connections to a loopback server and hold them.

Used by bench/idle.sh. Each connection sends one GET and reads the whole response, so
the server has really served it and now holds it as an idle keep-alive connection; then all of
them stay silent until --hold seconds pass or SIGTERM/SIGINT arrives. Standard library only.

Prints two lines on stdout for the calling script:
  OPEN requested=N open=N failed=N seconds=S      once every connection is open (or gave up)
  DONE alive=N closed=N                           when the hold ends: alive = not closed by the server
Failures are summarised on stderr.
"""

import argparse
import collections
import errno
import ipaddress
import os
import resource
import selectors
import signal
import socket
import sys
import time

DEFAULT_PATH = "/cgi-bin/user/info?openid=o6_bmjrPTlm6_2sgVt7hMZOPfL2M&lang=zh_CN"


class Conn:
    """One client connection on its way to idle: connect, send the request, read the response."""

    __slots__ = ("sock", "state", "sent", "buf")

    def __init__(self, sock):
        self.sock = sock
        self.state = "connect"
        self.sent = 0
        self.buf = b""


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="loopback address of the server")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=10000, help="connections to hold")
    p.add_argument("--path", default=DEFAULT_PATH, help="path of the one request on each connection")
    p.add_argument("--parallel", type=int, default=200, help="connections being opened at once")
    p.add_argument("--open-timeout", type=float, default=120.0, help="give up opening after this many seconds")
    p.add_argument("--hold", type=float, default=300.0, help="hold at most this many seconds")
    args = p.parse_args()
    if not ipaddress.ip_address(args.host).is_loopback:
        p.error("--host must be a loopback address")
    if not 1 <= args.count <= 100000 or not 1 <= args.parallel <= 10000:
        p.error("--count must be 1..100000 and --parallel 1..10000")
    return args


def raise_nofile(count):
    """Lets this process hold `count` sockets (bash's `ulimit -n` normally did it already)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = count + 64
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            sys.exit(f"idle_conns: open-file limit {soft} (hard {hard}) is below {need}: raise it with ulimit -n")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def response_status(buf):
    """(status, keep_alive) once buf holds a whole response, else None."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    lines = buf[:head_end].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP/1 response: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    body = buf[head_end + 4 :]
    if "content-length" in headers:
        if len(body) < int(headers["content-length"]):
            return None
    elif "chunked" in headers.get("transfer-encoding", ""):
        if not body.endswith(b"0\r\n\r\n"):
            return None
    else:
        raise ValueError("response without a length: the server cannot keep the connection")
    keep_alive = "close" not in headers.get("connection", "") and parts[0] != "HTTP/1.0"
    return int(parts[1]), keep_alive


def open_all(args, request, errors):
    """Opens args.count connections, each after one complete 200 response. Returns the sockets."""
    sel = selectors.DefaultSelector()
    idle = []
    started = inflight = failed = 0
    deadline = time.monotonic() + args.open_timeout

    def fail(conn, why):
        nonlocal inflight, failed
        sel.unregister(conn.sock)
        conn.sock.close()
        inflight -= 1
        failed += 1
        errors[why] += 1

    while len(idle) + failed < args.count and time.monotonic() < deadline:
        while inflight < args.parallel and started < args.count:
            sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            started += 1
            rc = sock.connect_ex((args.host, args.port))
            if rc not in (0, errno.EINPROGRESS):
                sock.close()
                failed += 1
                errors[f"connect: {os.strerror(rc)}"] += 1
                continue
            sel.register(sock, selectors.EVENT_WRITE, Conn(sock))
            inflight += 1
        for key, _ in sel.select(timeout=0.5):
            conn = key.data
            try:
                if conn.state == "connect":
                    err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, f"connect: {os.strerror(err)}")
                    conn.state = "send"
                if conn.state == "send":
                    conn.sent += conn.sock.send(request[conn.sent :])
                    if conn.sent == len(request):
                        conn.state = "recv"
                        sel.modify(conn.sock, selectors.EVENT_READ, conn)
                    continue
                data = conn.sock.recv(65536)
                if not data:
                    raise ConnectionError("closed by the server before the response ended")
                conn.buf += data
                done = response_status(conn.buf)
                if done is None:
                    continue
                status, keep_alive = done
                if status != 200:
                    fail(conn, f"HTTP {status}")
                elif not keep_alive:
                    fail(conn, "server answered Connection: close")
                else:
                    sel.unregister(conn.sock)
                    inflight -= 1
                    conn.buf = b""
                    idle.append(conn.sock)
            except (BlockingIOError, InterruptedError):
                continue
            except (OSError, ValueError) as e:
                fail(conn, str(e) or type(e).__name__)
    for key in list(sel.get_map().values()):
        key.fileobj.close()
        errors["still opening at --open-timeout"] += 1
    sel.close()
    return idle, failed


def count_alive(socks):
    """Connections the server still holds: a peek finds no EOF and no reset."""
    alive = closed = 0
    for sock in socks:
        try:
            data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            if data:
                alive += 1  # the server sent something unasked; the connection is still up
            else:
                closed += 1
        except BlockingIOError:
            alive += 1
        except OSError:
            closed += 1
    return alive, closed


def main():
    args = parse_args()
    raise_nofile(args.count)
    stop = False

    def on_signal(_signum, _frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    host = f"[{args.host}]" if ":" in args.host else args.host
    request = (
        f"GET {args.path} HTTP/1.1\r\nHost: {host}:{args.port}\r\nUser-Agent: wtp-bench-idle\r\n"
        "Accept: */*\r\n\r\n"
    ).encode()
    errors = collections.Counter()
    t0 = time.monotonic()
    idle, failed = open_all(args, request, errors)
    print(
        f"OPEN requested={args.count} open={len(idle)} failed={failed} seconds={time.monotonic() - t0:.1f}",
        flush=True,
    )
    for why, n in errors.most_common(5):
        print(f"idle_conns: {n} x {why}", file=sys.stderr, flush=True)

    hold_end = time.monotonic() + args.hold
    while not stop and time.monotonic() < hold_end:
        time.sleep(0.2)

    alive, closed = count_alive(idle)
    print(f"DONE alive={alive} closed={closed}", flush=True)
    for sock in idle:
        sock.close()


if __name__ == "__main__":
    main()
