#!/usr/bin/env python3
"""A session worker written from docs/worker-protocol.md alone, with the standard library only.

The integration tests run it as a process-worker backend. `--mode M` (an operator argument,
before the three the gateway adds) makes it misbehave in one documented way:

  normal          speaks the protocol
  wrong-nonce     sends a nonce that is not the one in PORTCULLIS_WORKER_NONCE
  wrong-version   says protocol version 2 in its hello
  never-ready     sends hello, then never ready
  no-connect      never connects to the socket
  ignore-shutdown never acknowledges shutdown and does not exit
  silent          stops sending heartbeats after ready
  flood           answers `flood` with events faster than anyone reads them
  backend-fault   sends a fault instead of ready (its backend cannot start)

Commands: echo, status (a backend error: status 404), count (N progress events, then the
reply), sleep (replies after payload.ms unless cancelled), crash (exits 1 mid-command),
spawn (starts a grandchild and replies with its pid), env (replies with its environment
names and argv), flood (payload.n events at once).
"""
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time

VERSION = 1
MAX_FRAME = 1 << 20


def parse_args(argv):
    opts = {"mode": "normal"}
    it = iter(argv)
    for a in it:
        if a in ("--session-id", "--socket", "--protocol-version", "--mode"):
            try:
                opts[a[2:]] = next(it)
            except StopIteration:
                sys.exit(2)
        else:
            sys.exit(2)
    for need in ("session-id", "socket", "protocol-version"):
        if need not in opts:
            sys.exit(2)
    return opts


opts = parse_args(sys.argv[1:])
if opts["protocol-version"] != str(VERSION):
    sys.exit(3)
nonce = os.environ.get("PORTCULLIS_WORKER_NONCE")
if not nonce:
    sys.exit(4)
mode = opts["mode"]
sid = opts["session-id"]

if mode == "no-connect":
    time.sleep(3600)

sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(opts["socket"])
wlock = threading.Lock()
seq = 0


def send(body, correlation_id=None):
    global seq
    with wlock:
        seq += 1
        env = {"version": VERSION, "session_id": sid, "sequence": seq, "body": body}
        if correlation_id is not None:
            env["correlation_id"] = correlation_id
        data = json.dumps(env).encode()
        sock.sendall(struct.pack(">I", len(data)) + data)


def read_exact(n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            sys.exit(0)
        buf += chunk
    return buf


def recv():
    (n,) = struct.unpack(">I", read_exact(4))
    if n == 0 or n > MAX_FRAME:
        sys.exit(1)
    return json.loads(read_exact(n))


COMMANDS = [
    {"kind": k, "capability": c}
    for k, c in [
        ("echo", "compute.read"),
        ("status", "compute.read"),
        ("env", "compute.read"),
        ("count", "compute.run"),
        ("sleep", "compute.run"),
        ("crash", "compute.run"),
        ("spawn", "compute.run"),
        ("flood", "compute.run"),
    ]
]

send({
    "type": "hello",
    "protocol_version": 2 if mode == "wrong-version" else VERSION,
    "nonce": ("x" + nonce) if mode == "wrong-nonce" else nonce,
    "pid": os.getpid(),
    "commands": COMMANDS,
})
hello = recv()
if hello["body"]["type"] != "hello" or hello["body"]["nonce"] != nonce:
    sys.exit(1)
interval = hello["body"]["heartbeat_interval_ms"] / 1000.0
if mode == "never-ready":
    time.sleep(3600)
if mode == "backend-fault":
    send({"type": "fault", "category": "backend", "message": "the licence server is down"})
    time.sleep(3600)
send({"type": "ready", "pid": os.getpid()})


def heartbeats():
    while mode != "silent":
        time.sleep(interval)
        send({"type": "heartbeat", "pid": os.getpid()})


threading.Thread(target=heartbeats, daemon=True).start()
cancelled = set()


def sleeper(cid, ms):
    time.sleep(ms / 1000.0)
    if cid in cancelled:
        return
    send({"type": "reply", "status": 0, "payload": {"slept_ms": ms}}, cid)


while True:
    frame = recv()
    body = frame["body"]
    cid = frame.get("correlation_id")
    t = body["type"]
    if t == "shutdown":
        if mode == "ignore-shutdown":
            continue
        send({"type": "shutdown_ack"})
        sys.exit(0)
    if t == "cancel":
        cancelled.add(cid)
        send({"type": "event", "kind": "cancelled", "payload": {"correlation_id": cid}})
        continue
    if t != "command":
        sys.exit(1)
    kind, payload = body["kind"], body["payload"]
    if kind == "echo":
        send({"type": "reply", "status": 0, "payload": payload}, cid)
    elif kind == "status":
        send({"type": "reply", "status": 404, "payload": {"error": "no such row", "rows": []}}, cid)
    elif kind == "env":
        send({"type": "reply", "status": 0,
              "payload": {"env": sorted(os.environ.keys()), "argv": sys.argv, "cwd": os.getcwd()}}, cid)
    elif kind == "count":
        for i in range(1, payload["n"] + 1):
            send({"type": "event", "kind": "progress", "payload": {"i": i}})
        send({"type": "reply", "status": 0, "payload": {"done": payload["n"]}}, cid)
    elif kind == "sleep":
        threading.Thread(target=sleeper, args=(cid, payload["ms"]), daemon=True).start()
    elif kind == "crash":
        os._exit(1)
    elif kind == "spawn":
        child = subprocess.Popen(["sleep", "3600"])
        send({"type": "reply", "status": 0, "payload": {"child_pid": child.pid}}, cid)
    elif kind == "flood":
        for i in range(payload["n"]):
            send({"type": "event", "kind": "flood", "payload": {"i": i, "pad": "x" * 200}})
        send({"type": "reply", "status": 0, "payload": {"sent": payload["n"]}}, cid)
    else:
        send({"type": "reply", "status": 400, "payload": {"error": "unknown kind " + kind}}, cid)
