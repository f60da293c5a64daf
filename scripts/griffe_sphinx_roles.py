"""A griffe extension for the documentation site (mkdocs.yml loads it).

The docstrings cite other objects with Sphinx roles (``:class:`JsonCodec```,
``:meth:`~shardroute.client.ShardClient.close```), which mkdocstrings would print as
they are. Before a docstring is rendered, each role becomes a cross-reference: the name
is resolved in the scope of the object that carries the docstring (its members, its
imports, then its parents'), a leading ``~`` keeps only the last part as the title. The
reference is *optional*: when the target is not on any page of the site (a private
module), it renders as code instead of failing the strict build, so only the site's own
links and Markdown references are checked.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

# reST's "text::" before an indented block: the block is code, the text ends with ":".
_LITERAL = re.compile(r"(?<=\S)::\n(?=\n[ \t]+\S)")
_LONE_LITERAL = re.compile(r"^[ \t]*::\n(?=\n[ \t]+\S)", re.M)  # a "::" line: dropped
_ROLE = re.compile(
    r":(?:class|meth|func|attr|mod|data|exc|obj):`"
    r"(?:(?P<title>[^`<]+?)\s+<(?P<explicit>[\w.]+)>|(?P<tilde>~?)(?P<target>[\w.]+)(?P<call>\(\))?)`"
)


def _resolve(obj: griffe.Object, target: str) -> str:
    """The full path of ``target`` as seen from ``obj``, or ``target`` itself."""
    if target.startswith("."):  # relative to the module's package: :mod:`.chunks`
        module = obj.module
        package = module if module.is_init_module else module.parent
        return f"{package.path if package else ''}{target}"
    first, _, rest = target.partition(".")
    if first == obj.module.package.name:
        return target
    try:
        head = obj.resolve(first)
    except (griffe.NameResolutionError, griffe.AliasResolutionError):
        return target
    return f"{head}.{rest}" if rest else head


def convert(obj: griffe.Object, text: str) -> str:
    """``text`` with every Sphinx role replaced by an optional cross-reference, and
    reST's ``::`` before a literal block by ``:`` (Markdown already makes the indented
    block code)."""

    def replace(match: re.Match[str]) -> str:
        if match["explicit"]:  # :meth:`Router.route <shardroute.routing.Router.route>`
            target, title = match["explicit"], match["title"]
        else:
            target = match["target"]
            title = target.rpartition(".")[2] if match["tilde"] else target
            title += match["call"] or ""
        identifier = html.escape(_resolve(obj, target), quote=True)
        return f'<autoref identifier="{identifier}" optional><code>{title}</code></autoref>'

    text = _LONE_LITERAL.sub("", _ROLE.sub(replace, text))
    return _LITERAL.sub(":\n", text)


class SphinxRoles(griffe.Extension):
    """Rewrites the Sphinx roles of every docstring in the package once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        pending: list[griffe.Object] = [pkg]
        while pending:
            obj = pending.pop()
            if obj.docstring is not None:
                obj.docstring.value = convert(obj, obj.docstring.value)
            pending.extend(
                member
                for member in obj.members.values()
                if not member.is_alias and isinstance(member, griffe.Object)
            )
