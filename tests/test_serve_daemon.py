"""The daemon's ``serve`` service ([serve] in config.toml): a real daemon process serves
the model and its knowledge folder, the page's task view reads the daemon's tasks, and
the control socket's serve_status / serve_reindex work.
A model that cannot load stops the node with one line naming it."""

from __future__ import annotations

import json
import socket

import httpx
import pytest
from serve_tiny import tiny_model_dir

from flockd.config import CONFIG_FILE
from flockd.testnet.cluster import Cluster


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def add_serve_section(datadir, **values) -> None:
    lines = "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())
    path = datadir / CONFIG_FILE
    path.write_text(path.read_text() + "\n[serve]\nenabled = true\n" + lines)


@pytest.mark.slow
def test_a_daemon_serves_its_model_knowledge_and_tasks(short_tmp, tmp_path_factory):
    knowledge = short_tmp / "knowledge"
    knowledge.mkdir()
    (knowledge / "fact.md").write_text("The secret ingredient of the node's soup is cardamom.")
    (knowledge / "other.md").write_text("Bicycles have two wheels and a chain.")
    cluster = Cluster(short_tmp, 1)
    cluster.init()
    d = cluster.daemons[0]
    port = free_port()
    add_serve_section(d.datadir, model_dir=str(tiny_model_dir(tmp_path_factory)), model_name="tiny",
                      knowledge=str(knowledge), port=port, retrieval_top_k=1)
    cluster.start_daemon(d, bootstrap=None)
    try:
        cluster.wait_ready(d, 120)
        url = f"http://127.0.0.1:{port}"
        assert [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]] == ["tiny"]
        reply = httpx.post(url + "/v1/chat/completions", timeout=60, json={
            "model": "tiny", "messages": [{"role": "user", "content": "What is the secret ingredient of the soup?"}],
            "max_tokens": 4,
        }).json()
        assert [s["file"] for s in reply["sources"]] == ["fact.md"]  # the server's default top_k = 1
        assert httpx.get(url + "/api/tasks").json() == {"available": True, "tasks": []}
        assert "serve" in d.call("node_status")["services"]
        status = d.call("serve_status")
        assert status["port"] == port and status["chunks"] == 2 and status["counters"]["retrievals"] == 1
        # A new document is found after serve_reindex, without a restart:
        (knowledge / "new.md").write_text("The ferry to the node's island leaves at dawn.")
        assert d.call("serve_reindex") == {"added": 1, "changed": 0, "removed": 0, "unchanged": 2, "chunks": 3}
        reply = httpx.post(url + "/v1/chat/completions", timeout=60, json={
            "model": "tiny", "messages": [{"role": "user", "content": "When does the ferry leave?"}], "max_tokens": 2,
        }).json()
        assert [s["file"] for s in reply["sources"]] == ["new.md"]
    finally:
        cluster.stop()


@pytest.mark.slow
def test_a_model_that_cannot_load_stops_the_node_with_its_reason(short_tmp):
    cluster = Cluster(short_tmp, 1)
    cluster.init()
    d = cluster.daemons[0]
    add_serve_section(d.datadir, model_dir=str(short_tmp / "no-such-model"), port=free_port())
    cluster.start_daemon(d, bootstrap=None)
    assert d.process is not None and d.process.wait(timeout=120) == 1
    assert "serve:" in cluster.last_words(d)
