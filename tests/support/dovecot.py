"""A private Dovecot for the IMAP tests: its own temp dir, ports, users, and a test CA for TLS."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from imapclient import IMAPClient

PASSWORD = "secret"  # every test user has it


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_test_ca(directory: Path, name: str = "mailsvc test CA") -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1/localhost signed by it: (ca, cert, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", f"/CN={name}", "-keyout", "ca.key", "-out", "ca.pem", cwd=directory)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
             "-keyout", "server.key", "-out", "server.csr", cwd=directory)
    (directory / "san.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
    )
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.pem",
             cwd=directory)
    return directory / "ca.pem", directory / "server.pem", directory / "server.key"


@dataclass
class Dovecot:
    """One Dovecot instance; ``start`` daemonises it, ``kill`` SIGKILLs its master."""

    root: Path
    users: tuple[str, ...] = ("alice", "bob")
    plain_port: int = field(default_factory=free_port)
    tls_port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"

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
auth_mechanisms = plain login
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
  args = {self.root}/passwd
}}
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
        subprocess.run(["dovecot", "-c", str(self.config)], check=True, capture_output=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection((self.host, self.plain_port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"dovecot did not start:\n{self.log}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        pid = self._pid()
        subprocess.run(["dovecot", "-c", str(self.config), "stop"], capture_output=True)
        if pid is not None:
            self._wait_gone(pid)

    def kill(self) -> None:
        """SIGKILL the master, as a crash would; its children notice and exit."""
        pid = self._pid()
        assert pid is not None, "dovecot is not running"
        os.kill(pid, signal.SIGKILL)
        self._wait_gone(pid)
        deadline = time.monotonic() + 10
        while self._listening() and time.monotonic() < deadline:
            time.sleep(0.02)

    def _listening(self) -> bool:
        try:
            with socket.create_connection((self.host, self.plain_port), timeout=0.2):
                return True
        except OSError:
            return False

    @staticmethod
    def _wait_gone(pid: int) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.02)

    @contextmanager
    def client(self, user: str = "alice", folder: str | None = "INBOX") -> Iterator[IMAPClient]:
        """A plain IMAP client logged in as ``user`` (the tests' side of the mailbox)."""
        client = IMAPClient(self.host, port=self.plain_port, ssl=False, timeout=10)
        client.login(user, PASSWORD)
        if folder:
            client.select_folder(folder)
        try:
            yield client
        finally:
            try:
                client.logout()
            except (OSError, ssl.SSLError):
                pass

    def append(self, raw: bytes, user: str = "alice", folder: str = "INBOX") -> None:
        with self.client(user, None) as client:
            client.append(folder, raw)

    def folder_flags(self, user: str = "alice", folder: str = "INBOX") -> dict[bytes, list[str]]:
        """Message-ID -> flags of every message in the folder."""
        with self.client(user, None) as client:
            if not client.folder_exists(folder):
                return {}
            client.select_folder(folder, readonly=True)
            found = client.fetch("1:*", ["FLAGS", "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"]) \
                if client.folder_status(folder, ["MESSAGES"])[b"MESSAGES"] else {}
            result: dict[bytes, list[str]] = {}
            for data in found.values():
                header = data[b"BODY[HEADER.FIELDS (MESSAGE-ID)]"].strip()
                message_id = header.partition(b":")[2].strip()
                result[message_id] = [f.decode() for f in data[b"FLAGS"]]
            return result


@contextmanager
def running_dovecot(root: Path) -> Iterator[Dovecot]:
    server = Dovecot(root)
    server.start()
    try:
        yield server
    finally:
        server.stop()
