"""A private, throw-away PostgreSQL server for exercising multi-machine search storage locally.

`python -m edgeslim.search.pgcluster run -- CMD...` runs `initdb` into a temporary folder, starts the
server on a free localhost port, exports EDGESLIM_PG_URL=postgresql://postgres@127.0.0.1:PORT/edgeslim,
runs CMD, and always stops the server and deletes the folder. PostgreSQL refuses to run as root: as
root the server runs as the `postgres` system user Debian's package creates.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edgeslim.errors import EdgeslimError


def pg_bin(name: str) -> str | None:
    """A PostgreSQL server binary: on PATH, or in Debian's versioned /usr/lib/postgresql/*/bin."""
    found = shutil.which(name)
    if found:
        return found
    hits = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return hits[-1] if hits else None


def cluster_available() -> bool:
    return all(pg_bin(n) for n in ("initdb", "pg_ctl")) and (os.geteuid() != 0 or _user_exists("postgres"))


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_pg(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextmanager
def cluster(db: str = "edgeslim") -> Iterator[str]:
    """Start a private server; yield its SQLAlchemy URL; stop and delete it on exit."""
    if not cluster_available():
        raise EdgeslimError("PostgreSQL server binaries (initdb, pg_ctl) not found; apt-get install postgresql")
    tmp = Path(tempfile.mkdtemp(prefix="edgeslim-pg-"))
    data, sock = tmp / "data", tmp / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(tmp, "postgres")
        shutil.chown(sock, "postgres")
    port = _free_port()
    log = tmp / "server.log"
    try:
        subprocess.run(_as_pg([pg_bin("initdb") or "initdb", "-D", str(data), "-U", "postgres", "-A", "trust",
                               "--no-sync"]), check=True, capture_output=True)
        opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(_as_pg([pg_bin("pg_ctl") or "pg_ctl", "-D", str(data), "-o", opts, "-l", str(log), "-w",
                               "start"]), check=True, capture_output=True)
        _create_db(port, db)
        yield f"postgresql://postgres@127.0.0.1:{port}/{db}"
    finally:
        subprocess.run(_as_pg([pg_bin("pg_ctl") or "pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop"]),
                       capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def _create_db(port: int, db: str) -> None:
    import psycopg2

    for _ in range(50):
        try:
            conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
            break
        except psycopg2.OperationalError:
            time.sleep(0.1)
    else:
        raise EdgeslimError(f"PostgreSQL on port {port} did not accept connections")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{db}"')
    conn.close()


def cluster_demo(out: Path, trials: int = 6) -> int:
    """`make search-cluster`: two `edgeslim search --worker` processes share a study on a private
    PostgreSQL server, then the coordinating search (same storage) fine-tunes the front and reports."""
    model = out / "model"
    exe = [sys.executable, "-m", "edgeslim.cli"]
    if not (model / "spec.json").exists():
        subprocess.run([*exe, "train", "--model", "lenet5", "--task", "digits", "--out", str(model),
                        "--epochs", "20"], check=True)
    common = ["search", str(model), "--task", "digits", "--device", "cortex-m4", "--trials", str(trials),
              "--knobs", "structured,quantize,finetune", "--max-flash", "32KB", "--top", "3"]
    with cluster() as url:
        print(f"PostgreSQL running: {url}", flush=True)
        procs = [subprocess.Popen([*exe, *common, "--storage", url, "--worker", "--out", str(out / f"worker{i}")])
                 for i in range(2)]
        codes = [p.wait() for p in procs]
        if any(codes):
            return max(codes)
        rc = subprocess.run([*exe, *common, "--storage", url, "--out", str(out / "search")]).returncode
        import optuna

        from edgeslim.search.workers import make_storage

        done = optuna.load_study(study_name="edgeslim-search", storage=make_storage(url)).get_trials()
        by: dict[str, int] = {}
        for t in done:
            by[str(t.user_attrs.get("worker"))] = by.get(str(t.user_attrs.get("worker")), 0) + 1
        print(f"{len(done)} trials in PostgreSQL, numbers {sorted(t.number for t in done)}, by worker: {by}")
        return rc


def main(argv: list[str]) -> int:
    if argv[:1] == ["demo"]:
        out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else Path("runs/search-cluster")
        return cluster_demo(out)
    if len(argv) < 2 or argv[0] != "run":
        print("usage: python -m edgeslim.search.pgcluster run -- CMD...  |  demo [--out DIR]", file=sys.stderr)
        return 2
    cmd = argv[argv.index("--") + 1:] if "--" in argv else argv[1:]
    with cluster() as url:
        print(f"PostgreSQL running: {url}", flush=True)
        return subprocess.run(cmd, env={**os.environ, "EDGESLIM_PG_URL": url}).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
