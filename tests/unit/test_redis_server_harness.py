"""The redis-server test harness itself: PING, SET/GET, a crash and a restart on the same port."""

from __future__ import annotations

from tests.redis_server import RedisServer, encode_command


def test_encode_command() -> None:
    assert encode_command("SET", "k", b"v\r\n") == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n"


def test_start_command_kill_restart_stop() -> None:
    server = RedisServer()
    with server:
        port = server.port
        assert server.url == f"redis://127.0.0.1:{port}/0"
        assert server.command("PING") == b"+PONG\r\n"
        assert server.command("SET", "greeting", "hello") == b"+OK\r\n"
        assert server.command("GET", "greeting") == b"$5\r\nhello\r\n"
        assert server.command("GET", "missing") == b"$-1\r\n"
        assert server.command("KEYS", "*") == b"*1\r\n$8\r\ngreeting\r\n"

        server.kill()
        assert not server.ping()
        server.restart()
        assert server.port == port
        # No persistence: a restart starts empty.
        assert server.command("KEYS", "*") == b"*0\r\n"
        assert server.command("SET", "again", "1") == b"+OK\r\n"

        server.restart()  # from running: a clean stop, then the same port again
        assert server.port == port and server.ping()
        directory = server.directory
        assert directory is not None and (directory / "redis.log").exists()
    assert not server.ping()
    assert server.directory is None and not directory.exists()
