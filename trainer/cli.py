"""``python -m trainer``: the trainer's command line (search, launch, prepare).

    python -m trainer search [--data DIR] [--model-name NAME] [--export-base DIR] ...
    python -m trainer launch --workers 2 -- search --model-name digits --export-base ./models
    python -m trainer prepare --data DIR --image-size 224 [--run-dir DIR | --prepared-dir DIR]

Exit status follows the trainer's exit-code contract (`trainer.errors`, docs/distributed.md): 0 done,
1 crash (retry), 2 bad input or configuration (do not retry), 3 finished but not published, 4 a peer
was lost, the group could not form, or SIGTERM (restart the whole group; a rerun resumes), 130
interrupted (Ctrl-C). Errors print one line on stderr; the traceback with --verbose (same code).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence

from trainer import config as config_module
from trainer import preemption
from trainer.errors import EXIT_NOT_PUBLISHED, EXIT_PEER_LOST, ConfigError, TrainerError, exit_code, is_peer_error

__all__ = ["main"]

log = logging.getLogger("trainer")


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        # Keras warns about what the search does on purpose: datasets are shuffled by tf.data, and the best
        # model is restored for inference without its optimizer state.
        warnings.filterwarnings("ignore", message=r"`shuffle=True` was passed")
        warnings.filterwarnings("ignore", message=r"Skipping variable loading for optimizer")
        for noisy in ("tensorflow", "absl", "h5py", "matplotlib", "PIL"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def search_command_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "search",
        help="Run the KerasTuner search on an image folder and export the best model.",
        description="Run the search in this process. In a cluster, every worker runs this same command and "
        "finds its role from TF_CONFIG or the Kubernetes Indexed-Job variables.",
    )
    config_module.add_arguments(parser)
    parser.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help="Debug logs and tracebacks.")
    return parser


def search_command(args: argparse.Namespace) -> int:
    from trainer.cluster import resolve

    config = config_module.from_namespace(args)
    preemption.install(config.termination_grace_seconds)
    cluster = resolve(os.environ)
    log.info("cluster: %s", cluster.describe())
    _set_tf_config(cluster)

    from trainer.progress import SearchMetrics
    from trainer.search import run_search

    metrics = SearchMetrics()
    if config.metrics_port is not None and cluster.publishes:
        metrics.serve(config.metrics_port)
    try:
        result = run_search(config, cluster, metrics=metrics)
    finally:
        metrics.close()
    decision = result.decision
    if decision is not None and not decision.publish:
        print(f"not published: {decision.reason}")
        print(f"report: {result.report_dir}")
        return EXIT_NOT_PUBLISHED  # the publish gate kept the model off the shared volume (docs/trainer.md)
    if result.export is not None:
        print(f"best hyperparameters: {result.best_hyperparameters}")
        print(f"best val_accuracy: {result.best_val_accuracy:.4f} over {result.trials} trials")
        if result.test_accuracy is not None:
            print(f"held-out accuracy: {result.test_accuracy:.4f} on {result.test_images} images the search never saw")
            if result.held_out_recall:
                print("held-out recall by class: "
                      + ", ".join(f"{k}={v:.3f}" for k, v in result.held_out_recall.items()))
        print(f"exported version {result.export.version}: {result.export.path}")
        print(f"report: {result.report_dir}")
    return 0


def prepare_command_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "prepare",
        help="Decode and resize an image folder once into the prepared TFRecords a search trains from.",
        description="Scan the folder and write its prepared records (trainer.prepared) to --prepared-dir (default "
        "<run-dir>/prepared), as the search's chief would before its first trial. Takes the search's flags: the "
        "split settings and --image-size (or the backbones it is chosen from) decide which set is written, so "
        "run it with the flags of the search that will use it. A complete matching set is reused.",
    )
    config_module.add_arguments(parser)
    parser.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help="Debug logs and tracebacks.")
    return parser


def prepare_command(args: argparse.Namespace) -> int:
    from trainer import prepared, scan
    from trainer.search import scan_data
    from trainer.search_space import model_spec

    config = config_module.from_namespace(args)
    _, splits = scan_data(config)  # also leaves the scan manifest the search's workers read
    size = model_spec(config, len(splits.class_names), median_side=scan.median_image_side(splits.train)).image_size
    records = prepared.ensure_prepared(splits, (size, size), config.prepared_store, seed=config.seed)
    print(f"prepared: {records.path} ({records.image_size[0]}x{records.image_size[1]} px; "
          + ", ".join(f"{split} {records.count(split)}" for split in records.files) + " records)")
    return 0


def _set_tf_config(cluster: object) -> None:
    """TensorFlow reads TF_CONFIG from the environment: give it the one we resolved (e.g. from an Indexed Job)."""
    import json

    tf_config = cluster.tf_config()  # type: ignore[attr-defined]
    if tf_config is not None:
        os.environ["TF_CONFIG"] = json.dumps(tf_config)


def launch_command_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "launch",
        help="Run a trainer command as N local worker processes wired by TF_CONFIG on loopback.",
        description="Start N local workers running `python -m trainer ARGS...`, stream their prefixed logs, and stop "
        "all of them if one fails for good.",
    )
    parser.add_argument("--workers", type=int, default=2,
                        help="Number of local worker processes, per group with --groups (default 2).")
    parser.add_argument("--groups", type=int, default=1,
                        help="Groups of --workers workers that train trials in parallel; above 1 an oracle process "
                        "hands out the trials and publishes the best model (default 1).")
    parser.add_argument("--max-restarts", type=int, default=0,
                        help="Restart a failed group (a failed oracle: everything) up to this many times in all, as "
                        "Kubernetes restarts pods (default 0).")
    parser.add_argument("--termination-grace-seconds", type=float, default=None,
                        help="Seconds between SIGTERM and SIGKILL: on SIGTERM the launcher passes it on, waits for "
                        "the processes to save and exit, and exits 4 (default: TFSTACK_TERMINATION_GRACE_SECONDS, "
                        "else 30).")
    parser.add_argument("--threads-per-worker", type=int, default=None,
                        help="TensorFlow intra-op and inter-op threads of each training process "
                        "(TF_NUM_INTRAOP_THREADS, TF_NUM_INTEROP_THREADS); those variables in the environment win. "
                        "Default: cores / (groups x "
                        "workers) when that is more than one process; 0: TensorFlow's defaults (a thread per core).")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the trainer command, e.g. -- search ...")
    return parser


def launch_command(args: argparse.Namespace) -> int:
    from trainer.launch import launch

    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise ConfigError("Expected a trainer command after --, e.g. `launch --workers 2 -- search`")
    if args.workers < 1:
        raise ConfigError(f"Expected --workers >= 1. Received: --workers={args.workers}")
    if args.groups < 1:
        raise ConfigError(f"Expected --groups >= 1. Received: --groups={args.groups}")
    if args.threads_per_worker is not None and args.threads_per_worker < 0:
        raise ConfigError("Expected --threads-per-worker >= 0. "
                          f"Received: --threads-per-worker={args.threads_per_worker}")
    return launch(command, workers=args.workers, groups=args.groups, env=dict(os.environ),
                  max_restarts=args.max_restarts, termination_grace=args.termination_grace_seconds,
                  threads_per_worker=args.threads_per_worker)


_COMMANDS = {
    "search": (search_command_parser, search_command),
    "launch": (launch_command_parser, launch_command),
    "prepare": (prepare_command_parser, prepare_command),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", action="store_true", help="Debug logging and full tracebacks.")
    subparsers = parser.add_subparsers(dest="subcommand", required=True)
    for make_parser, _run in _COMMANDS.values():
        make_parser(subparsers)
    # First thing: as PID 1 of a container a process without a SIGTERM handler ignores SIGTERM.
    preemption.install()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    try:
        return _COMMANDS[args.subcommand][1](args)
    except (TrainerError, OSError) as exc:
        # --verbose adds the traceback, never changes the exit code (a re-raise would exit 1: "retry").
        if args.verbose:
            log.error("%s", type(exc).__name__, exc_info=exc)
        print(f"error: {exc}", file=sys.stderr)
        return exit_code(exc)
    except Exception as exc:
        if not is_peer_error(exc):
            raise  # a crash: the traceback and exit status 1
        if args.verbose:
            log.exception("lost contact with a peer")
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"error: lost contact with a peer: {type(exc).__name__}: {first}", file=sys.stderr)
        return EXIT_PEER_LOST
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
