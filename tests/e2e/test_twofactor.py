"""Two-factor authentication and npm 11's token limits with the real npm CLI against twistd nopard:
npm profile enable-2fa / disable-2fa, npm publish --otp, npm access set mfa=publish,
npm token create --expires --cidr, npm token list, and the web login's session token."""

from __future__ import annotations

import http.client
import re
import time
from collections.abc import Callable
from pathlib import Path

import pyotp

from tests.e2e.test_tokens_weblogin import npm_web_login, web_npm
from tests.support import NopardServer, Npm, make_package

PASSWORD = "correct horse"
PASSWORD_PROMPT = r"[Pp]assword: "


def next_code(secret: str) -> str:
    """The authenticator's code of the next 30-second step (taken, as the step either side is):
    the step enable-2fa's own code used is then behind every later request."""
    return pyotp.TOTP(secret).at(time.time() + 30)


def enable_2fa(npm: Npm, mode: str) -> tuple[int, str, str]:
    """npm profile enable-2fa ``mode`` on a terminal: the password, then the code of the secret npm
    prints from nopard's otpauth URL. (exit status, output, secret)."""

    def secret_of(printed: str) -> str:
        return re.findall(r"Or enter code:\s+([A-Z2-7]+)", printed)[-1]

    status, output = npm.prompted("profile", "enable-2fa", mode, answers={
        PASSWORD_PROMPT: lambda printed: PASSWORD,
        r"OTP code from your authenticator: ": lambda printed: pyotp.TOTP(secret_of(printed)).now()})
    return status, output, secret_of(output) if "Or enter code:" in output else ""


def test_enable_2fa_then_publish_needs_otp(start_nopard: Callable[..., NopardServer], tmp_path: Path) -> None:
    """enable-2fa auth-and-writes prints recovery codes; npm publish without --otp fails with EOTP and
    publishes nothing, with --otp it publishes; npm profile get says auth-and-writes."""
    server = start_nopard()
    npm = Npm(server.url, tmp_path / "alice")
    assert npm.login("adduser", "alice", PASSWORD)[0] == 0
    status, output, secret = enable_2fa(npm, "auth-and-writes")
    assert status == 0, output
    assert "2FA successfully enabled" in output and len(re.findall(r"\b[0-9a-f]{64}\b", output)) == 5
    assert "two-factor auth: auth-and-writes" in npm.run("profile", "get").stdout

    package = make_package(tmp_path / "pkg", "otp-pkg", "1.0.0")
    refused = npm.run("publish", cwd=package, check=False)
    assert refused.returncode != 0 and "EOTP" in refused.stdout + refused.stderr
    assert server.request("GET", "/otp-pkg").status == 404
    npm.run("publish", f"--otp={next_code(secret)}", cwd=package)
    assert server.request("GET", "/otp-pkg").json()["dist-tags"] == {"latest": "1.0.0"}


def test_access_mfa_publish_then_disable_2fa(start_nopard: Callable[..., NopardServer], tmp_path: Path) -> None:
    """With 2FA auth-only (publishes need no code), npm access set mfa=publish --otp makes the package's
    publishes need one (EOTP without it); mfa=none lifts it; npm profile disable-2fa --otp turns 2FA off."""
    server = start_nopard()
    npm = Npm(server.url, tmp_path / "alice")
    assert npm.login("adduser", "alice", PASSWORD)[0] == 0
    npm.run("publish", cwd=make_package(tmp_path / "v1", "mfa-pkg", "1.0.0"))
    status, output, secret = enable_2fa(npm, "auth-only")
    assert status == 0, output
    npm.run("publish", cwd=make_package(tmp_path / "v2", "mfa-pkg", "1.0.1"))  # auth-only: no code
    npm.run("access", "set", "mfa=publish", "mfa-pkg", f"--otp={next_code(secret)}")
    later = make_package(tmp_path / "v3", "mfa-pkg", "1.0.2")
    refused = npm.run("publish", cwd=later, check=False)
    assert refused.returncode != 0 and "EOTP" in refused.stdout + refused.stderr
    npm.run("publish", f"--otp={next_code(secret)}", cwd=later)
    npm.run("access", "set", "mfa=none", "mfa-pkg", f"--otp={next_code(secret)}")

    status, output = npm.prompted("profile", "disable-2fa", f"--otp={next_code(secret)}",
                                  answers={PASSWORD_PROMPT: lambda printed: PASSWORD})
    assert status == 0 and "Two factor authentication disabled" in output, output
    assert "two-factor auth: disabled" in npm.run("profile", "get").stdout
    npm.run("publish", cwd=make_package(tmp_path / "v4", "mfa-pkg", "1.0.3"))
    assert set(server.request("GET", "/mfa-pkg").json()["versions"]) == {"1.0.0", "1.0.1", "1.0.2", "1.0.3"}


def created_token(npm: Npm, *flags: str) -> str:
    """npm token create ``flags`` (answering its password prompt): the token it printed."""
    status, output = npm.prompted("token", "create", *flags, answers={PASSWORD_PROMPT: lambda printed: PASSWORD})
    assert status == 0, output
    return re.search(r"Created token (npd_[A-Za-z0-9_-]+)", output).group(1)


def whoami_from(server: NopardServer, token: str, source: str) -> int:
    """The status of GET /-/whoami with ``token`` from the loopback address ``source``."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30, source_address=(source, 0))
    try:
        connection.request("GET", "/-/whoami", headers={"Authorization": f"Bearer {token}"})
        answer = connection.getresponse()
        answer.read()
        return answer.status
    finally:
        connection.close()


def test_token_create_with_expiry_and_cidr(start_nopard: Callable[..., NopardServer], tmp_path: Path) -> None:
    """npm token create --expires 1 --cidr 127.0.0.1/32 --name: npm prints the ranges and expiry,
    npm token list shows them; a token for 127.0.0.2/32 is 403 from 127.0.0.1 and works from 127.0.0.2;
    one for 10.0.0.0/8 makes npm whoami fail with the 403's message."""
    server = start_nopard()
    npm = Npm(server.url, tmp_path / "alice")
    assert npm.login("adduser", "alice", PASSWORD)[0] == 0
    status, output = npm.prompted("token", "create", "--expires=1", "--cidr=127.0.0.1/32", "--name=ci",
                                  answers={PASSWORD_PROMPT: lambda printed: PASSWORD})
    assert status == 0, output
    assert "with IP whitelist: 127.0.0.1/32" in output and re.search(r"expires: \d{4}-\d\d-\d\dT", output)
    listed = npm.run("token", "list").stdout
    assert "name ci" in listed and "with IP whitelist: 127.0.0.1/32" in listed

    second = created_token(npm, "--cidr=127.0.0.2/32")
    assert whoami_from(server, second, "127.0.0.1") == 403
    assert whoami_from(server, second, "127.0.0.2") == 200

    elsewhere = created_token(npm, "--cidr=10.0.0.0/8")
    other = Npm(server.url, tmp_path / "other")
    with other.userconfig.open("a") as config:
        config.write(f"//127.0.0.1:{server.port}/:_authToken={elsewhere}\n")
    refused = other.run("whoami", check=False)
    assert refused.returncode != 0 and "10.0.0.0/8" in refused.stdout + refused.stderr


def test_web_login_token_expires(start_nopard: Callable[..., NopardServer], tmp_path: Path) -> None:
    """npm login (web) with NOPARD_SESSION_TOKEN_TTL=3: whoami works, then the token is 401 saying it expired."""
    server = start_nopard({"NOPARD_SESSION_TOKEN_TTL": "3"})
    assert server.login("alice", PASSWORD).status == 201
    npm = web_npm(server, tmp_path / "laptop")
    status, output = npm_web_login(npm, server, "login", username="alice", password=PASSWORD)
    assert status == 0, output
    assert npm.run("whoami").stdout.strip() == "alice"
    time.sleep(3.2)
    told = server.request("GET", "/-/whoami", token=npm.token())
    assert told.status == 401 and "expired" in told.json()["error"]
    refused = npm.run("whoami", check=False)
    assert refused.returncode != 0 and "E401" in refused.stderr  # npm prints its own words for a 401
