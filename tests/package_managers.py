"""The real JS package managers the end-to-end tests drive (npm 11, yarn 1, yarn 4, pnpm), each
with its own HOME, configuration and cache, from $NOPARD_TEST_CLIENTS (tests/support.clients_bin).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pexpect

from tests.support import Npm, clients_bin


def clients_modules() -> Path:
    """The node_modules folder scripts/test installed the real clients into."""
    return clients_bin().parent


def client_env(home: Path, **extra: str) -> dict[str, str]:
    """A clean environment for a package manager: its own HOME, no inherited npm/yarn/pnpm settings."""
    keep = ("PATH", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update({"HOME": str(home), "NO_COLOR": "1", "FORCE_COLOR": "0",
                "XDG_CONFIG_HOME": str(home / ".config"), "XDG_CACHE_HOME": str(home / ".cache"),
                "XDG_DATA_HOME": str(home / ".local" / "share"), "XDG_STATE_HOME": str(home / ".local" / "state")})
    env.update(extra)
    return env


def registry_key(registry: str) -> str:
    """``//host:port/path/``: the .npmrc prefix credentials for ``registry`` are saved under."""
    return registry.split(":", 1)[1] if registry.startswith("http") else registry


@dataclass
class PackageManager:
    """A real JS package manager (npm, yarn 1, yarn 4, pnpm) with its own HOME, config and cache.

    Subclasses set ``name``, ``lockfile`` and ``command()``; ``install``, ``frozen_install``,
    ``publish`` and ``login`` drive it.
    """

    registry: str
    home: Path
    name = "?"
    lockfile = "?"

    def __post_init__(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.env = client_env(self.home)
        self.configure_home()

    def configure_home(self) -> None:
        """Write the per-HOME configuration files."""

    def prepare(self, project: Path) -> None:
        """Write the per-project configuration files a project needs before an install."""

    def command(self) -> list[str]:
        raise NotImplementedError

    def run(self, *args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
        """Run the client; fail with its output unless it exits 0 (when ``check``)."""
        result = subprocess.run(
            [*self.command(), *args], cwd=cwd, env=self.env,
            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{self.name} {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def spawn(self, *args: str, cwd: Path) -> pexpect.spawn:
        """The client under a pseudo-terminal, for its prompts."""
        command = self.command()
        return pexpect.spawn(command[0], [*command[1:], *args], env=self.env, cwd=str(cwd),
                             encoding="utf-8", timeout=60)

    def save_token(self, token: str) -> None:
        """Save an auth token for the registry the way this client reads it."""
        with open(self.home / ".npmrc", "a") as npmrc:
            npmrc.write(f"{registry_key(self.registry)}:_authToken={token}\n")


class NpmClient(PackageManager):
    name, lockfile = "npm", "package-lock.json"

    def configure_home(self) -> None:
        self.npm = Npm(self.registry, self.home)
        self.env = self.npm.env

    def command(self) -> list[str]:
        return [self.npm.executable]

    def save_token(self, token: str) -> None:
        with open(self.npm.userconfig, "a") as npmrc:
            npmrc.write(f"{registry_key(self.registry)}:_authToken={token}\n")

    def install(self, project: Path) -> None:
        self.run("install", "--no-audit", cwd=project)

    def frozen_install(self, project: Path) -> None:
        self.run("ci", "--no-audit", cwd=project)

    def publish(self, directory: Path) -> None:
        self.run("publish", cwd=directory)


class Yarn1(PackageManager):
    """yarn 1 (classic), run from its JS entry point (yarn 4 may own the `yarn` bin link)."""

    name, lockfile = "yarn1", "yarn.lock"

    def configure_home(self) -> None:
        # Run as root, yarn 1 reads and writes its "home" .yarnrc in /usr/local/share, not
        # $HOME, unless it believes it runs under fakeroot: keep every test's config its own.
        self.env["FAKEROOTKEY"] = "nopard-tests"
        (self.home / ".yarnrc").write_text(
            f'registry "{self.registry}"\ncache-folder "{self.home / "yarn-cache"}"\n'
            "disable-self-update-check true\n")
        (self.home / ".npmrc").touch()

    def command(self) -> list[str]:
        return ["node", str(clients_modules() / "yarn" / "bin" / "yarn.js")]

    def install(self, project: Path) -> None:
        self.run("install", "--non-interactive", "--no-progress", cwd=project)

    def frozen_install(self, project: Path) -> None:
        self.run("install", "--frozen-lockfile", "--non-interactive", "--no-progress", cwd=project)

    def publish(self, directory: Path) -> None:
        version = json.loads((directory / "package.json").read_text())["version"]
        self.run("publish", "--non-interactive", "--new-version", version, "--no-git-tag-version", cwd=directory)

    def login_and_publish(self, directory: Path, user: str, password: str, email: str) -> tuple[int, str]:
        """`yarn login` (username, email), then `yarn publish`, which asks for the password."""
        child = self.spawn("login", cwd=directory)
        output = ""
        for prompt, answer in (("npm username: ", user), ("npm email: ", email)):
            child.expect(prompt)
            child.sendline(answer)
        child.expect(pexpect.EOF)
        output += child.before or ""
        child.close()
        if child.exitstatus != 0:
            return child.exitstatus, output
        version = json.loads((directory / "package.json").read_text())["version"]
        child = self.spawn("publish", "--new-version", version, "--no-git-tag-version", cwd=directory)
        child.expect("npm password: ")
        child.sendline(password)
        child.expect(pexpect.EOF)
        output += child.before or ""
        child.close()
        return child.exitstatus, output


class Yarn4(PackageManager):
    """yarn 4 (berry), run from @yarnpkg/cli-dist's bundle without corepack."""

    name, lockfile = "yarn4", "yarn.lock"

    def configure_home(self) -> None:
        (self.home / ".yarnrc.yml").write_text(
            "enableTelemetry: false\nenableGlobalCache: false\nenableProgressBars: false\n"
            f'globalFolder: "{self.home / "yarn-global"}"\n')
        # CI=true would make installs immutable by default; keep the default behaviour.
        self.env["YARN_ENABLE_IMMUTABLE_INSTALLS"] = "false"

    def prepare(self, project: Path) -> None:
        (project / ".yarnrc.yml").write_text(
            f'npmRegistryServer: "{self.registry.rstrip("/")}"\n'
            # localhost: the test bucket's host, that tarball redirects lead to (test_s3_redirect).
            'unsafeHttpWhitelist:\n  - "127.0.0.1"\n  - "localhost"\n'
            "nodeLinker: node-modules\n"
            # yarn >= 4.10 ignores versions younger than a day by default ("quarantined").
            'npmMinimalAgeGate: "0"\n'
            f'cacheFolder: "{self.home / "yarn-cache"}"\n')
        lock = project / "yarn.lock"
        if not lock.exists():
            lock.touch()  # marks the project root

    def command(self) -> list[str]:
        return ["node", str(clients_modules() / "@yarnpkg" / "cli-dist" / "bin" / "yarn.js")]

    def install(self, project: Path) -> None:
        self.prepare(project)
        self.run("install", "--no-immutable", cwd=project)

    def frozen_install(self, project: Path) -> None:
        self.prepare(project)
        self.run("install", "--immutable", "--check-cache", cwd=project)

    def save_token(self, token: str) -> None:
        with open(self.home / ".yarnrc.yml", "a") as rc:
            rc.write(f'npmRegistries:\n  "{self.registry.rstrip("/")}":\n    npmAuthToken: "{token}"\n')

    def login(self, directory: Path, user: str, password: str) -> tuple[int, str]:
        """`yarn npm login`: answer its username and password prompts."""
        self.prepare(directory)
        child = self.spawn("npm", "login", cwd=directory)
        child.expect("Username")
        child.sendline(user)
        child.expect("Password")
        child.sendline(password)
        child.expect(pexpect.EOF)
        output = child.before or ""
        child.close()
        return child.exitstatus, output

    def publish(self, directory: Path) -> None:
        self.install(directory)  # `yarn npm publish` needs the workspace in the lockfile
        self.run("npm", "publish", cwd=directory)


class Pnpm(PackageManager):
    """pnpm 10 with its store and cache in its HOME."""

    name, lockfile = "pnpm", "pnpm-lock.yaml"

    def configure_home(self) -> None:
        # pnpm retries a failed tarball (a 451 for a blocked version too) twice, after 10 s then
        # 60 s by default: shorter pauses keep both retries and the same outcome, 70 s sooner.
        (self.home / ".npmrc").write_text(
            f"registry={self.registry}\nstore-dir={self.home / 'pnpm-store'}\n"
            f"cache-dir={self.home / 'pnpm-cache'}\nupdate-notifier=false\n"
            "fetch-retry-mintimeout=200\nfetch-retry-maxtimeout=1000\n")

    def command(self) -> list[str]:
        return ["node", str(clients_modules() / "pnpm" / "bin" / "pnpm.cjs")]

    def install(self, project: Path) -> None:
        self.run("install", "--no-frozen-lockfile", cwd=project)

    def frozen_install(self, project: Path) -> None:
        self.run("install", "--frozen-lockfile", cwd=project)

    def publish(self, directory: Path) -> None:
        self.run("publish", "--no-git-checks", cwd=directory)


PACKAGE_MANAGERS: dict[str, type[PackageManager]] = {
    "npm": NpmClient, "yarn1": Yarn1, "yarn4": Yarn4, "pnpm": Pnpm}
