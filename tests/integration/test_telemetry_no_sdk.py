"""With the OpenTelemetry SDK not even importable, a chat shard and a client still work
(the library imports the API only). Run in a subprocess whose import system refuses
``opentelemetry.sdk`` and the Prometheus exporter."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys

    class NoSdk(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.startswith(("opentelemetry.sdk", "opentelemetry.exporter", "prometheus")):
                raise ImportError(f"{name} is not installed here")
            return None

    sys.meta_path.insert(0, NoSdk())

    from shardroute.client import ShardClient
    from shardroute.discovery.memory import InMemoryTopologySource
    from shardroute.errors import ConfigError
    from shardroute.examples.chat import ChatShard, chat_pb2, chat_pb2_grpc
    from shardroute.model import Shard
    from shardroute.telemetry import sdk_configured, serve_prometheus

    assert not sdk_configured()
    shard = ChatShard(shard_id="s1", service="chat", etcd=None, token_delay_s=0).start()
    try:
        source = InMemoryTopologySource("chat", [Shard("s1", shard.address)])
        with ShardClient(source) as client:
            chat = client.stub(chat_pb2_grpc.ChatStub)
            request = chat_pb2.GenerateRequest(prompt="hi", max_tokens=2)
            tokens = list(chat.Generate(request, session_key="conv-1", timeout=10))
            assert tokens and tokens[-1].shard_id == "s1"
        try:
            serve_prometheus(9999)
        except ConfigError as exc:
            assert "shardroute[otel]" in str(exc)
        else:
            raise AssertionError("serve_prometheus worked without the SDK")
    finally:
        shard.stop(0)
    print("OK")
    """
)


def test_a_shard_and_a_client_work_without_the_sdk_installed() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "OK"
