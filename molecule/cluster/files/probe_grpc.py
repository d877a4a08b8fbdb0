#!/usr/bin/env python3
"""Call one harmless gRPC method on each given Ray port, with no token, and
print what came back: the gRPC status code name per target, as JSON.

Usage (the Ray virtualenv's Python, without RAY_AUTH_* in the environment):
  probe_grpc.py HOST:PORT=/ray.rpc.Service/Method ...

The request is an empty message (b"" is a valid empty protobuf message), so
nothing changes on the node whatever the server does with it.
"""

import json
import sys

import grpc


def probe(target: str, method: str) -> str:
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        try:
            call(b"", timeout=10)
        except grpc.RpcError as exc:
            return exc.code().name
        return "OK"


def main() -> int:
    out = {}
    for arg in sys.argv[1:]:
        target, _, method = arg.partition("=")
        out[arg] = probe(target, method)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
