"""A handler's hold on one session for one call: :class:`Turn` (threads) and
:class:`AsyncTurn` (asyncio), made by :meth:`SessionHost.turn
<shardroute.sessions.SessionHost.turn>` / ``aturn``. ``AsyncTurn`` is written once
(``_async_turn.py``) and ``Turn`` generated from it (``_sync_turn.py``)."""

from shardroute.sessions._async_turn import AsyncTurn
from shardroute.sessions._sync_turn import Turn

__all__ = ["AsyncTurn", "Turn"]
