#!/usr/bin/env python3
"""A minimal OTLP/HTTP trace receiver for the test suite: decodes each POST /v1/traces body with
the official OpenTelemetry protobuf classes (opentelemetry-proto) and appends one JSON line per
span to OUT. A body that is not a valid ExportTraceServiceRequest is answered 400 and noted.

usage: otlp-receiver.py PORT OUT
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

PORT, OUT = int(sys.argv[1]), sys.argv[2]
KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


def value(v):
    which = v.WhichOneof("value")
    return getattr(v, which) if which in ("string_value", "int_value", "bool_value", "double_value") else str(v)


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.path != "/v1/traces" or self.headers.get("content-type") != "application/x-protobuf":
            self.send_response(415)
            self.end_headers()
            return
        req = ExportTraceServiceRequest()
        try:
            req.ParseFromString(body)
        except DecodeError as e:
            with open(OUT, "a") as f:
                f.write(json.dumps({"decode_error": str(e)}) + "\n")
            self.send_response(400)
            self.end_headers()
            return
        lines = []
        for rs in req.resource_spans:
            resource = {kv.key: value(kv.value) for kv in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    lines.append(json.dumps({
                        "resource": resource,
                        "scope": ss.scope.name,
                        "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(),
                        "parent_span_id": s.parent_span_id.hex(),
                        "name": s.name,
                        "kind": KINDS.get(s.kind, str(s.kind)),
                        "start": s.start_time_unix_nano,
                        "end": s.end_time_unix_nano,
                        "status": s.status.code,
                        "attributes": {kv.key: value(kv.value) for kv in s.attributes},
                    }))
        with open(OUT, "a") as f:
            for line in lines:
                f.write(line + "\n")
        out = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
print(f"otlp receiver ready on {PORT}", flush=True)
server.serve_forever()
