"""A private Dovecot for the IMAP tests: its own temp dir, ports, users, and a test CA for TLS."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from imapclient import IMAPClient

from tests.support.tls import make_test_ca

PASSWORD = "secret"  # every test user has it
# Waits here end as soon as their condition holds; the limits only stop a hopeless wait, and are
# long enough for a machine busy with other work.
DEADLINE = 120.0
# Socket timeout of the tests' own IMAP connections.
CLIENT_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Dovecot:
    """One Dovecot instance; ``start`` daemonises it, ``kill`` crashes it."""

    # Its own 0755 dir under /tmp: the unprivileged Dovecot processes cannot traverse pytest's
    # 0700 tmp_path.
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mailsvc-dovecot-")))
    users: tuple[str, ...] = ("alice", "bob")
    plain_port: int = field(default_factory=free_port)
    tls_port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    # XOAUTH2 and OAUTHBEARER too: tokens checked at this RFC 7662 introspection endpoint, which
    # must answer {"active": true, "username": <the login name>}.
    oauth2_introspection_url: str | None = None

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        self.ca_file, cert, key = make_test_ca(self.root / "tls")
        os.chmod(key, 0o644)  # read by the login process, which runs unprivileged
        (self.root / "mail").mkdir(exist_ok=True)
        (self.root / "log").mkdir(exist_ok=True)
        entry = pwd.getpwnam("dovecot")
        lines = []
        for user in self.users:
            home = self.root / "mail" / user
            home.mkdir(exist_ok=True)
            shutil.chown(home, "dovecot", "dovecot")  # the mail user is dovecot
            lines.append(f"{user}:{{PLAIN}}{PASSWORD}:{entry.pw_uid}:{entry.pw_gid}::{home}")
        (self.root / "passwd").write_text("\n".join(lines) + "\n")
        mechanisms, oauth2_passdb = "plain login", ""
        if self.oauth2_introspection_url:
            mechanisms += " xoauth2 oauthbearer"
            (self.root / "oauth2.conf.ext").write_text(
                "introspection_mode = post\n"
                f"introspection_url = {self.oauth2_introspection_url}\n"
                "force_introspection = yes\n"
                "username_attribute = username\n"
                "active_attribute = active\n"
                "active_value = true\n"
            )
            oauth2_passdb = f"""
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {self.root}/oauth2.conf.ext
}}"""
        self.config = self.root / "dovecot.conf"
        self.config.write_text(f"""
base_dir = {self.root}/run
state_dir = {self.root}/state
log_path = {self.root}/log/dovecot.log
protocols = imap
listen = 127.0.0.1
default_internal_user = dovecot
default_login_user = dovenull
first_valid_uid = 1
disable_plaintext_auth = no
auth_mechanisms = {mechanisms}
# No delay after a failed login: the tests log in with wrong passwords on purpose.
auth_failure_delay = 0
mail_location = maildir:~/Maildir
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
service imap-login {{
  inet_listener imap {{
    port = {self.plain_port}
  }}
  inet_listener imaps {{
    port = {self.tls_port}
    ssl = yes
  }}
}}
passdb {{
  driver = passwd-file
  mechanisms = plain login
  args = {self.root}/passwd
}}{oauth2_passdb}
userdb {{
  driver = passwd-file
  args = {self.root}/passwd
}}
""")

    @property
    def log(self) -> str:
        path = self.root / "log" / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _pid(self) -> int | None:
        path = self.root / "run" / "master.pid"
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError):
            return None

    def start(self) -> None:
        # The daemon inherits stdout/stderr: a pipe there would never reach EOF.
        with (self.root / "log" / "start.log").open("ab") as out:
            subprocess.run(["dovecot", "-c", str(self.config)], check=True,
                           stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        deadline = time.monotonic() + DEADLINE
        while not (self._pid() and self._listening() and self._can_log_in()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"dovecot did not start:\n{self.log}")
            time.sleep(0.02)

    def _can_log_in(self) -> bool:
        """Ready means a login works, not just an open port (after a crash that can lag)."""
        try:
            client = IMAPClient(self.host, port=self.plain_port, ssl=False, timeout=CLIENT_TIMEOUT)
            client.login(self.users[0], PASSWORD)
            client.select_folder("INBOX")  # the mailbox itself answers, not only the login
            client.logout()
        except Exception:
            return False
        return True

    def stop(self) -> None:
        """Stop at once (a clean stop takes seconds); unreaped processes are left to init."""
        self._crash(reaped=False)

    def kill(self) -> None:
        """SIGKILL the master and its processes, as a crash of the host would.

        Killing the master alone leaves the imap processes of open sessions serving them (Dovecot
        does that on purpose), so a client would not notice the crash at all.
        """
        self._crash(reaped=True)

    def _crash(self, *, reaped: bool) -> None:
        pid = self._pid()
        if pid is None:
            return
        group = _process_group(pid)
        with suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)  # the daemon leads its own process group
        # A dead process that init has not reaped yet still "exists": the restarted Dovecot
        # would take the crashed one's locks (dovecot-uidlist.lock) for live ones and wait.
        for each in group if reaped else [pid]:
            self._wait_gone(each, zombie_ok=not reaped)
        (self.root / "run" / "master.pid").unlink(missing_ok=True)
        # Dot-locks of the killed processes (dovecot-uidlist.lock): after a real crash their pids
        # are gone and Dovecot breaks them at once; here an unreaped zombie can keep its pid
        # "alive", and the restarted Dovecot would wait minutes for a lock nobody holds.
        for lock in (self.root / "mail").rglob("*.lock"):
            lock.unlink(missing_ok=True)
        deadline = time.monotonic() + DEADLINE
        while self._listening() and time.monotonic() < deadline:
            time.sleep(0.02)

    def _listening(self) -> bool:
        try:
            with socket.create_connection((self.host, self.plain_port), timeout=CLIENT_TIMEOUT):
                return True
        except OSError:
            return False

    @staticmethod
    def _wait_gone(pid: int, *, zombie_ok: bool) -> None:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            state = _state(pid)
            if state is None or (zombie_ok and state == "Z"):
                return
            time.sleep(0.02)

    @contextmanager
    def client(self, user: str = "alice", folder: str | None = "INBOX") -> Iterator[IMAPClient]:
        """A plain IMAP client logged in as ``user`` (the tests' side of the mailbox)."""
        client = IMAPClient(self.host, port=self.plain_port, ssl=False, timeout=CLIENT_TIMEOUT)
        client.login(user, PASSWORD)
        if folder:
            client.select_folder(folder)
        try:
            yield client
        finally:
            with suppress(OSError, ssl.SSLError):
                client.logout()

    def append(self, raw: bytes, user: str = "alice", folder: str = "INBOX") -> None:
        self.append_all([raw], user, folder)

    def append_all(self, raws: list[bytes], user: str = "alice", folder: str = "INBOX") -> None:
        """Append several messages over one connection."""
        with self.client(user, None) as client:
            for raw in raws:
                client.append(folder, raw)

    def folder_flags(self, user: str = "alice", folder: str = "INBOX") -> dict[bytes, list[str]]:
        """Message-ID -> flags of every message in the folder."""
        with self.client(user, None) as client:
            if not client.folder_exists(folder):
                return {}
            client.select_folder(folder, readonly=True)
            found = client.fetch(client.search("ALL"),
                                 ["FLAGS", "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
            result: dict[bytes, list[str]] = {}
            for data in found.values():
                header = data[b"BODY[HEADER.FIELDS (MESSAGE-ID)]"].strip()
                message_id = header.partition(b":")[2].strip()
                result[message_id] = [f.decode() for f in data[b"FLAGS"]]
            return result


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return None


def _process_group(pgid: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members


@contextmanager
def running_dovecot(
    users: tuple[str, ...] = ("alice", "bob"), oauth2_introspection_url: str | None = None,
) -> Iterator[Dovecot]:
    server = Dovecot(users=users, oauth2_introspection_url=oauth2_introspection_url)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        if not os.environ.get("KEEP_DOVECOT"):  # KEEP_DOVECOT=1 keeps config and logs to read
            shutil.rmtree(server.root, ignore_errors=True)
