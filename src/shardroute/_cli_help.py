"""What each ``shardroute`` command's ``--help`` says besides its options: what the
command does (its one-line help, as its description) and its exit codes (as its epilog),
as docs/operations.md lists them."""

from __future__ import annotations

from typing import Any

__all__ = ["describe_commands"]


_EXIT_CODES = {
    "": "exit codes: 0 done; 2 an error told in one line (etcd unreachable, a bad argument, "
    "an unknown shard); 130 interrupted (docs/operations.md)",
    "drain": "exit codes: 0 every session moved; 3 sessions left behind (whole in a shared "
    "session store; the line says when the store is in memory) or their moves not "
    "reported; 2 an error told in one line (the shard did not take "
    "the drain, etcd unreachable, a bad argument, an unknown shard) (docs/operations.md)",
    "rebalance": "exit codes: 0 done; 1 a move failed (its session stays where it was); 2 an "
    "error told in one line (docs/operations.md)",
    "demo": "exit codes: 0 done; 1 (--chaos) a turn was lost; 2 an error told in one line",
    "etcd": "exit codes: 0 stopped by Ctrl-C or SIGTERM; 2 an error told in one line (no etcd "
    "binary, a port taken, etcd did not start or exited) (docs/operations.md)",
    "serve": "exit codes: 0 stopped after a drain (SIGTERM, Ctrl-C, shardroute drain); 2 an "
    "error told in one line (a bad MODULE:CLASS, no --etcd, an address taken, etcd "
    "unreachable) (docs/server.md)",
}
"""What each command's ``--help`` says of its exit codes ("": the commands not listed)."""


def describe_commands(commands: Any) -> None:
    """Give each command of ``commands`` (the parser's subparsers) a description and an
    epilog with its exit codes, unless it has its own."""
    for action in commands._choices_actions:
        command = commands.choices[action.dest]
        command.description = command.description or action.help
        command.epilog = command.epilog or _EXIT_CODES.get(action.dest, _EXIT_CODES[""])
