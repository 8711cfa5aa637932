#!/usr/bin/env python3
"""The sessions gRPC service from Python grpcio, with messages generated from the repo's
.proto by protoc at test time. Prints one JSON object of what it saw.

usage: PORTCULLIS_KEY=API_KEY grpc_client.py HOST:PORT PROTO_DIR OUT_DIR BACKEND
(the key from the environment: never on a command line)
"""
import json
import os
import subprocess
import sys

target, proto_dir, out_dir, backend = sys.argv[1:5]
key = os.environ["PORTCULLIS_KEY"]
subprocess.run(
    ["protoc", "-I", proto_dir, "--python_out", out_dir,
     "portcullis/sessions/v1/sessions.proto"],
    check=True,
)
sys.path.insert(0, out_dir)
import grpc  # noqa: E402
from portcullis.sessions.v1 import sessions_pb2 as pb  # noqa: E402

SVC = "/portcullis.sessions.v1.Sessions/"
ch = grpc.insecure_channel(target)
md = [("authorization", "Bearer " + key)]
out = {}


def unary(name, req, resp, metadata=md):
    f = ch.unary_unary(SVC + name, request_serializer=lambda m: m.SerializeToString(),
                       response_deserializer=resp.FromString)
    return f(req, metadata=metadata, timeout=20)


def code(fn):
    try:
        fn()
        return "OK"
    except grpc.RpcError as e:
        return e.code().name


def stream(sid, after=0):
    f = ch.unary_stream(SVC + "StreamEvents", request_serializer=lambda m: m.SerializeToString(),
                        response_deserializer=pb.Event.FromString)
    return f(pb.StreamEventsRequest(session_id=sid, after_sequence=after), metadata=md, timeout=30)


o = unary("OpenSession", pb.OpenSessionRequest(backend=backend, name="py"), pb.OpenSessionResponse)
sid = o.session_id
out["open"] = {"backend": o.backend, "pid": o.worker_pid, "version": o.protocol_version,
               "capabilities": dict(o.capabilities)}
events = stream(sid)
r = unary("Invoke", pb.InvokeRequest(session_id=sid, command=pb.Command(kind="count", payload_json='{"n": 3}')),
          pb.InvokeResponse)
out["count"] = {"status": r.status, "payload": json.loads(r.payload_json)}
seen = [next(events) for _ in range(3)]
out["events"] = [{"sequence": e.sequence, "kind": e.kind, "payload": json.loads(e.payload_json)} for e in seen]
r = unary("Invoke", pb.InvokeRequest(session_id=sid, command=pb.Command(kind="status")), pb.InvokeResponse)
out["backend_error"] = {"status": r.status, "payload": json.loads(r.payload_json)}
out["codes"] = {
    "second_subscriber": code(lambda: next(stream(sid))),
    "unknown_session": code(lambda: unary("Invoke", pb.InvokeRequest(
        session_id="node.0000", command=pb.Command(kind="echo")), pb.InvokeResponse)),
    "no_command": code(lambda: unary("Invoke", pb.InvokeRequest(session_id=sid), pb.InvokeResponse)),
    "timeout": code(lambda: unary("Invoke", pb.InvokeRequest(
        session_id=sid, command=pb.Command(kind="sleep", payload_json='{"ms": 3000}'), timeout_ms=100),
        pb.InvokeResponse)),
    "unauthenticated": code(lambda: unary("Invoke", pb.InvokeRequest(
        session_id=sid, command=pb.Command(kind="echo")), pb.InvokeResponse, metadata=[])),
}
c = unary("CloseSession", pb.CloseSessionRequest(session_id=sid), pb.CloseSessionResponse)
out["close"] = {"state": c.state, "result": c.result, "reason": c.close_reason}
rest = []
try:
    for e in events:
        rest.append(e.kind)
    out["stream_end"] = "OK"
except grpc.RpcError as e:
    out["stream_end"] = e.code().name
out["after_close"] = code(lambda: unary("Invoke", pb.InvokeRequest(
    session_id=sid, command=pb.Command(kind="echo")), pb.InvokeResponse))
c = unary("CloseSession", pb.CloseSessionRequest(session_id=sid), pb.CloseSessionResponse)
out["close_again"] = c.result
print(json.dumps(out))
