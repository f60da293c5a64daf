"""The documentation site (mkdocs.yml): CI builds it, every page is in its nav, a broken
link or an orphan page fails the build, and docstrings' Sphinx roles become links."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
MKDOCS_YML = ROOT / "mkdocs.yml"


def _readme_test_command() -> str:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    commands = [line for block in blocks for line in block.splitlines() if "pytest" in line]
    assert len(commands) == 1, commands
    return commands[0]


def _nav_pages() -> list[str]:
    """The pages the nav names (``- Title: page.md`` or ``- page.md``)."""
    nav = MKDOCS_YML.read_text().split("\nnav:\n", 1)[1].split("\n\n", 1)[0]
    return re.findall(r"^\s+- (?:[^:\n]+: )?(\S+\.md)$", nav, re.M)


def test_ci_runs_the_readme_test_command_which_builds_the_docs_strictly() -> None:
    command = _readme_test_command()
    assert command in (ROOT / ".ci" / "run").read_text().splitlines()
    assert "'.[test,docs]'" in command
    assert "mkdocs build --strict &&" in command
    # -q raises mkdocs' log level above WARNING, and strict mode then sees no warnings.
    assert "mkdocs build --strict -q" not in command


def test_every_page_of_docs_is_in_the_nav_and_every_nav_page_exists() -> None:
    pages = sorted(str(path.relative_to(DOCS)) for path in DOCS.rglob("*.md"))
    nav = _nav_pages()
    assert len(nav) == len(set(nav)), "a page is twice in the nav"
    assert sorted(nav) == pages


def test_a_page_missing_from_the_nav_or_a_broken_link_fails_the_strict_build(
    tmp_path: Path,
) -> None:
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    shutil.copytree(DOCS, tmp_path / "docs")
    (tmp_path / "docs" / "orphan.md").write_text("# Orphan\n")
    with (tmp_path / "docs" / "routing.md").open("a") as page:
        page.write("\nSee [nowhere](nowhere.md) and [a lost anchor](client.md#no-such-heading).\n")
    config = (
        MKDOCS_YML.read_text()
        .replace("docs_dir: docs", f"docs_dir: {tmp_path / 'docs'}")
        .replace("site_dir: site", f"site_dir: {tmp_path / 'site'}")
        .replace("paths: [src]", f"paths: [{ROOT / 'src'}]")
        .replace("- scripts/griffe_sphinx_roles.py", f"- {ROOT / 'scripts/griffe_sphinx_roles.py'}")
    )
    (tmp_path / "mkdocs.yml").write_text(config)
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(tmp_path / "mkdocs.yml")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    output = build.stdout + build.stderr
    assert build.returncode != 0, output
    assert "orphan.md" in output
    assert "'nowhere.md'" in output
    assert "#no-such-heading" in output
    assert "Aborted with 3 warnings in strict mode" in output, output  # and no others


def _roles_extension() -> ModuleType:
    pytest.importorskip("griffe")
    spec = importlib.util.spec_from_file_location(
        "griffe_sphinx_roles", ROOT / "scripts" / "griffe_sphinx_roles.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sphinx_roles_become_optional_cross_references_resolved_in_scope() -> None:
    roles = _roles_extension()
    import griffe

    modules = {
        "__init__.py": "from pkg.codecs import JsonCodec\n",
        "codecs.py": (
            "class JsonCodec:\n"
            '    """See :meth:`encode`, :class:`~pkg.store.Store`, :mod:`.store`,\n'
            "    :func:`helper()`, :class:`Missing` and :meth:`Store.put\n"
            "    <pkg.store.Store.put>`. Use it::\n"
            "\n"
            "        JsonCodec().encode()\n"
            "\n"
            "    ::\n"
            "\n"
            "        helper()\n"
            '    """\n'
            "    def encode(self): ...\n"
            "def helper(): ...\n"
        ),
        "store.py": "class Store:\n    def put(self): ...\n",
    }
    extensions = griffe.load_extensions(roles.SphinxRoles())
    with griffe.temporary_visited_package("pkg", modules, extensions=extensions) as pkg:
        docstring = pkg["codecs.JsonCodec"].docstring.value

    def ref(identifier: str, title: str) -> str:
        return f'<autoref identifier="{identifier}" optional><code>{title}</code></autoref>'

    assert ":meth:" not in docstring and ":class:" not in docstring
    assert ref("pkg.codecs.JsonCodec.encode", "encode") in docstring  # a member
    assert ref("pkg.store.Store", "Store") in docstring  # ~ keeps the last part
    assert ref("pkg.store", ".store") in docstring  # relative to the package
    assert ref("pkg.codecs.helper", "helper()") in docstring  # the module's scope
    assert ref("Missing", "Missing") in docstring  # unresolved: code, no failure
    assert ref("pkg.store.Store.put", "Store.put") in docstring  # an explicit target
    assert "Use it:\n\n    JsonCodec().encode()" in docstring  # reST's :: before code
    assert "encode()\n\n\n    helper()" in docstring  # a "::" line before code: dropped
