"""The tokens API, web login and brute-force limits, with the real npm CLI and over HTTP."""

from __future__ import annotations

import base64
import http.client
import re
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pexpect

from tests.support import NopardServer, Npm, make_package

URL = re.compile(r"(http://127\.0\.0\.1:\d+/-/v1/login/[A-Za-z0-9_-]+)")


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def submit_form(server: NopardServer, login_url: str, **fields: str):
    """What a browser does: load the page (keeping its CSRF cookie), post its form back to the same URL."""
    path = urllib.parse.urlsplit(login_url).path
    page = server.request("GET", path)
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    assert b'name="password"' in page.body
    token = re.search(r'name="csrf" value="([^"]+)"', page.body.decode()).group(1)
    return server.request(
        "POST", path, urllib.parse.urlencode({**fields, "csrf": token}),
        headers={"Content-Type": "application/x-www-form-urlencoded",
                 "Cookie": page.headers["set-cookie"].split(";", 1)[0], "Origin": server.url.rstrip("/")},
    )


def flood_logins(server: NopardServer, count: int, source: str) -> None:
    """``count`` anonymous `POST /-/v1/login` from the loopback address ``source``, each answered 200."""
    for _ in range(count):
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30, source_address=(source, 0))
        try:
            connection.request("POST", "/-/v1/login", body=b"{}", headers={"Content-Type": "application/json"})
            answer = connection.getresponse()
            answer.read()
            assert answer.status == 200
        finally:
            connection.close()


def web_npm(server: NopardServer, home: Path) -> Npm:
    """npm with its default (web) auth type, printing the URL instead of opening a browser."""
    return Npm(server.url, home, env={"npm_config_browser": "false", "BROWSER": "false"})


def npm_web_login(npm: Npm, server: NopardServer, command: str, **fields: str) -> tuple[int, str]:
    """Run `npm <command>` (no --auth-type), log in on the page it prints, wait for npm to finish."""
    child = pexpect.spawn(npm.executable, [command], env=npm.env, cwd=str(npm.home), encoding="utf-8", timeout=60)
    child.expect(URL)
    login_url = child.match.group(1)
    answer = submit_form(server, login_url, **fields)
    assert answer.status == 200, answer.body
    child.expect(pexpect.EOF)
    output = child.before or ""
    child.close()
    return child.exitstatus, output


def test_npm_login_default_web_flow(start_nopard: Callable[..., NopardServer], tmp_path: Path) -> None:
    """`npm adduser` and `npm login` without --auth-type: the printed page logs in; whoami works."""
    server = start_nopard()
    first = web_npm(server, tmp_path / "first")
    status, output = npm_web_login(first, server, "adduser", username="alice", password="pw", email="a@example.com")
    assert status == 0, output
    assert first.run("whoami").stdout.strip() == "alice"
    assert "alice:" in (server.registry / "users" / "htpasswd").read_text()

    laptop = web_npm(server, tmp_path / "laptop")
    status, output = npm_web_login(laptop, server, "login", username="alice", password="pw")
    assert status == 0, output
    assert laptop.token() and laptop.token() != first.token()
    assert laptop.run("whoami").stdout.strip() == "alice"
    log = server.log()
    assert "/-/v1/done/<redacted>" in log and "/-/v1/login/<redacted>" in log


def test_npm_login_works_after_a_session_flood_from_another_address(
    start_nopard: Callable[..., NopardServer], tmp_path: Path,
) -> None:
    """1,010 anonymous web login sessions from 127.0.0.2 (past the old 1,000 slots), then `npm login`
    from 127.0.0.1 logs in through its page; a cross-site post of that page is refused."""
    server = start_nopard()
    assert server.login("alice", "pw").status == 201
    flood_logins(server, 1010, "127.0.0.2")
    npm = web_npm(server, tmp_path / "npm")
    status, output = npm_web_login(npm, server, "login", username="alice", password="pw")
    assert status == 0, output
    assert npm.run("whoami").stdout.strip() == "alice"
    started = server.request("POST", "/-/v1/login", {}).json()
    forged = server.request(
        "POST", urllib.parse.urlsplit(started["loginUrl"]).path, "username=alice&password=pw",
        headers={"Content-Type": "application/x-www-form-urlencoded", "Origin": "http://attacker.invalid"})
    assert forged.status == 403 and "nopard_session" not in forged.headers.get("set-cookie", "")
    assert server.request("GET", urllib.parse.urlsplit(started["doneUrl"]).path).status == 202


def test_web_login_over_http(nopard: NopardServer) -> None:
    """POST /-/v1/login, 202 + Retry-After while waiting, 401 page on a wrong password, token once."""
    nopard.login("alice", "pw")
    started = nopard.request("POST", "/-/v1/login", {})
    assert started.status == 200
    urls = started.json()
    assert urls["loginUrl"].startswith(nopard.url + "-/v1/login/")
    assert urls["doneUrl"].startswith(nopard.url + "-/v1/done/")
    done = urllib.parse.urlsplit(urls["doneUrl"]).path
    waiting = nopard.request("GET", done)
    assert waiting.status == 202 and waiting.headers["retry-after"] == "1"
    wrong = submit_form(nopard, urls["loginUrl"], username="alice", password="nope")
    assert wrong.status == 401 and b"incorrect" in wrong.body
    assert nopard.request("GET", done).status == 202
    refused = submit_form(nopard, urls["loginUrl"], username="mallory", password="pw")
    assert refused.status == 401 and b"registration of new users is closed" in refused.body
    assert submit_form(nopard, urls["loginUrl"], username="alice", password="pw").status == 200
    token = nopard.request("GET", done).json()["token"]
    assert nopard.request("GET", "/-/whoami", token=token).json() == {"username": "alice"}
    assert nopard.request("GET", done).status == 404
    gone = nopard.request("GET", "/-/v1/login/unknown")
    assert gone.status == 404 and gone.headers["content-type"].startswith("text/html")
    create = nopard.request("POST", "/-/v1/login", {"create": True}).json()
    page = nopard.request("GET", urllib.parse.urlsplit(create["loginUrl"]).path)
    assert b'name="email"' in page.body and "default-src 'none'" in page.headers["content-security-policy"]


def test_npm_token_list_create_revoke(start_nopard: Callable[..., NopardServer], tmp_path: Path) -> None:
    """`npm token create` (password prompt), `list` shows prefixes only, a read-only token cannot publish,
    `revoke <key>` removes one."""
    server = start_nopard()
    npm = Npm(server.url, tmp_path / "alice")
    status, output = npm.login("adduser", "alice", "correct horse")
    assert status == 0, output

    def create(*flags: str, password: str = "correct horse") -> tuple[int, str]:
        child = pexpect.spawn(npm.executable, ["token", "create", *flags], env=npm.env, cwd=str(npm.home),
                              encoding="utf-8", timeout=60)
        child.expect(r"[Pp]assword: ")
        child.sendline(password)
        child.expect(pexpect.EOF)
        child.close()
        return child.exitstatus, child.before or ""

    status, output = create("--packages-and-scopes-permission=read-only")
    assert status == 0, output
    readonly = re.search(r"Created token (npd_[A-Za-z0-9_-]+)", output).group(1)
    status, output = create("--name=ci")
    assert status == 0, output
    writer = re.search(r"Created token (npd_[A-Za-z0-9_-]+)", output).group(1)
    status, output = create(password="wrong")
    assert status != 0 and "Created token" not in output

    listed = server.request("GET", "/-/npm/v1/tokens", token=npm.token()).json()
    assert listed["total"] == 3 and listed["urls"] == {}
    by_prefix = {o["token"]: o for o in listed["objects"]}
    assert all(len(p) == 8 for p in by_prefix)
    assert by_prefix[readonly[:8]]["readonly"] is True and by_prefix[writer[:8]]["name"] == "ci"
    for path in server.registry.rglob("*"):
        if path.is_file():
            assert readonly.encode() not in path.read_bytes() and writer.encode() not in path.read_bytes()
    shown = npm.run("token", "list").stdout
    assert readonly[:8] in shown and writer[:8] in shown and readonly not in shown

    package = make_package(tmp_path / "pkg", "ro-pkg", "1.0.0")
    ro = Npm(server.url, tmp_path / "ro")
    with ro.userconfig.open("a") as config:
        config.write(f"//127.0.0.1:{server.port}/:_authToken={readonly}\n")
    assert ro.run("whoami").stdout.strip() == "alice"
    refused = ro.run("publish", cwd=package, check=False)
    assert refused.returncode != 0 and "read-only" in refused.stdout + refused.stderr

    key = by_prefix[writer[:8]]["key"]
    assert "Removed 1 token" in npm.run("token", "revoke", key).stdout
    assert server.request("GET", "/-/whoami", token=writer).status == 401
    assert server.request("GET", "/-/npm/v1/tokens", token=npm.token()).json()["total"] == 2
    assert server.request("DELETE", f"/-/npm/v1/tokens/token/{readonly}", token=npm.token()).status == 204
    assert server.request("GET", "/-/whoami", token=readonly).status == 401


def test_tokens_api_over_http(start_nopard: Callable[..., NopardServer]) -> None:
    """Only the caller's tokens are listed and revocable; anonymous gets 401."""
    server = start_nopard({"NOPARD_MAX_USERS": "2"})
    alice, bob = server.token("alice", "pw"), server.token("bob", "pw")
    assert server.request("GET", "/-/npm/v1/tokens").status == 401
    created = server.request("POST", "/-/npm/v1/tokens", {"password": "pw", "readonly": True}, token=alice)
    assert created.status == 200
    body = created.json()
    assert body["token"].startswith("npd_") and body["readonly"] is True and body["cidr_whitelist"] is None
    listed = server.request("GET", "/-/npm/v1/tokens", token=alice).json()
    assert {o["key"] for o in listed["objects"]} >= {body["key"]} and listed["total"] == 2
    assert all(alice.startswith(o["token"]) or body["token"].startswith(o["token"]) for o in listed["objects"])
    assert server.request("DELETE", f"/-/npm/v1/tokens/token/{body['key']}", token=bob).status == 404
    assert server.request("DELETE", f"/-/npm/v1/tokens/token/{alice}", token=bob).status == 404
    wrong = server.request("POST", "/-/npm/v1/tokens", {"password": "nope"}, token=alice)
    assert wrong.status == 401
    assert server.request("DELETE", f"/-/npm/v1/tokens/token/{body['key']}", token=alice).status == 204


def test_failed_logins_get_429_then_the_user_gets_back_in(start_nopard: Callable[..., NopardServer]) -> None:
    """Legacy login, Basic auth and token creation share the count; the window frees the account."""
    server = start_nopard({"NOPARD_LOGIN_ATTEMPTS": "3", "NOPARD_LOGIN_WINDOW": "2"})
    token = server.token("alice", "pw")
    assert server.login("alice", "wrong").status == 401
    assert server.request("GET", "/-/whoami", headers=basic("alice", "wrong")).status == 401
    assert server.request("POST", "/-/npm/v1/tokens", {"password": "wrong"}, token=token).status == 401
    limited = server.login("alice", "pw")
    assert limited.status == 429 and 1 <= int(limited.headers["retry-after"]) <= 2
    assert "too many" in limited.json()["error"]
    assert server.request("GET", "/-/whoami", headers=basic("alice", "pw")).status == 429
    assert server.request("GET", "/-/whoami", token=token).status == 200  # tokens are not limited
    time.sleep(int(limited.headers["retry-after"]) + 0.2)
    assert server.login("alice", "pw").status == 201
