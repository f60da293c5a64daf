"""Throwaway certificates for tests, benchmarks and the demo, written as PEM files (needs
``trustme``, in the ``etcd`` and ``test`` extras)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shardroute.errors import ConfigError
from shardroute.security import TLSConfig

__all__ = ["issue_tls", "throwaway_tls"]


def _trustme() -> Any:
    try:
        import trustme
    except ImportError as exc:  # pragma: no cover - the extras install it
        raise ConfigError(
            "throwaway certificates need the trustme package: pip install 'shardroute[etcd]'"
        ) from exc
    return trustme


def issue_tls(ca: Any, folder: str | Path, name: str, *identities: str) -> TLSConfig:
    """A :class:`TLSConfig` trusting ``ca`` (a ``trustme.CA``) with a new certificate for
    ``identities`` (DNS names, IP addresses, URIs), written under ``folder`` as
    ``<name>-ca.pem``, ``<name>-cert.pem`` and ``<name>-key.pem`` (mode 0600)."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    leaf = ca.issue_cert(*identities)
    ca_path, cert, key = (root / f"{name}-{part}.pem" for part in ("ca", "cert", "key"))
    ca.cert_pem.write_to_path(str(ca_path))
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    key.chmod(0o600)
    return TLSConfig(ca=str(ca_path), cert=str(cert), key=str(key))


def throwaway_tls(folder: str | Path) -> tuple[TLSConfig, TLSConfig]:
    """Write a new CA and two certificates under ``folder``; returns the shards'
    :class:`TLSConfig` (certificate for ``127.0.0.1``, ``::1`` and ``localhost``, client
    certificates required) and the clients' (identity ``client.shardroute.test``)."""
    ca = _trustme().CA()
    return (
        issue_tls(ca, folder, "shard", "127.0.0.1", "::1", "localhost"),
        issue_tls(ca, folder, "client", "client.shardroute.test"),
    )
