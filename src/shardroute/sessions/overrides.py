"""Session overrides: read and compare-and-swap ``sessions/<session_key>`` in etcd.

An override says where a session lives when routing alone would put it elsewhere
(docs/migration.md). Every change is a compare-and-swap on the key's revision, so of two
writers starting from the same override exactly one wins: that is the fence movers and
take-overs rely on.
"""

from __future__ import annotations

from shardroute.discovery.keys import KeySchema
from shardroute.discovery.records import encode_override, parse_override
from shardroute.errors import ConfigError, LeaseNotFound, StaleState
from shardroute.etcd import EtcdClient
from shardroute.model import Override

__all__ = ["OverrideStore", "next_override"]


def next_override(current: Override | None, owner: str, moving_to: str = "") -> Override:
    """The override that follows ``current``: ``owner``/``moving_to`` with epoch + 1.

    The epoch is 1 when there is no current override. Pure: the result has
    ``version=0`` until :meth:`OverrideStore.swap` stores it.
    """
    if not owner:
        raise ConfigError("an override needs a non-empty owner")
    epoch = 1 if current is None else current.epoch + 1
    return Override(owner=owner, epoch=epoch, moving_to=moving_to)


class OverrideStore:
    """Reads and compare-and-swaps the session overrides of one service.

    Construction does no I/O. Thread-safe (the :class:`EtcdClient` is shared).
    """

    def __init__(self, etcd: EtcdClient, service: str) -> None:
        self._etcd = etcd
        self._keys = KeySchema(service)

    @property
    def service(self) -> str:
        """The service whose ``sessions/`` keys this store uses."""
        return self._keys.service

    @property
    def timeout(self) -> float:
        """The longest one etcd call of this store may take (its client's timeout)."""
        return float(self._etcd.options.timeout)

    def key(self, session_key: str) -> str:
        """The etcd key of a session's override."""
        return self._keys.session(session_key)

    def get(self, session_key: str) -> Override | None:
        """The session's override (``version`` = the key's ``mod_revision``), or None.

        Raises:
            MalformedRecord: the stored value is not a valid override.
            EtcdUnavailable: etcd is unreachable.
        """
        key = self._keys.session(session_key)
        found = self._etcd.get_with_version(key)
        if found is None:
            return None
        raw, version = found
        return parse_override(key, raw, version)

    def swap(
        self,
        session_key: str,
        expected: Override | None,
        new: Override | None,
        *,
        lease: int | None = None,
    ) -> Override | None:
        """Replace the session's override, if it is still ``expected``.

        One etcd transaction comparing the key's revision with ``expected.version``
        (``expected=None``: the key must not exist). ``new=None`` deletes the override.
        ``lease`` attaches the new override to a lease (normally the owner's, from its
        shard record) so that it disappears with the owner; without it the override has
        no lease, even if the previous one had.

        Args:
            session_key: the session.
            expected: the override as last read (from :meth:`get` or :meth:`swap`, so
                its ``version`` is set), or None when there must be none.
            new: the override to store (typically :func:`next_override`), or None to
                delete.
            lease: the etcd lease id for ``new``.

        Returns:
            The stored ``new`` with its ``version``, or None after a delete.

        Raises:
            StaleState: the override changed since ``expected`` was read (another writer
                won), or ``lease`` no longer exists in etcd (expired or revoked: its
                owner is gone). Nothing changed either way. Read again and decide again.
            ConfigError: ``expected`` has no version, or ``new`` is not a valid override.
            EtcdUnavailable: etcd is unreachable.
        """
        key = self._keys.session(session_key)
        expected_version = 0 if expected is None else expected.version
        if expected is not None and expected.version <= 0:
            raise ConfigError(
                f"expected override of session {session_key!r} has no version: pass the "
                "value returned by get() or swap()"
            )
        if new is None:
            if not self._etcd.delete_if_version(key, expected_version):
                raise self._stale(session_key, expected)
            return None
        if not new.owner or new.epoch < 1:
            raise ConfigError(f"invalid override {new!r}: needs an owner and an epoch >= 1")
        if expected is None:
            # A first override (or one after the last was deleted with its owner's lease)
            # starts above etcd's current revision, not at 1: every earlier epoch of this
            # key was at most the revision it was written at, so epochs never repeat and
            # a shard that remembers an old epoch never refuses a new mover.
            floor = self._etcd.revision(key)  # a key this user may read
            if new.epoch <= floor:
                new = Override(new.owner, floor + 1, new.moving_to)
        try:
            revision = self._etcd.put_if_version(key, encode_override(new), expected_version, lease)
        except LeaseNotFound as exc:
            raise LeaseNotFound(
                f"session {session_key!r}: override not written: {exc}", session_key
            ) from exc
        if revision is None:
            raise self._stale(session_key, expected)
        return Override(new.owner, new.epoch, new.moving_to, revision)

    @staticmethod
    def _stale(session_key: str, expected: Override | None) -> StaleState:
        if expected is None:
            wanted = "no override"
        else:
            wanted = f"owner {expected.owner!r} epoch {expected.epoch} (version {expected.version})"
        return StaleState(
            f"session {session_key!r}: expected {wanted}, but the override changed (another "
            "writer got there first); nothing was changed. Read it again and decide again",
            session_key,
        )
