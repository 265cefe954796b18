"""A real two-node Slurm on localhost for tests: munge, MariaDB + slurmdbd, slurmctld, two slurmd.

Everything lives under one fresh folder per test session (config, state, spools, logs, the
database), so the controller's job ids and the accounting database always start empty together: a
stale database with a fresh controller reuses job ids and submitit then reads stale states. Only
daemons this module started are stopped, by pid. Measured facts this follows are in issue 4.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.provision import SLURM_NODES, SLURM_PROGRAMS
from tests.system import require_hosts, require_programs, require_root

NODES = SLURM_NODES
CLUSTER = "gangrun"
PARTITION = "debug"
# Away from Slurm's defaults (6817-6819), so a site's own daemons are never in the way.
CTLD_PORT, DBD_PORT, SLURMD_PORT_BASE = 16817, 16819, 17000
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")


def slurm_conf(root: Path, controller: str, cpus: int) -> str:
    """slurm.conf for two slurmd on 127.0.0.1, each with its own port, spool and pid file."""
    nodes = "\n".join(
        f"NodeName={name} NodeAddr=127.0.0.1 NodeHostname={name} Port={SLURMD_PORT_BASE + i + 1} "
        f"CPUs={cpus} State=UNKNOWN"
        for i, name in enumerate(NODES))
    return f"""\
ClusterName={CLUSTER}
SlurmctldHost={controller}
SlurmctldPort={CTLD_PORT}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=batch_sched_delay=0
CommunicationParameters=NoInAddrAny
ReturnToService=2
MailProg=/bin/true
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort={DBD_PORT}
InactiveLimit=0
KillWait=30
# sbatch --wait polls every 2 s with a small MinJobAge (at 2, 10, 42 s... with the default 300);
# finished jobs then leave `scontrol show job` soon, and sacct still has them.
MinJobAge=5
{nodes}
PartitionName={PARTITION} Nodes={",".join(NODES)} Default=YES MaxTime=INFINITE State=UP
"""


def slurmdbd_conf(root: Path) -> str:
    return f"""\
AuthType=auth/munge
DbdHost=localhost
DbdPort={DBD_PORT}
SlurmUser=root
PidFile={root}/slurmdbd.pid
LogFile={root}/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
"""


@dataclass
class SlurmCluster:
    """A running cluster: its folder, the environment clients need, and the daemons we own."""

    root: Path
    env: dict[str, str]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    scratch: list[Path] = field(default_factory=list)

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(argv), env=self.env, check=check, capture_output=True, text=True)

    def job_field(self, job_id: str, name: str) -> str:
        """One field of `scontrol show job` (JobState, Reason, Restarts, ExitCode...)."""
        out = self.run("scontrol", "show", "job", "-o", job_id).stdout
        for word in out.split():
            key, _, value = word.partition("=")
            if key == name:
                return value
        raise KeyError(f"{name} not in: {out}")

    def wait_until_requeued(self, job_id: str, timeout: float = 120) -> None:
        """Until a job that asked for its first requeue is pending again, for the controller
        (Restarts=1) and for accounting, so that a test may then start it at once.

        Accounting alone is not enough: it lags the controller, and can still read the PENDING of
        before the job first started. Started within the same second as its requeue, the job fails
        instead: slurmd refuses it ("Job credential revoked": Slurm's cred_revoked() holds a credential
        revoked when ``cred->ctime <= j->revoked``, both in whole seconds), which ended a CI run's Charliecloud
        test, and, with both states already read, a CI run's preemption test (requeue at .289, start
        at .855 of one second). So this returns only once a new second has begun since it saw both.
        """
        deadline = time.monotonic() + timeout
        while (self.job_field(job_id, "Restarts") != "1"
               or self.run("sacct", "-n", "-X", "-o", "State", "-j", job_id).stdout.strip() != "PENDING"):
            if time.monotonic() > deadline:
                shown = self.run("scontrol", "show", "job", job_id).stdout
                raise TimeoutError(f"job {job_id} was not requeued: {shown}")
            time.sleep(0.2)
        seen = time.time()
        time.sleep(math.floor(seen) + 1.1 - seen)

    def stop(self) -> None:
        """Cancel this cluster's jobs, then SIGTERM our daemons, newest first.

        A job outlives a stopped slurmd (slurmstepd carries on), and the next session's job with
        the same id would meet its torchrun store on the same port.
        """
        if self.procs and self.procs[-1].poll() is None:
            self.run("scancel", "--full", "--signal=KILL", *self.run("squeue", "-h", "-o", "%i").stdout.split(),
                     check=False)
            deadline = time.monotonic() + 30
            while self.run("squeue", "-h", check=False).stdout.strip() and time.monotonic() < deadline:
                time.sleep(0.2)
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for folder in self.scratch:
            shutil.rmtree(folder, ignore_errors=True)


def _wait(what: str, ready: Callable[[], bool], timeout_s: float, log: Path | None = None,
          proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll until ready; fail at once, with the log's tail, when the daemon has already exited."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and (proc is None or proc.poll() is None):
        if ready():
            return
        time.sleep(0.1)
    tail = log.read_text()[-2000:] if log is not None and log.exists() else ""
    raise RuntimeError(f"{what} did not become ready in {timeout_s:.0f} s (see {log})\n{tail}")


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _munge_works() -> bool:
    return subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode == 0


def start_cluster(root: Path) -> SlurmCluster:
    """Check what tests/provision.py provides (or skip), then start every daemon by hand and wait for idle nodes."""
    why = "Slurm on localhost"
    require_programs(SLURM_PROGRAMS, why)
    # torchrun's rendezvous host is a node name: node1 and node2 must resolve to this machine.
    require_hosts(why)
    # Daemons as root, a database folder owned by mysql.
    require_root(why)
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool"):
        (root / sub).mkdir(exist_ok=True)
    controller = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(root, controller, os.cpu_count() or 1))
    dbd_conf = root / "slurmdbd.conf"
    dbd_conf.write_text(slurmdbd_conf(root))
    dbd_conf.chmod(0o600)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    cluster = SlurmCluster(root, env)

    def start(argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        # The daemon keeps its own copy of the log's descriptor; ours closes at once.
        with (root / "daemons.log").open("ab") as logs:
            proc = subprocess.Popen(argv, env={**env, **kwargs.pop("env", {})}, stdout=logs, stderr=logs,
                                    start_new_session=True, **kwargs)
        cluster.procs.append(proc)
        return proc

    try:
        if not _munge_works():
            # A site's munged, if running, is reused and left alone; else we run our own.
            subprocess.run(["install", "-d", "-o", "munge", "-g", "munge", "-m", "0755", str(MUNGE_SOCKET.parent)],
                           check=True)
            munged = start(["munged", "-F", "--force"], user="munge", group="munge")
            _wait("munged", _munge_works, 10, root / "daemons.log", munged)
        # mariadbd runs as mysql, which cannot enter pytest's private (0700) folders: its data,
        # socket, pid and log live in a folder of its own.
        db_home = Path(tempfile.mkdtemp(prefix="gangrun-mariadb-"))
        cluster.scratch.append(db_home)
        db, db_run = db_home / "db", db_home / "run"
        for folder in (db_home, db, db_run):
            folder.mkdir(exist_ok=True)
            shutil.chown(folder, "mysql", "mysql")
        db_socket = db_run / "mysqld.sock"
        subprocess.run(["mariadb-install-db", "--user=mysql", f"--datadir={db}", "--skip-test-db",
                        "--auth-root-authentication-method=socket"],
                       check=True, capture_output=True)
        mariadb = start(["mariadbd", "--user=mysql", f"--datadir={db}", f"--socket={db_socket}",
                         "--skip-networking", f"--pid-file={db_run}/mariadb.pid", f"--log-error={db_run}/mariadb.log"])
        _wait("MariaDB", db_socket.exists, 30, db_run / "mariadb.log", mariadb)
        # slurmdbd reaches "localhost" through the client library's socket, which this variable moves.
        dbd = start(["slurmdbd", "-D"], env={"MYSQL_UNIX_PORT": str(db_socket)})
        _wait("slurmdbd", lambda: _port_open(DBD_PORT), 30, root / "slurmdbd.log", dbd)
        ctld = start(["slurmctld", "-D", "-i"])
        _wait("slurmctld", lambda: _port_open(CTLD_PORT), 30, root / "slurmctld.log", ctld)
        for name in NODES:
            # Each slurmd gets its own hostname (UTS namespace), so jobs see node1 and node2.
            start(["unshare", "--uts", "sh", "-c", f'hostname {name} && exec slurmd -D -N {name}'])

        def nodes_idle() -> bool:
            out = cluster.run("sinfo", "-h", "-N", "-o", "%N %t", check=False).stdout.split("\n")
            states = dict(line.split() for line in out if line.strip())
            return all(states.get(n) == "idle" for n in NODES)

        _wait("two idle slurmd", nodes_idle, 60, root / "slurmctld.log")
        # Accounting must know the cluster before sacct answers for its jobs.
        _wait("accounting", lambda: cluster.run("sacct", "-n", "-X", check=False).returncode == 0, 30,
              root / "slurmdbd.log")
    except BaseException:
        cluster.stop()
        raise
    return cluster
