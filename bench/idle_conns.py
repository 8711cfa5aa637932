#!/usr/bin/env python3
"""Open N keep-alive connections, send one request on each, read the whole response, then hold
every connection open (idle) until SIGTERM or SIGINT arrives.

    idle_conns.py --port P [--n 10000] [--path /echo/x] [--header 'Name: value'] [--header-file F]
                  [--sources K] [--tls CA.pem [--server-name localhost]] [--h2]

HTTP/1.1 by default; --tls wraps every connection in TLS 1.3 (the certificate checked against
CA.pem); --h2 speaks HTTP/2 (over TLS with ALPN h2, or h2c with prior knowledge without --tls):
one GET stream, then the connection stays open with no stream.

Prints `held N failed M` on stdout once all are open, then `closing` when it lets go. Connections are opened in batches so the listener's accept backlog
never overflows. With --sources K, source addresses 127.0.0.1 … 127.0.0.K are used in turn
(IP_BIND_ADDRESS_NO_PORT), for machines with a narrow ephemeral port range.
Python 3 standard library only.
"""

import argparse
import signal
import socket
import ssl
import struct
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


def h2_request(args, extra_headers):
    """The client preface, an empty SETTINGS frame and one GET as a HEADERS frame (HPACK
    literals without indexing, no Huffman: every peer must accept them)."""
    def lit(name, value):
        name, value = name.encode(), value.encode()
        assert len(name) < 127 and len(value) < 127
        return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value
    block = (lit(":method", "GET") + lit(":scheme", "https" if args.tls else "http")
             + lit(":path", args.path) + lit(":authority", f"{args.server_name}:{args.port}"))
    for h in extra_headers:
        name, _, value = h.partition(":")
        block += lit(name.strip().lower(), value.strip())
    headers = struct.pack(">I", len(block))[1:] + bytes([0x1, 0x5]) + struct.pack(">I", 1) + block
    return b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" + headers


def read_h2_response(sock, deadline):
    """Read frames until stream 1 ends; ACK the server's SETTINGS. Returns 200 when the
    response's first header is the static-table `:status 200` (0x88)."""
    buf, status = b"", None
    while True:
        while len(buf) >= 9:
            length = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + length:
                break
            ftype, flags = buf[3], buf[4]
            stream = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
            payload, buf = buf[9:9 + length], buf[9 + length:]
            if ftype == 0x4 and not flags & 0x1:  # SETTINGS, not an ACK
                sock.sendall(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00")
            elif ftype == 0x7:
                raise OSError("GOAWAY from the server")
            elif ftype == 0x3 and stream == 1:
                raise OSError("RST_STREAM from the server")
            elif ftype == 0x1 and stream == 1:
                pad = payload[0] if flags & 0x8 else 0
                block = payload[(1 if flags & 0x8 else 0) + (5 if flags & 0x20 else 0):]
                block = block[:len(block) - pad] if pad else block
                if status is None:
                    status = 200 if block[:1] == b"\x88" else 0
            if stream == 1 and ftype in (0x0, 0x1) and flags & 0x1:
                return status or 0
        buf += recv(sock, deadline)


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
    ap.add_argument("--tls", metavar="CA", help="TLS 1.3, the server's certificate checked against CA")
    ap.add_argument("--server-name", default="localhost", help="SNI and Host/:authority with --tls")
    ap.add_argument("--h2", action="store_true", help="HTTP/2 (ALPN h2 with --tls, else h2c)")
    args = ap.parse_args()
    if not args.tls:
        args.server_name = args.host
    ctx = None
    if args.tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_verify_locations(args.tls)
        ctx.set_alpn_protocols(["h2"] if args.h2 else ["http/1.1"])

    for path in args.header_file:
        with open(path) as f:
            args.header.append(f.read().strip())
    extra = "".join(f"{h}\r\n" for h in args.header)
    if args.h2:
        request = h2_request(args, args.header)
        read = read_h2_response
    else:
        request = (f"GET {args.path} HTTP/1.1\r\nHost: {args.server_name}:{args.port}\r\n"
                   f"{extra}\r\n").encode()
        read = read_response
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
                if ctx is not None:
                    s = ctx.wrap_socket(s, server_hostname=args.server_name)
                s.sendall(request)
                batch.append(s)
            except OSError as e:
                failed += 1
                first_error = first_error or repr(e)
                s.close()
        deadline = time.monotonic() + args.timeout
        for s in batch:
            try:
                status = read(s, deadline)
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
