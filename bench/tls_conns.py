#!/usr/bin/env python3
"""New TLS connections, one request each: full handshakes, or TLS session resumption.

    tls_conns.py --port P --ca CERT.pem [--seconds 5] [--resume] [--path /echo/x]
                 [--header-file F] [--server-name localhost]

Opens one connection after another for --seconds: TLS handshake (SNI --server-name, the
certificate checked against --ca), `GET PATH` with `Connection: close`, reads the whole
response, closes. With --resume every connection after the first offers the session (TLS 1.3
ticket) the previous connection received, as a browser or an HTTP client with a session cache
does; without it every handshake is a full one. Prints one JSON line: connections, resumed
(as the server confirmed them), errors, connections/s, p50/p99 milliseconds per connection.
Python 3 standard library only.
"""

import argparse
import json
import socket
import ssl
import sys
import time


def one(ctx, args, request, session):
    raw = socket.create_connection(("127.0.0.1", args.port), timeout=args.timeout)
    try:
        s = ctx.wrap_socket(raw, server_hostname=args.server_name, session=session)
        s.sendall(request)
        buf = b""
        while True:
            data = s.recv(65536)
            if not data:
                break
            buf += data
        if not buf.startswith(b"HTTP/1.1 200"):
            raise OSError(f"unexpected answer {buf[:40]!r}")
        # TLS 1.3 tickets arrive after the handshake; by the end of the response they are in.
        return s.session_reused, s.session
    finally:
        raw.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--path", default="/echo/x")
    ap.add_argument("--header-file", action="append", default=[],
                    help="file with one 'Name: value' line (secrets stay off the command line)")
    ap.add_argument("--server-name", default="localhost")
    ap.add_argument("--timeout", type=float, default=10.0)
    args = ap.parse_args()

    extra = ""
    for path in args.header_file:
        with open(path) as f:
            extra += f.read().strip() + "\r\n"
    request = (f"GET {args.path} HTTP/1.1\r\nHost: {args.server_name}:{args.port}\r\n{extra}"
               f"Connection: close\r\n\r\n").encode()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(args.ca)
    ctx.set_alpn_protocols(["http/1.1"])

    lat, resumed, errors, first_error, session = [], 0, 0, None, None
    start = time.monotonic()
    end = start + args.seconds
    while time.monotonic() < end:
        t0 = time.monotonic()
        try:
            reused, new_session = one(ctx, args, request, session if args.resume else None)
        except (OSError, ssl.SSLError) as e:
            errors += 1
            first_error = first_error or repr(e)
            session = None
            continue
        lat.append((time.monotonic() - t0) * 1000.0)
        resumed += 1 if reused else 0
        session = new_session
    elapsed = time.monotonic() - start
    lat.sort()

    def pct(q):
        return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else None

    out = {"connections": len(lat), "resumed": resumed, "errors": errors,
           "rps": len(lat) / elapsed if elapsed else 0.0, "p50_ms": pct(0.50),
           "p99_ms": pct(0.99), "requests": len(lat)}
    if first_error:
        out["first_error"] = first_error[:200]
    print(json.dumps(out))
    return 0 if lat else 1


if __name__ == "__main__":
    sys.exit(main())
