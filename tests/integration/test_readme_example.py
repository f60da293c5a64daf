"""The README's example runs as written (against the test's etcd instead of :2379)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_example_runs(etcd_endpoint: str) -> None:
    text = README.read_text()
    example = re.search(r"## Example.*?```python\n(.*?)```", text, re.S)
    assert example is not None
    code = example.group(1).replace("127.0.0.1:2379", etcd_endpoint)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['hello', 'sharded', 'world']"
