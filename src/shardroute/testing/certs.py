"""Throwaway certificates for tests and the demo: one CA, a shard certificate for the
loopback addresses, a client certificate; written as PEM files (needs ``trustme``, in the
``etcd`` and ``test`` extras)."""

from __future__ import annotations

from pathlib import Path

from shardroute.errors import ConfigError
from shardroute.security import TLSConfig

__all__ = ["throwaway_tls"]


def throwaway_tls(folder: str | Path) -> tuple[TLSConfig, TLSConfig]:
    """Write a new CA and two certificates under ``folder``; returns the shards'
    :class:`TLSConfig` (certificate for ``127.0.0.1``, ``::1`` and ``localhost``, client
    certificates required) and the clients' (identity ``client.shardroute.test``)."""
    try:
        import trustme
    except ImportError as exc:  # pragma: no cover - the extras install it
        raise ConfigError(
            "throwaway certificates need the trustme package: pip install 'shardroute[etcd]'"
        ) from exc
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    ca_path = root / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    configs = []
    for name, identities in (
        ("shard", ("127.0.0.1", "::1", "localhost")),
        ("client", ("client.shardroute.test",)),
    ):
        leaf = ca.issue_cert(*identities)
        cert, key = root / f"{name}.pem", root / f"{name}.key"
        cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(key))
        key.chmod(0o600)
        configs.append(TLSConfig(ca=str(ca_path), cert=str(cert), key=str(key)))
    return configs[0], configs[1]
