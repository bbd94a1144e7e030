"""A real PostgreSQL server for the tests, from Debian's binaries, on loopback.

:class:`PostgresServer` runs ``initdb`` once into a directory of its own, then ``postgres``
listening on 127.0.0.1 with a free port (and a unix socket in that directory), with
password authentication over TCP (a superuser ``clara`` with a random password), so the
tests connect exactly as a worker does, with ``CLARA_DATABASE_URL``. It is ready when its
log says so. :meth:`PostgresServer.stop` and :meth:`PostgresServer.start` take it down and
bring it back on the same port and data (the outage tests).

PostgreSQL refuses to run as root: when the tests run as root, the server runs as the
``postgres`` system user Debian's package creates (``nobody`` if there is none), in a
directory it owns outside the tests' root-only temporary directories. The binaries are the
newest under ``/usr/lib/postgresql/*/bin`` (or ``PG_BINDIR``); without them the fixture
fails with one line saying what to install (``.ci/run`` installs ``postgresql``).

The server trades durability for speed (``fsync=off``): the tests kill clara's processes,
never the machine, and the outbox's own durability is tested on its files.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Self

import asyncpg

from testkit.server_process import free_port, log_tail

BINDIR_ENV = "PG_BINDIR"
SUPERUSER = "clara"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
_READY_LINE = b"database system is ready to accept connections"


class PostgresMissingError(RuntimeError):
    """No PostgreSQL server binaries to run."""


def server_bindir() -> Path:
    """The directory holding ``initdb`` and ``postgres``; :class:`PostgresMissingError`
    when there is none."""
    override = os.environ.get(BINDIR_ENV)
    found = (
        [Path(override)]
        if override
        else sorted(
            Path("/usr/lib/postgresql").glob("*/bin"),
            key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
            reverse=True,
        )
    )
    for bindir in found:
        if all(os.access(bindir / name, os.X_OK) for name in ("initdb", "postgres", "psql")):
            return bindir
    raise PostgresMissingError(
        "no PostgreSQL server binaries (initdb, postgres, psql) under "
        f"{override or '/usr/lib/postgresql/*/bin'}: install Debian's postgresql package "
        f"(`apt-get install postgresql`; .ci/run does) or set {BINDIR_ENV}"
    )


def _server_user() -> pwd.struct_passwd | None:
    """Whom the server runs as: ourselves, or a system user when we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PostgresMissingError("running as root, and neither a postgres nor a nobody user")


class PostgresServer:
    """One PostgreSQL server; ``with PostgresServer() as server: ...``."""

    def __init__(self) -> None:
        self.bindir = server_bindir()
        self.port = free_port()
        self.user = SUPERUSER
        self.password = secrets.token_hex(16)
        self.dir = Path(tempfile.mkdtemp(prefix="clara-pg-"))
        self.data_dir = self.dir / "data"
        self.log_path = self.dir / "postgres.log"
        self._as = _server_user()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def dsn(self, database: str = "postgres", *, password: str | None = None) -> str:
        """``postgresql://clara:<password>@127.0.0.1:<port>/<database>``."""
        secret = self.password if password is None else password
        return f"postgresql://{self.user}:{secret}@127.0.0.1:{self.port}/{database}"

    def init(self) -> None:
        """``initdb`` the data directory (once)."""
        password_file = self.dir / "password"
        password_file.write_text(self.password + "\n")
        if self._as is not None:
            for path in (self.dir, password_file):
                os.chown(path, self._as.pw_uid, self._as.pw_gid)
        result = subprocess.run(
            [
                str(self.bindir / "initdb"),
                *("-D", str(self.data_dir), "-U", self.user, f"--pwfile={password_file}"),
                *("--auth-local=trust", "--auth-host=scram-sha-256"),
                *("-E", "UTF8", "--no-locale", "--no-sync", "--no-instructions"),
            ],
            capture_output=True,
            cwd=self.dir,
            timeout=120,
            check=False,
            **self._user_args(),
        )
        password_file.unlink()
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{result.stderr.decode(errors='replace')}")

    def start(self) -> None:
        """Start the server (again, after :meth:`stop`) and wait until it is ready."""
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [
                    str(self.bindir / "postgres"),
                    *("-D", str(self.data_dir), "-p", str(self.port)),
                    *("-c", "listen_addresses=127.0.0.1"),
                    *("-c", f"unix_socket_directories={self.dir}"),
                    *("-c", "fsync=off", "-c", "synchronous_commit=off"),
                    *("-c", "full_page_writes=off"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.dir,
                start_new_session=True,
                **self._user_args(),
            )
        self._wait_ready(offset)

    def _wait_ready(self, offset: int) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            assert self._proc is not None
            with self.log_path.open("rb") as log:
                log.seek(offset)
                if _READY_LINE in log.read():
                    return
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"postgres exited with {self._proc.returncode}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres not ready after {READY_TIMEOUT}s:\n{self.log_tail()}")
            time.sleep(0.02)  # waiting for its log line: the server offers no other event

    def stop(self) -> None:
        """Fast shutdown (SIGINT: sessions ended, transactions rolled back), bounded."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def create_database(self) -> str:
        """A new empty database; its name."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        self.execute(f"CREATE DATABASE {name}")
        return name

    def drop_database(self, name: str) -> None:
        self.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def execute(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` as the superuser with ``psql`` (bounded); what it printed. Blocking,
        so that sync fixtures can use it while a test's event loop runs."""
        result = subprocess.run(
            [
                str(self.bindir / "psql"),
                *("-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "-d", database),
                *("-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql),
            ],
            env={**os.environ, "PGPASSWORD": self.password, "PGCONNECT_TIMEOUT": "10"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql {sql!r} failed: {result.stderr.strip()}")
        return result.stdout

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    def _user_args(self) -> dict[str, object]:
        if self._as is None:
            return {}
        return {"user": self._as.pw_uid, "group": self._as.pw_gid, "extra_groups": []}

    def __enter__(self) -> Self:
        try:
            self.init()
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


async def query(dsn: str, sql: str, *args: object) -> list[tuple[object, ...]]:
    """The rows of one query, as tuples (bounded)."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return [tuple(row) for row in await conn.fetch(sql, *args, timeout=30)]
    finally:
        await conn.close(timeout=10)


async def until_rows(
    dsn: str,
    sql: str,
    *args: object,
    check: Callable[[list[tuple[object, ...]]], bool] = bool,
    what: str,
    timeout: float = 10.0,
) -> None:
    """Wait (bounded) until the rows of a query pass ``check`` (by default: there is one);
    the server offers no event for what the tests wait on, so this asks every 20 ms."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check(await query(dsn, sql, *args)):
        if loop.time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
