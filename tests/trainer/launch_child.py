"""A worker for the launcher tests, without TensorFlow: ``python -m tests.trainer.launch_child MODE DIR``.

Modes:

- ``hello``: print a line to stdout and one to stderr, then exit 0.
- ``threads``: print the TensorFlow thread variables it got (``threads intra=N inter=N``, ``-`` when unset), exit 0;
  the oracle of ``launch --groups`` too.
- ``fail-rank1``: every worker writes ``DIR/pid<rank>`` and ``DIR/ready<rank>``; worker 1 waits for the
  others to be ready, then fails with an error line and exit status 3; the others block until stopped.
- ``stubborn``: like ``fail-rank1`` but the waiting workers ignore SIGTERM (only SIGKILL stops them).
- ``block``: every worker writes its pid and ready files, prints ``ready``, and blocks until stopped.
- ``flaky``: the first run of each worker exits 5; a restarted one (marker file present) exits 0.
- ``exitN`` (e.g. ``exit4``): on the first run worker 1 waits for the others to be ready, then exits
  with status N while the others block; once ``DIR/exited`` exists every worker prints
  ``recovered at <address>`` and exits 0.
- ``groups`` (``launch --groups``): every process prints the role `trainer.cluster.resolve` finds in
  its environment (``role ...``) and exits 0.
- ``groups-exit4``: like ``groups``, but worker 1 of group 1 exits 4 on its first run, once every process
  has printed its role; every other process waits until a restarted worker 1 of group 1 has written
  ``DIR/recovered``, then exits 0.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path


def _groups(mode: str, out: Path) -> int:
    from trainer.cluster import resolve

    cluster = resolve(os.environ)
    where = "oracle" if cluster.is_oracle else f"group {cluster.group} rank {cluster.rank}"
    print(f"role {where} of {cluster.groups} groups, oracle {cluster.oracle}, peers {','.join(cluster.peers)}",
          flush=True)
    if mode == "groups":
        return 0
    (out / f"ready-{where.replace(' ', '-')}").write_text("1")  # after its role line: the test counts those
    if (cluster.group, cluster.rank) == (1, 1) and not cluster.is_oracle:
        if not (out / "exited").exists():
            # Fail only once every process of this first attempt has printed its role.
            everyone = 1 + cluster.groups * cluster.num_workers
            deadline = time.monotonic() + 60
            while len(list(out.glob("ready-*"))) < everyone and time.monotonic() < deadline:
                time.sleep(0.05)  # polling the other processes' readiness files
            (out / "exited").write_text("1")
            print("worker 1 of group 1 exits with 4", file=sys.stderr)
            return 4
        (out / "recovered").write_text("1")
        return 0
    deadline = time.monotonic() + 60
    while not (out / "recovered").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # polling for the restarted group's marker file
    return 0


def _threads() -> int:
    intra, inter = (os.environ.get(name, "-") for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"))
    print(f"threads intra={intra} inter={inter}", flush=True)
    return 0


def main(argv: list[str]) -> int:
    mode, out = argv[0], Path(argv[1])
    if mode == "threads":
        return _threads()
    if mode.startswith("groups"):
        return _groups(mode, out)
    config = json.loads(os.environ["TF_CONFIG"])
    rank = config["task"]["index"]
    workers = len(config["cluster"]["worker"])
    if mode == "hello":
        print(f"hello from rank {rank} of {workers} at {config['cluster']['worker'][rank]}")
        print(f"note on stderr from rank {rank}", file=sys.stderr)
        return 0
    if mode == "flaky":
        marker = out / f"failed{rank}"
        if not marker.exists():
            marker.write_text("1")
            print(f"RuntimeError: first run of worker {rank} fails", file=sys.stderr)
            return 5
        print(f"worker {rank} recovered")
        return 0
    if mode.startswith("exit") and (out / "exited").exists():
        print(f"worker {rank} recovered at {config['cluster']['worker'][rank]}")
        return 0
    if mode == "stubborn" and rank != 1:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    (out / f"pid{rank}").write_text(str(os.getpid()))
    (out / f"ready{rank}").write_text("1")
    print(f"address {config['cluster']['worker'][rank]}")
    print("ready", flush=True)
    if (mode in ("fail-rank1", "stubborn") or mode.startswith("exit")) and rank == 1:
        deadline = time.monotonic() + 60
        while not all((out / f"ready{r}").exists() for r in range(workers)) and time.monotonic() < deadline:
            time.sleep(0.05)  # polling the other workers' readiness files
        if mode.startswith("exit"):
            (out / "exited").write_text(mode)
            print(f"worker 1 exits with {mode[4:]}", file=sys.stderr)
            return int(mode[4:])
        print("ValueError: boom on worker 1", file=sys.stderr)
        return 3
    threading.Event().wait()  # block until the launcher stops us
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
