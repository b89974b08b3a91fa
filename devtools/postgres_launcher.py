"""Start a throwaway PostgreSQL server (Debian's `postgresql` package binaries) for tests and
local runs: a new cluster in a temporary folder, on a free loopback port, trust authentication
on 127.0.0.1 only, stopped and removed by `stop()`.

`initdb` refuses to run as root, so as root the cluster is made and run by the package's
`postgres` OS user (`runuser`), in a folder chowned to it; as any other user, by that user.
build/install-postgresql.sh installs the package where it is missing (`make tools`).

    python -m devtools.postgres_launcher      # prints the URL, serves until Ctrl-C
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from devtools.triton_launcher import free_port, tail

SUPERUSER = "postgres"  # the cluster's superuser role (initdb -U), trusted on 127.0.0.1


class PostgresStartError(RuntimeError):
    """PostgreSQL is not installed, or the cluster could not be made or started."""


def pg_binary(name: str) -> Path:
    """`initdb`, `pg_ctl`, ...: the newest /usr/lib/postgresql/<v>/bin (Debian), else PATH."""
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                      key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    found = versions[-1] if versions else shutil.which(name)
    if found is None:
        raise PostgresStartError(f"`{name}` is not installed: run build/install-postgresql.sh "
                                 "(`make tools`), which installs Debian's `postgresql` package")
    return Path(found)


@dataclass
class PostgresServer:
    """A running throwaway cluster; `url(db)` connects as the superuser without a password."""

    root: Path
    port: int
    run_as: list[str]

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def pg_ctl(self, *args: str, check: bool = True, timeout_s: float = 120.0) -> None:
        cmd = [*self.run_as, str(pg_binary("pg_ctl")), "-D", str(self.datadir), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        if check and done.returncode != 0:
            raise PostgresStartError(f"pg_ctl {' '.join(args)} failed ({done.returncode}): "
                                     f"{done.stderr or done.stdout}\nlog:\n{tail(self.log_path)}")

    def start(self) -> None:
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} "
                   "-c max_connections=100")
        self.pg_ctl("-l", str(self.log_path), "-o", options, "-w", "-t", "60", "start")

    def stop(self, remove: bool = True) -> None:
        """Fast shutdown (in-flight transactions rolled back), then remove the cluster."""
        with contextlib.suppress(PostgresStartError, subprocess.TimeoutExpired):
            self.pg_ctl("-m", "fast", "-w", "-t", "60", "stop", check=False)
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)


def start_postgres(port: int | None = None) -> PostgresServer:
    """Make a cluster in a new temporary folder and start it on `port` (default: a free one)."""
    root = Path(tempfile.mkdtemp(prefix="interest-postgres-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError as exc:
            raise PostgresStartError("no `postgres` OS user to run PostgreSQL as (initdb refuses root): "
                                     "run build/install-postgresql.sh") from exc
        os.chown(root, owner.pw_uid, owner.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    server = PostgresServer(root, port or free_port(), run_as)
    init = [*run_as, str(pg_binary("initdb")), "-D", str(server.datadir), "-U", SUPERUSER,
            "--auth-local=trust", "--auth-host=trust", "-E", "UTF8", "--locale=C", "--no-sync"]
    done = subprocess.run(init, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise PostgresStartError(f"initdb failed ({done.returncode}): {done.stderr or done.stdout}")
    # initdb's pg_hba.conf trusts local connections; listen_addresses keeps them on loopback.
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server


def wait_accepting(server: PostgresServer, timeout_s: float = 30.0) -> None:
    """Poll `pg_isready` until the server accepts connections (pg_ctl -w mostly did already)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready = subprocess.run([str(pg_binary("pg_isready")), "-h", "127.0.0.1", "-p", str(server.port)],
                               capture_output=True, timeout=10, check=False)
        if ready.returncode == 0:
            return
        time.sleep(0.2)
    raise PostgresStartError(f"PostgreSQL on port {server.port} not accepting connections; log:\n"
                             f"{tail(server.log_path)}")


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A new cluster accepting connections for the `with` block, stopped and removed after it."""
    server = start_postgres()
    try:
        wait_accepting(server)
        yield server
    finally:
        server.stop()


def main() -> int:
    server = start_postgres()
    wait_accepting(server)
    print(f"PostgreSQL ready: INTEREST_PROFILE_STORE={server.url()}  (Ctrl-C stops and removes it)",
          flush=True)
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stop:
            time.sleep(0.5)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
