"""Users, tokens and the read/write policy over HTTP."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Callable

from tests.support import NopardServer, files_under, publish_body


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_registration_closes_after_the_first_user(nopard: NopardServer) -> None:
    """By default the first login registers; a second new user is refused as a wrong password is (401)."""
    assert nopard.login("alice", "pw").status == 201
    answer = nopard.login("mallory", "pw")
    assert answer.status == 401
    assert "registration of new users is closed" in answer.json()["error"]
    assert nopard.login("alice", "wrong").json() == answer.json()
    assert (nopard.registry / "users" / "htpasswd").read_text().count("\n") == 1


def test_max_users_zero_disables_registration(start_nopard: Callable[..., NopardServer]) -> None:
    """NOPARD_MAX_USERS=0: nobody can register, and nothing is written (the store holds only what
    nopard writes at its first start: its signing key)."""
    server = start_nopard({"NOPARD_MAX_USERS": "0"})
    assert server.login("alice", "pw").status == 401
    assert files_under(server.registry) == ["signing/keys.json"]


def test_wrong_password_gets_401_with_basic_challenge(nopard: NopardServer) -> None:
    """Logging in as an existing user with a wrong password: 401 + WWW-Authenticate: Basic."""
    nopard.login("alice", "right")
    answer = nopard.login("alice", "wrong")
    assert answer.status == 401
    assert answer.headers["www-authenticate"] == 'Basic realm="nopard"'
    assert "token" not in answer.json()


def test_login_again_gives_a_fresh_token(nopard: NopardServer) -> None:
    """Each login hands out a new token; both work."""
    first, second = nopard.token("alice", "pw"), nopard.token("alice", "pw")
    assert first != second
    for token in (first, second):
        assert nopard.request("GET", "/-/whoami", token=token).json() == {"username": "alice"}


def test_tokens_are_stored_only_as_hashes(nopard: NopardServer) -> None:
    """No file in the registry contains a token handed out."""
    token = nopard.token("alice", "pw")
    for path in nopard.registry.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes()


def test_whoami_accepts_basic_and_refuses_anonymous(nopard: NopardServer) -> None:
    """GET /-/whoami: Basic credentials work; no credentials get 401."""
    nopard.login("alice", "pw")
    assert nopard.request("GET", "/-/whoami", headers=basic("alice", "pw")).json() == {"username": "alice"}
    anonymous = nopard.request("GET", "/-/whoami")
    assert anonymous.status == 401 and anonymous.json()["error"]


def test_publish_with_basic_credentials(nopard: NopardServer) -> None:
    """Basic authentication is accepted for writes too."""
    nopard.login("alice", "pw")
    answer = nopard.request("PUT", "/pkg", publish_body("pkg", "1.0.0"), headers=basic("alice", "pw"))
    assert answer.status == 201


def test_logout_revokes_and_is_idempotent(nopard: NopardServer) -> None:
    """DELETE /-/user/token/<token> revokes it; repeating it still answers ok."""
    token = nopard.token("alice", "pw")
    for _ in range(2):
        answer = nopard.request("DELETE", f"/-/user/token/{token}", token=token)
        assert answer.status == 200 and answer.json() == {"ok": True}
    assert nopard.request("GET", "/-/whoami", token=token).status == 401
    assert "method=DELETE path=/-/user/token/<redacted> status=200" in nopard.log()
    assert token not in nopard.log()


def test_auth_read_requires_login_for_reads(start_nopard: Callable[..., NopardServer]) -> None:
    """NOPARD_AUTH_READ=yes: anonymous reads get 401; a token reads."""
    server = start_nopard({"NOPARD_AUTH_READ": "yes"})
    token = server.token("alice", "pw")
    assert server.request("PUT", "/pkg", publish_body("pkg", "1.0.0"), token=token).status == 201
    for path in ("/pkg", "/pkg/1.0.0", "/pkg/-/pkg-1.0.0.tgz"):
        assert server.request("GET", path).status == 401
        assert server.request("GET", path, token=token).status == 200


def test_auth_write_off_allows_anonymous_publish(start_nopard: Callable[..., NopardServer]) -> None:
    """NOPARD_AUTH_WRITE=no: an anonymous publish lands."""
    server = start_nopard({"NOPARD_AUTH_WRITE": "no"})
    assert server.request("PUT", "/pkg", publish_body("pkg", "1.0.0")).status == 201
    assert server.request("GET", "/pkg").json()["versions"]["1.0.0"]["_npmUser"]["name"] == "anonymous"


def test_htpasswd_lines_made_by_apache_htpasswd_work(start_nopard: Callable[..., NopardServer], tmp_path) -> None:
    """A user added with `htpasswd -B` logs in; the wrong password does not."""
    path = tmp_path / "users.htpasswd"
    subprocess.run(["htpasswd", "-B", "-b", "-c", str(path), "carol", "apache-made"], check=True,
                   capture_output=True)
    server = start_nopard({"NOPARD_HTPASSWD": str(path), "NOPARD_MAX_USERS": "0"})
    assert server.login("carol", "apache-made").status == 201
    assert server.login("carol", "other").status == 401
