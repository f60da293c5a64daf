"""Who the control service admits (pure logic of ControlGuard over a servicer context's
peer, metadata and auth context), and the settings objects' validation. The same rules
against real shards: tests/integration/test_security_*.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from shardroute.errors import ConfigError
from shardroute.security import ControlAuth, ControlGuard, ControlToken, TLSConfig
from shardroute.security.control_auth import is_loopback_peer

TOKEN = ControlToken("a-long-enough-control-token")


@dataclass
class Context:
    peer_text: str = "ipv4:127.0.0.1:5000"
    md: tuple[tuple[str, str], ...] = ()
    auth: dict[str, list[bytes]] = field(default_factory=dict)

    def peer(self) -> str:
        return self.peer_text

    def invocation_metadata(self) -> Any:
        return self.md

    def auth_context(self) -> dict[str, list[bytes]]:
        return self.auth


@pytest.mark.parametrize(
    ("peer", "local"),
    [
        ("ipv4:127.0.0.1:1", True),
        ("ipv4:127.8.9.1:1", True),
        ("ipv6:[::1]:1", True),
        ("ipv6:%5B::1%5D:1", True),  # as gRPC writes it
        ("ipv6:%5B::ffff:127.0.0.1%5D:1", True),
        ("ipv6:%5Bfd00::2%5D:1", False),
        ("unix:/tmp/s", True),
        ("ipv4:192.0.2.7:1", False),
        ("ipv6:[fd00::2]:1", False),
        ("ipv4:1127.0.0.1:1", False),
    ],
)
def test_loopback_peers(peer: str, local: bool) -> None:
    assert is_loopback_peer(peer) is local


def test_nothing_configured_admits_only_local_callers() -> None:
    guard = ControlGuard(None)
    assert guard.refusal(Context()) is None
    refused = guard.refusal(Context("ipv4:192.0.2.7:4000"))
    assert refused is not None and refused.code is grpc.StatusCode.PERMISSION_DENIED
    assert "this machine" in refused.details
    assert guard.refused_total == 1


def test_a_token_is_needed_even_from_loopback_once_configured() -> None:
    guard = ControlGuard(ControlAuth(token=TOKEN))
    missing = guard.refusal(Context())
    assert missing is not None and missing.code is grpc.StatusCode.UNAUTHENTICATED
    wrong = guard.refusal(Context(md=(("authorization", "Bearer not-the-token-at-all"),)))
    assert wrong is not None and wrong.code is grpc.StatusCode.PERMISSION_DENIED
    assert guard.refusal(Context("ipv4:192.0.2.7:1", md=TOKEN.metadata())) is None
    assert TOKEN.value not in repr(TOKEN) and TOKEN.value not in repr(ControlAuth(TOKEN))


def test_mtls_identities_match_san_or_cn_patterns() -> None:
    guard = ControlGuard(ControlAuth(allowed_identities=("mover.*.example", "spiffe://p/*")))
    remote = "ipv4:192.0.2.7:1"
    san = {"x509_subject_alternative_name": [b"mover.eu.example"]}
    assert guard.refusal(Context(remote, auth=san)) is None
    spiffe = {"x509_subject_alternative_name": [b"spiffe://p/ns/chat"]}
    assert guard.refusal(Context(remote, auth=spiffe)) is None
    cn = {"x509_common_name": [b"mover.us.example"]}
    assert guard.refusal(Context(remote, auth=cn)) is None
    other = guard.refusal(Context(remote, auth={"x509_common_name": [b"app.example"]}))
    assert other is not None and other.code is grpc.StatusCode.PERMISSION_DENIED
    assert guard.refusal(Context()) is not None  # loopback is no pass once configured


def test_tokens_from_files_and_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f"  {TOKEN.value}\n")
    assert ControlToken.from_file(str(path)) == TOKEN
    assert ControlToken.from_env({"SHARDROUTE_CONTROL_TOKEN_FILE": str(path)}) == TOKEN
    assert ControlToken.from_env({"SHARDROUTE_CONTROL_TOKEN": TOKEN.value}) == TOKEN
    assert ControlToken.from_env({}) is None
    (tmp_path / "empty").write_text("\n")
    for bad in (str(tmp_path / "empty"), str(tmp_path / "missing")):
        with pytest.raises(ConfigError, match="control token file"):
            ControlToken.from_file(bad)
    with pytest.raises(ConfigError, match="at least 16"):
        ControlToken("short")


def test_tls_config_validation(tmp_path: Path) -> None:
    pem = tmp_path / "x.pem"
    pem.write_text("not really a certificate")
    with pytest.raises(ConfigError, match="together"):
        TLSConfig(cert=str(pem))
    with pytest.raises(ConfigError, match="does not exist"):
        TLSConfig(ca=str(tmp_path / "nope.pem"))
    assert TLSConfig(ca=str(pem), server_name="shard.example").channel_options() == [
        ("grpc.ssl_target_name_override", "shard.example")
    ]
    with pytest.raises(ConfigError, match="cert and key"):
        TLSConfig(ca=str(pem)).server_credentials()
