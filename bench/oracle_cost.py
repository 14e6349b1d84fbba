"""Benchmarks KerasTuner's chief oracle over gRPC: milliseconds per trial for 1 to 64 concurrent tuners.

    .venv/bin/python bench/oracle_cost.py                          # random and bayesian, 1/4/16/64 tuners
    .venv/bin/python bench/oracle_cost.py --oracles random --tuners 1,4 --epochs 12

What a cluster-scale search pays per trial for its central oracle. This process is the chief: it
builds a real KerasTuner oracle (``RandomSearchOracle`` or ``BayesianOptimizationOracle``) over a
search space shaped like the project's (`trainer.hypermodel.TransferHyperModel.build`: backbone, head,
units and dropout under the head, learning rate, unfreeze depth and fine-tune factor under the
backbone: 7 hyperparameters, 4 of them conditional), writing its state into a temporary project
directory as a search does (``oracle.json`` and every ``trial_N/trial.json``), and serves it with
KerasTuner's own servicer (``keras_tuner.src.distribute.oracle_chief.OracleServicer``) on a gRPC server
on a loopback port, with the one-thread executor of ``oracle_chief.start_server`` (``--server-threads``
to change it). A second process (this file with ``--client``) runs K threads, each one tuner with its
own ``KERASTUNER_TUNER_ID`` and KerasTuner's ``OracleClient``; per trial each does what a tuner's chief
does: one ``create_trial``, E ``update_trial`` calls (one per epoch, ``--epochs``), one ``end_trial``.
The tuners do no training between calls: K tuners keep the oracle as busy as it can be, so the
client latency includes queueing behind the other tuners (KerasTuner serialises every oracle call
with one lock, and the server has one thread).

Reported per configuration (oracle, K, completed trials before the timed window):

- latency per trial as a tuner sees it: median and p95 of (create + E updates + end), in ms, and the
  median create_trial alone (where the bayesian oracle fits its Gaussian process);
- the chief's CPU ms per trial (this process's CPU time over the window / trials): the oracle's
  service demand, which with G groups and a trial of T seconds loads the chief G x demand / T;
- trials per second through the oracle.

Bayesian cost grows with the completed trials (the GP is fit on all of them for every new trial):
``--completed 10,50,100`` runs the bayesian oracle after that many completed trials (filled in
process, with random proposals, before the server starts; each timed trial then adds one more).
The random oracle is timed after the first of them (its cost barely depends on the history).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

OBJECTIVE = "val_accuracy"
UNFREEZE_DEPTHS = [0.0, 0.25, 0.5, 1.0]
BACKBONES = ["small_cnn", "mobilenet_v2", "efficientnet_b0", "resnet50_v2", "vgg16", "inception_v3"]
HEADS = ["gap_dense", "gap_dense_dropout", "flatten_dense_dropout"]


def _counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        counts = ()
    if not counts or any(n < 1 for n in counts):
        raise argparse.ArgumentTypeError(f"Expected comma-separated counts >= 1. Received: {text!r}")
    return counts


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--oracles", default="random,bayesian", help="comma-separated: random, bayesian")
    parser.add_argument("--tuners", type=_counts, default=(1, 4, 16, 64), help="concurrent tuners (default 1,4,16,64)")
    parser.add_argument("--completed", type=_counts, default=(10, 50, 100),
                        help="completed trials before the timed window, bayesian (default 10,50,100)")
    parser.add_argument("--epochs", type=int, default=10, help="update_trial calls per trial (default 10)")
    parser.add_argument("--trials", type=int, default=32,
                        help="timed trials per configuration, at least 1 per tuner (default 32)")
    parser.add_argument("--server-threads", type=int, default=1,
                        help="gRPC server threads (default 1, as keras_tuner's oracle_chief.start_server)")
    parser.add_argument("--seed", type=int, default=42)
    # The client side (the second process); not for users.
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.epochs < 0 or args.trials < 1 or args.server_threads < 1:
        parser.error(f"Expected epochs >= 0, trials >= 1, server threads >= 1. Received: {args.epochs}, "
                     f"{args.trials}, {args.server_threads}")
    return args


def search_space() -> Any:
    """The project's search space, declared as `TransferHyperModel.build` declares it (every backbone)."""
    import keras_tuner as kt

    hp = kt.HyperParameters()
    hp.Choice("backbone", BACKBONES)
    hp.Choice("head", HEADS)
    with hp.conditional_scope("head", ["flatten_dense_dropout"]):
        hp.Choice("units", [64, 128, 256])
    with hp.conditional_scope("head", ["gap_dense_dropout", "flatten_dense_dropout"]):
        hp.Float("dropout", 0.0, 0.5, step=0.1, default=0.2)
    hp.Float("learning_rate", 3e-4, 2e-3, sampling="log", default=1e-3)
    with hp.conditional_scope("backbone", BACKBONES[1:]):
        hp.Choice("unfreeze_depth", UNFREEZE_DEPTHS)
        with hp.conditional_scope("unfreeze_depth", UNFREEZE_DEPTHS[1:]):
            hp.Choice("fine_tune_factor", [0.1, 0.01], default=0.1)
    return hp


def score(values: dict[str, Any], epoch: int) -> float:
    """A made-up, deterministic validation accuracy for a trial's values after `epoch` (rises with epochs)."""
    base = 0.6 + 0.05 * BACKBONES.index(values["backbone"]) / len(BACKBONES) + 0.1 * values.get("dropout", 0.2)
    base -= abs(values["learning_rate"] - 1e-3) * 50
    return min(0.99, base + 0.2 * (1 - 0.8 ** (epoch + 1)))


def make_oracle(kind: str, directory: Path, seed: int) -> Any:
    import keras_tuner as kt

    common = {"objective": kt.Objective(OBJECTIVE, "max"), "max_trials": 1_000_000,
              "hyperparameters": search_space(), "seed": seed}
    if kind == "random":
        oracle = kt.oracles.RandomSearchOracle(**common)
    elif kind == "bayesian":
        oracle = kt.oracles.BayesianOptimizationOracle(num_initial_points=2, **common)
    else:
        raise SystemExit(f"error: Expected an oracle among random, bayesian. Received: {kind!r}")
    oracle._set_project_dir(str(directory), "search")  # what BaseTuner does
    oracle.verbose = 0
    return oracle


def prefill(oracle: Any, completed: int, epochs: int) -> None:
    """Complete `completed` trials in process, with random proposals (the GP is not fit for these)."""
    initial = getattr(oracle, "num_initial_points", None)
    if initial is not None:
        oracle.num_initial_points = completed + 1
    for _ in range(completed):
        trial = oracle.create_trial("prefill")
        for epoch in range(epochs):
            oracle.update_trial(trial.trial_id, {OBJECTIVE: score(trial.hyperparameters.values, epoch)}, step=epoch)
        trial.status = "COMPLETED"
        oracle.end_trial(trial)
    if initial is not None:
        oracle.num_initial_points = initial
    oracle.tuner_ids.discard("prefill")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_config(kind: str, tuners: int, completed: int, args: argparse.Namespace) -> dict[str, Any]:
    """One oracle served over gRPC, driven by `tuners` client threads in a second process."""
    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute.oracle_chief import OracleServicer

    from trainer.launch import free_ports

    trials = max(args.trials, tuners)
    # keras-tuner 1.4.8 prints a condition's first value on every serialisation of a conditional
    # hyperparameter (engine/conditions.py, Condition.to_proto): to a log file on a real chief, to /dev/null here.
    with tempfile.TemporaryDirectory(prefix="tfstack-oracle-") as directory, \
            open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        oracle = make_oracle(kind, Path(directory), args.seed)
        prefill(oracle, completed, args.epochs)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.server_threads))
        protos.get_service_grpc().add_OracleServicer_to_server(OracleServicer(oracle), server)
        port = free_ports(1)[0]
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        try:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--client", "--port", str(port),
                   "--tuners", str(tuners), "--trials", str(trials), "--epochs", str(args.epochs)]
            client = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
            assert client.stdout is not None
            ready = client.stdout.readline()  # "ready": every tuner has called get_space once
            if ready.strip() != "ready":
                client.wait()
                raise RuntimeError(f"Expected the client to start. Received: {ready!r} {client.stderr.read()}")
            cpu_before = _cpu_seconds()
            out, err = client.communicate()
            cpu = _cpu_seconds() - cpu_before
            if client.returncode != 0:
                raise RuntimeError(f"Expected the client to exit 0. Received: {client.returncode}: {err[-2000:]}")
        finally:
            server.stop(grace=None)
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
        if not result:
            raise RuntimeError(f"Expected timings from the client. Received: {out!r} {err[-2000:]}")
        files = sum(1 for _ in Path(directory).rglob("trial.json"))
    totals = sorted(r["total"] for r in result["trials"])
    creates = sorted(r["create"] for r in result["trials"])
    return {
        "oracle": kind, "tuners": tuners, "completed_before": completed,
        "completed_after": completed + len(totals), "trials": len(totals),
        "median_ms": statistics.median(totals) * 1e3, "p95_ms": _percentile(totals, 0.95) * 1e3,
        "create_median_ms": statistics.median(creates) * 1e3,
        "create_p95_ms": _percentile(creates, 0.95) * 1e3,
        "update_median_ms": statistics.median(u for r in result["trials"] for u in r["updates"]) * 1e3
        if args.epochs else 0.0,
        "end_median_ms": statistics.median(r["end"] for r in result["trials"]) * 1e3,
        "chief_cpu_ms_per_trial": cpu * 1e3 / len(totals),
        "trials_per_s": len(totals) / result["wall"], "trial_files": files,
        "repeated": len(totals) - len({r["values"] for r in result["trials"]}),
    }


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def client_main(args: argparse.Namespace) -> int:
    """K tuner threads against the chief on --port; prints "ready", then the timings as JSON."""
    os.environ["KERASTUNER_ORACLE_IP"] = "127.0.0.1"
    os.environ["KERASTUNER_ORACLE_PORT"] = str(args.port)
    from keras_tuner.src.distribute.oracle_client import OracleClient

    out = sys.stdout
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (keras-tuner's stray prints, see run_config)

    tuners = args.tuners[0]
    clients = []
    for index in range(tuners):
        os.environ["KERASTUNER_TUNER_ID"] = f"tuner{index}"  # OracleClient reads it once, in __init__
        clients.append(OracleClient(oracle=None))
    for client in clients:
        client.get_space()  # connected
    print("ready", file=out, flush=True)
    lock = threading.Lock()
    remaining = [args.trials]
    records: list[dict[str, Any]] = []
    start = threading.Barrier(tuners)

    def tuner(client: Any) -> None:
        start.wait()
        while True:
            with lock:
                if remaining[0] <= 0:
                    return
                remaining[0] -= 1
            t0 = time.perf_counter()
            trial = client.create_trial(client.tuner_id)
            t1 = time.perf_counter()
            updates = []
            for epoch in range(args.epochs):
                u0 = time.perf_counter()
                client.update_trial(trial.trial_id, {OBJECTIVE: score(trial.hyperparameters.values, epoch)},
                                    step=epoch)
                updates.append(time.perf_counter() - u0)
            trial.status = "COMPLETED"
            e0 = time.perf_counter()
            client.end_trial(trial)
            t2 = time.perf_counter()
            with lock:
                records.append({"create": t1 - t0, "updates": updates, "end": t2 - e0, "total": t2 - t0,
                                "values": json.dumps(trial.hyperparameters.values, sort_keys=True)})

    threads = [threading.Thread(target=tuner, args=(client,)) for client in clients]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps({"trials": records, "wall": time.perf_counter() - started}), file=out, flush=True)
    return 0


def report(rows: list[dict[str, Any]], args: argparse.Namespace, loads: tuple[str, str]) -> str:
    import grpc
    import keras_tuner as kt

    lines = [
        f"keras-tuner {kt.__version__}, grpcio {grpc.__version__}, Python {sys.version.split()[0]}; "
        f"{len(os.sched_getaffinity(0))} CPUs; chief server threads {args.server_threads}; "
        f"per trial: 1 create_trial + {args.epochs} update_trial + 1 end_trial; search space: 7 hyperparameters "
        "(4 conditional), as trainer/hypermodel.py",
        "",
        f"{'oracle':<9} {'tuners':>6} {'completed':>11} {'trials':>6} {'ms/trial p50':>12} {'p95':>8} "
        f"{'create p50':>10} {'create p95':>10} {'update p50':>10} {'end p50':>8} {'chief CPU ms/trial':>18} "
        f"{'trials/s':>8} {'repeats':>7}",
    ]
    for r in rows:
        lines.append(
            f"{r['oracle']:<9} {r['tuners']:>6} {r['completed_before']:>5}..{r['completed_after']:<4} "
            f"{r['trials']:>6} {r['median_ms']:>12.1f} {r['p95_ms']:>8.1f} {r['create_median_ms']:>10.1f} "
            f"{r['create_p95_ms']:>10.1f} {r['update_median_ms']:>10.2f} {r['end_median_ms']:>8.2f} "
            f"{r['chief_cpu_ms_per_trial']:>18.1f} {r['trials_per_s']:>8.1f} {r['repeated']:>7}"
        )
    lines += [
        "",
        "ms/trial: wall time a tuner waits on the oracle per trial (create + updates + end), queueing included; "
        "completed: completed trials in the oracle before..after the timed window; chief CPU ms/trial: the "
        "oracle process's CPU time (all threads) per trial, its service demand; repeats: timed trials whose "
        "values equal an earlier timed trial's (the same point proposed twice).",
        f"load average (1, 5, 15 min): before {loads[0]}; after {loads[1]}",
    ]
    return "\n".join(lines)


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.client:
        return client_main(args)
    sys.path.insert(0, str(ROOT))
    load_before = _load()
    rows = []
    for kind in [k.strip() for k in args.oracles.split(",") if k.strip()]:
        levels = args.completed if kind == "bayesian" else args.completed[:1]
        for completed in levels:
            for tuners in args.tuners:
                print(f"{kind}: {tuners} tuner(s) after {completed} completed trials ...", file=sys.stderr,
                      flush=True)
                rows.append(run_config(kind, tuners, completed, args))
                r = rows[-1]
                print(f"  {r['median_ms']:.1f} ms/trial (p95 {r['p95_ms']:.1f}), chief CPU "
                      f"{r['chief_cpu_ms_per_trial']:.1f} ms/trial", file=sys.stderr, flush=True)
    print(report(rows, args, (load_before, _load())), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
