"""When `testnet up` calls a node ready: its API is up, it is connected to every other node
and, where membership runs, it sees all of them alive (a put right after `up` needs that)."""

from __future__ import annotations

from node.testnet import _ready


def status(peers: int, alive: int | None, suspect: int = 0, ready: bool = True) -> dict:
    doc: dict = {"ready": ready, "peers": [{"peer_id": f"p{i}"} for i in range(peers)]}
    if alive is not None:
        doc["membership"] = {"members": [{"state": "alive"}] * alive +
                             [{"state": "suspect"}] * suspect}
    return doc


def test_a_node_is_ready_once_it_sees_every_member_alive() -> None:
    assert _ready(status(5, 6), 6)
    assert not _ready(status(5, 5), 6)  # connected to all, one not yet alive in its view
    assert not _ready(status(5, 5, suspect=1), 6)
    assert not _ready(status(4, 6), 6)  # a peer missing
    assert not _ready(status(5, 6, ready=False), 6)
    assert not _ready(None, 6)  # not answering


def test_without_membership_in_status_peers_are_enough() -> None:
    assert _ready(status(3, None), 4)
    assert not _ready(status(2, None), 4)
    assert _ready({"ready": True, "peers": [], "membership": {"members": "odd"}}, 1)


def test_an_answer_that_is_not_http_means_not_ready_yet() -> None:
    # A socket connected to itself (a free ephemeral port) reads its own request back:
    # `testnet up` crashed on that BadStatusLine instead of polling again.
    import socket
    import threading

    from node.testnet import fetch_status

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def echo() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(conn.recv(4096))  # the request itself, as a self-connect returns it

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    try:
        assert fetch_status(f"http://127.0.0.1:{server.getsockname()[1]}", timeout=5) is None
    finally:
        thread.join(5)
        server.close()
