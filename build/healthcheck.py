"""gRPC health probe for the gateway container (Docker HEALTHCHECK, compose, or a Kubernetes
exec probe where the gateway serves TLS, which Kubernetes' native grpc probe cannot speak).

Asks grpc.health.v1.Health/Check and exits 0 only for SERVING; 1 for anything else (NOT_SERVING
while Triton or the catalogues are not ready, unreachable, timeout). Needs only grpcio and
grpcio-health-checking, which the gateway image has anyway: no grpc_health_probe download.

    python build/healthcheck.py [--target 127.0.0.1:50051] [--service ""] [--ca ca.pem
                                [--cert client.pem --key client-key.pem]] [--timeout 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def channel(target: str, ca: Path | None, cert: Path | None, key: Path | None) -> grpc.Channel:
    """Plaintext channel, or TLS (mutual when a client cert and key are given)."""
    if ca is None:
        return grpc.insecure_channel(target)
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )
    return grpc.secure_channel(target, creds)


def check(target: str, service: str = "", timeout_s: float = 2.0, ca: Path | None = None,
          cert: Path | None = None, key: Path | None = None) -> tuple[bool, str]:
    """(serving?, what was seen) for one Health/Check call."""
    with channel(target, ca, cert, key) as ch:
        try:
            reply = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as exc:
            return False, f"{exc.code().name}: {exc.details()}"  # type: ignore[attr-defined]
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="healthcheck.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="127.0.0.1:50051", help="host:port of the gateway")
    parser.add_argument("--service", default="", help='health service name ("" = the whole server)')
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds for the call")
    parser.add_argument("--ca", type=Path, default=None, help="CA (PEM): use TLS")
    parser.add_argument("--cert", type=Path, default=None, help="client certificate (mutual TLS)")
    parser.add_argument("--key", type=Path, default=None, help="client key (mutual TLS)")
    args = parser.parse_args(argv)
    ok, seen = check(args.target, args.service, args.timeout, args.ca, args.cert, args.key)
    print(f"{args.target} {args.service or '(server)'}: {seen}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
