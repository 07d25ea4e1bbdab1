"""A private Postfix for the tests: its own temp dir, queue, log and bounce capture, no port."""

from __future__ import annotations

import email
import email.policy
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

# Bounces to this domain (the envelope sender of the test mail) land in files, not in the service.
SENDER_DOMAIN = "sender.test"
SENDER = f"anna.seller@{SENDER_DOMAIN}"
# pipe(8) refuses root and postfix; the capture (and pipe mode) run as this user.
PIPE_USER = "nobody"
QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")

# Every service chroot n: Debian's master.cf chroots most of them into /var/spool/postfix.
MASTER_CF = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
capture   unix  -       n       n       -       -       pipe
  flags=R user={pipe_user} argv=/usr/bin/dd status=none of={root}/bounces/${{queue_id}}
{extra}"""


@dataclass
class Postfix:
    """One Postfix instance, configured by ``main`` (main.cf lines) and ``master`` (services)."""

    main: dict[str, str] = field(default_factory=dict)
    master: str = ""
    # Its own 0755 dir under /tmp: postfix and the pipe user cannot traverse pytest's 0700 tmp_path.
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mailsvc-postfix-")))

    def __post_init__(self) -> None:
        self._master: int | None = None
        os.chmod(self.root, 0o755)
        self.config = self.root / "etc"
        self.queue = self.root / "queue"
        data = self.root / "data"
        bounces = self.root / "bounces"
        for folder in (self.config, self.queue, data, bounces):
            folder.mkdir(exist_ok=True)
        shutil.chown(data, "postfix")
        shutil.chown(bounces, PIPE_USER)
        self.write_config()

    def write_config(self) -> None:
        """(Re)write main.cf and master.cf from ``main`` and ``master``."""
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue),
            "data_directory": str(self.root / "data"),
            "myhostname": "mta.postfix-test.example",
            "mydomain": "postfix-test.example",
            "mydestination": "",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "smtp_tls_security_level": "none",
            "maillog_file": str(self.root / "maillog"),
            "maillog_file_prefixes": f"/var, /dev/stdout, {self.root}",
            "queue_run_delay": "2s",
            "minimal_backoff_time": "2s",
            "maximal_backoff_time": "4s",
            "transport_maps": f"inline:{{ {SENDER_DOMAIN}=capture: }}",
            **self.main,
        }
        (self.config / "main.cf").write_text(
            "".join(f"{name} = {value}\n" for name, value in settings.items())
        )
        (self.config / "master.cf").write_text(
            MASTER_CF.format(pipe_user=PIPE_USER, root=self.root, extra=self.master)
        )

    def _postfix(self, *args: str) -> None:
        # Postfix prints its errors only to a terminal or the log: show the log on failure.
        done = subprocess.run(["postfix", "-c", str(self.config), *args],
                              stdin=subprocess.DEVNULL, capture_output=True, check=False)
        if done.returncode:
            raise RuntimeError(f"postfix {' '.join(args)} failed ({done.returncode}):\n"
                               f"{done.stdout.decode()}{done.stderr.decode()}\n{self.log}")

    @property
    def log(self) -> str:
        path = self.root / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""

    @property
    def _pid_file(self) -> Path:
        return self.queue / "pid" / "master.pid"

    def _master_pid(self) -> int | None:
        try:
            return int(self._pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def start(self) -> None:
        self._postfix("check")  # creates the queue folders with their owners
        self._postfix("start")
        self._wait(lambda: _alive(self._master_pid()), "the master to start")
        self._master = self._master_pid()

    def stop(self) -> None:
        if not _alive(self._master):
            return
        self._postfix("stop")  # returns before the master has exited
        # The pid file stays behind (Postfix tells a live master by its lock): watch the process.
        self._wait(lambda: not _alive(self._master), "the master to exit")

    def _wait(self, done: Callable[[], bool], what: str, within: float = 30) -> None:
        deadline = time.monotonic() + within
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}:\n{self.log}")
            time.sleep(0.02)

    def sendmail(self, raw: bytes, *recipients: str, sender: str = SENDER) -> None:
        """Inject a message as a local program would (no SMTP port of our own)."""
        subprocess.run(["sendmail", "-C", str(self.config), "-f", sender, "--", *recipients],
                       input=raw, check=True, capture_output=True)

    def flush(self) -> None:
        """Retry deferred mail now (``postqueue -f``)."""
        subprocess.run(["postqueue", "-c", str(self.config), "-f"], check=True,
                       capture_output=True)

    def queued(self, *queues: str) -> int:
        """Messages in the given queues (all of them by default), counted from the queue files."""
        return sum(
            1 for name in queues or QUEUES
            for path in (self.queue / name).rglob("*") if path.is_file()
        )

    def bounces(self) -> list[email.message.EmailMessage]:
        """The delivery status notifications Postfix sent to the test sender, oldest first."""
        files = sorted((self.root / "bounces").iterdir(), key=lambda p: p.stat().st_mtime)
        return [email.message_from_bytes(f.read_bytes(), policy=email.policy.default)
                for f in files]


def _alive(pid: int | None) -> bool:
    """The process runs (a zombie that init has not reaped yet counts as gone)."""
    if pid is None:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def failed_recipients(bounce: email.message.EmailMessage) -> set[str]:
    """The Final-Recipient addresses of a DSN (the recipients it reports as failed)."""
    found: set[str] = set()
    for part in bounce.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        for block in part.get_payload():
            if not isinstance(block, email.message.Message):
                continue
            recipient = block.get("Final-Recipient")
            if recipient:
                found.add(str(recipient).partition(";")[2].strip().lower())
    return found


@contextmanager
def running_postfix(main: dict[str, str], master: str = "") -> Iterator[Postfix]:
    server = Postfix(main=main, master=master)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        if not os.environ.get("KEEP_POSTFIX"):  # KEEP_POSTFIX=1 keeps config, queue and log
            shutil.rmtree(server.root, ignore_errors=True)
