"""Access control over mutual TLS: per-platform API keys, platform scope, certificates."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.auth import API_KEY_HEADER, key_digest
from gateway.proto.interest.v1 import gateway_pb2 as pb
from gateway.proto.interest.v1 import gateway_pb2_grpc as pb_grpc
from gateway.server import Gateway, create_server
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

KEYS = {"food": "food-secret-key", "kitchen": "kitchen-secret-key", "*": "operator-secret-key"}


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None = None,
          issuer_key: ec.EllipticCurvePrivateKey | None = None, ca: bool = False) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


@dataclass
class Pki:
    ca: bytes
    server_cert: Path
    server_key: Path
    ca_file: Path
    client_cert: bytes
    client_key: bytes


def make_pki(folder: Path) -> Pki:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test CA", ca_key, ca=True)
    server_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    server = _cert("localhost", server_key, ca.subject, ca_key)
    client = _cert("food-platform", client_key, ca.subject, ca_key)
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    (folder / "server.pem").write_bytes(server.public_bytes(pem))
    (folder / "server.key").write_bytes(_pem_key(server_key))
    return Pki(ca.public_bytes(pem), folder / "server.pem", folder / "server.key", folder / "ca.pem",
               client.public_bytes(pem), _pem_key(client_key))


@dataclass
class Secured:
    gateway: Gateway
    pki: Pki
    stub: pb_grpc.InterestGatewayStub
    channel: grpc.aio.Channel


@pytest_asyncio.fixture
async def secured(stack: Stack, tmp_path: Path) -> AsyncIterator[Secured]:
    pki = make_pki(tmp_path)
    settings = stack.settings.model_copy(update={
        "api_keys": {key_digest(key): platform for platform, key in KEYS.items()},
        "tls_cert_file": pki.server_cert, "tls_key_file": pki.server_key, "tls_client_ca_file": pki.ca_file,
    })
    gateway = create_server(settings, triton_url=stack.triton.grpc_url, port=0)
    await gateway.start()
    creds = grpc.ssl_channel_credentials(root_certificates=pki.ca, private_key=pki.client_key,
                                         certificate_chain=pki.client_cert)
    channel = grpc.aio.secure_channel(f"localhost:{gateway.port}", creds)
    try:
        yield Secured(gateway, pki, pb_grpc.InterestGatewayStub(channel), channel)
    finally:
        await channel.close(None)
        await gateway.stop(grace=1.0)


def key(platform: str) -> tuple[tuple[str, str], ...]:
    return ((API_KEY_HEADER, KEYS[platform]),)


EVENT = pb.BehaviorEvent(user_id="acl-user", item_text="loose leaf oolong tea", event_type="purchase")


async def status_of(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def test_keys_and_scope(secured: Secured) -> None:
    s = secured.stub
    ingest = pb.IngestEventsRequest(platform="food", events=[EVENT])
    assert await status_of(s.IngestEvents(ingest, timeout=30)) == grpc.StatusCode.UNAUTHENTICATED
    assert await status_of(s.IngestEvents(ingest, timeout=30, metadata=((API_KEY_HEADER, "guess"),))) \
        == grpc.StatusCode.UNAUTHENTICATED
    assert await status_of(s.IngestEvents(ingest, timeout=30, metadata=key("kitchen"))) \
        == grpc.StatusCode.PERMISSION_DENIED
    reply = await s.IngestEvents(ingest, timeout=30, metadata=key("food"))
    assert reply.accepted == 1
    encode = pb.EncodeInterestRequest(platform="kitchen", events=[EVENT])
    assert await status_of(s.EncodeInterest(encode, timeout=30, metadata=key("food"))) \
        == grpc.StatusCode.PERMISSION_DENIED
    ok = await status_of(s.EncodeInterest(encode, timeout=30, metadata=key("kitchen")))
    assert ok == grpc.StatusCode.OK
    # The gateway is in-process here; wait for its catalogues before asking for recommendations.
    await secured.gateway.serving.wait()
    consent = pb.SetConsentRequest(user_id="acl-user", migrate=True)
    await s.SetConsent(consent, timeout=5, metadata=key("food"))
    rec = pb.RecommendRequest(user_id="acl-user", target_platform="kitchen", k=3)
    denied = await status_of(s.Recommend(rec, timeout=10, metadata=key("food")))
    assert denied == grpc.StatusCode.PERMISSION_DENIED
    answer = await s.Recommend(rec, timeout=10, metadata=key("kitchen"))
    assert len(answer.items) == 3 and list(answer.source_platforms) == ["food"]
    mine = await s.GetProfile(pb.GetProfileRequest(user_id="acl-user"), timeout=5, metadata=key("food"))
    assert [p.platform for p in mine.platforms] == ["food"]
    assert await status_of(s.GetProfile(pb.GetProfileRequest(user_id="acl-user"), timeout=5,
                                        metadata=key("kitchen"))) == grpc.StatusCode.NOT_FOUND
    kitchen_erase = await s.DeleteUser(pb.DeleteUserRequest(user_id="acl-user"), timeout=5,
                                       metadata=key("kitchen"))
    assert kitchen_erase.platforms_removed == 0, "kitchen's key erases only kitchen's rows"
    assert await status_of(s.ListAudit(pb.ListAuditRequest(), timeout=5, metadata=key("food"))) \
        == grpc.StatusCode.PERMISSION_DENIED
    erased = await s.DeleteUser(pb.DeleteUserRequest(user_id="acl-user"), timeout=5, metadata=key("*"))
    assert erased.platforms_removed == 1 and list(erased.removed_platforms) == ["food"]


async def test_tls_is_required_and_client_certificates_too(secured: Secured) -> None:
    target = f"localhost:{secured.gateway.port}"
    request = pb.EncodeInterestRequest(platform="food", events=[EVENT])
    async with grpc.aio.insecure_channel(target) as plain:
        code = await status_of(pb_grpc.InterestGatewayStub(plain).EncodeInterest(
            request, timeout=5, metadata=key("food")))
        assert code == grpc.StatusCode.UNAVAILABLE
    no_client_cert = grpc.ssl_channel_credentials(root_certificates=secured.pki.ca)
    async with grpc.aio.secure_channel(target, no_client_cert) as channel:
        code = await status_of(pb_grpc.InterestGatewayStub(channel).EncodeInterest(
            request, timeout=5, metadata=key("food")))
        assert code == grpc.StatusCode.UNAVAILABLE
    reply = await secured.stub.EncodeInterest(request, timeout=30, metadata=key("food"))
    assert reply.dim == 384
