#!/usr/bin/env python3
"""Open N keep-alive HTTP/1.1 connections, send one request on each, read the whole response,
then hold every connection open (idle) until SIGTERM or SIGINT arrives.

    idle_conns.py --port P [--n 10000] [--path /echo/x] [--header 'Name: value'] [--header-file F]
                  [--sources K]

Prints `held N failed M` on stdout once all are open, then `closing` when it lets go. Connections are opened in batches so the listener's accept backlog
never overflows. With --sources K, source addresses 127.0.0.1 … 127.0.0.K are used in turn
(IP_BIND_ADDRESS_NO_PORT), for machines with a narrow ephemeral port range.
Python 3 standard library only.
"""

import argparse
import signal
import socket
import sys
import time

IP_BIND_ADDRESS_NO_PORT = 24
BATCH = 64


def read_response(sock, deadline):
    """Read one full HTTP/1.1 response (content-length or chunked); return the status code."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += recv(sock, deadline)
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip().lower()
    if b"content-length" in headers:
        need = int(headers[b"content-length"])
        while len(rest) < need:
            rest += recv(sock, deadline)
    elif headers.get(b"transfer-encoding") == b"chunked":
        while not rest.endswith(b"0\r\n\r\n"):
            rest += recv(sock, deadline)
    if headers.get(b"connection") == b"close":
        raise OSError(f"server closed the connection (status {status})")
    return status


def recv(sock, deadline):
    sock.settimeout(max(0.01, deadline - time.monotonic()))
    data = sock.recv(65536)
    if not data:
        raise OSError("connection closed by peer")
    return data


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--path", default="/echo/x")
    ap.add_argument("--header", action="append", default=[])
    ap.add_argument("--header-file", action="append", default=[],
                    help="file with one 'Name: value' line (secrets stay off the command line)")
    ap.add_argument("--sources", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=10.0)
    args = ap.parse_args()

    for path in args.header_file:
        with open(path) as f:
            args.header.append(f.read().strip())
    extra = "".join(f"{h}\r\n" for h in args.header)
    request = (f"GET {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n{extra}\r\n"
               ).encode()
    def leave(*_):
        print("closing", flush=True)
        sys.exit(0)  # the kernel closes every socket
    signal.signal(signal.SIGTERM, leave)
    signal.signal(signal.SIGINT, leave)

    held, failed, first_error = [], 0, None
    i = 0
    while i < args.n:
        batch = []
        for _ in range(min(BATCH, args.n - i)):
            i += 1
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                if args.sources > 1:
                    s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                    s.bind((f"127.0.0.{1 + i % args.sources}", 0))
                s.settimeout(args.timeout)
                s.connect((args.host, args.port))
                s.sendall(request)
                batch.append(s)
            except OSError as e:
                failed += 1
                first_error = first_error or repr(e)
                s.close()
        deadline = time.monotonic() + args.timeout
        for s in batch:
            try:
                status = read_response(s, deadline)
                if status != 200:
                    raise OSError(f"status {status}")
                held.append(s)
            except (OSError, ValueError, IndexError) as e:
                failed += 1
                first_error = first_error or repr(e)
                s.close()
    print(f"held {len(held)} failed {failed}" + (f" first_error {first_error}" if failed else ""),
          flush=True)
    while True:  # hold until a signal
        signal.pause()


if __name__ == "__main__":
    main()
