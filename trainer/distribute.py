"""How one trial runs on many workers: the tf.distribute strategy, and the pieces the search uses with it.

Every trial of the search is one synchronous data-parallel job over all workers with
``tf.distribute.MultiWorkerMirroredStrategy`` (MWMS). This module builds the strategy
(`make_strategy`) and re-exports, under one name, the jobs that live in their own modules, in the
order the search uses them:

- `trainer.accelerator`: `choose_accelerator` (pure), `apply` (memory growth) and `xla_on` (XLA where it compiles).
- `trainer.rendezvous`: bounded cluster formation, called by `make_strategy`.
- `trainer.keras_shim`: `install_keras_mwms_shim`, the version-guarded fix for
  https://github.com/keras-team/keras/issues/20585 (remove it when upstream is fixed).
- `trainer.agreement`: `assert_workers_agree` all-gathers hashes and raises `DivergenceError`.
- `trainer.backup`: `backup_and_restore` and `TrialBackup`, epoch backups every worker restores
  from and only the chief writes.
- `trainer.workdirs`: `worker_dirs`, shared paths for the chief, private scratch for the others.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import tensorflow as tf

from trainer import preemption
from trainer.accelerator import MIXED_PRECISION_CHOICES, Accelerator, apply, choose_accelerator
from trainer.agreement import assert_workers_agree, payload_hash
from trainer.backup import TrialBackup, backup_and_restore
from trainer.keras_shim import install_keras_mwms_shim
from trainer.rendezvous import form_group
from trainer.workdirs import WorkerDirs, worker_dirs

if TYPE_CHECKING:
    from trainer.cluster import Cluster

__all__ = [
    "MIXED_PRECISION_CHOICES",
    "Accelerator",
    "TrialBackup",
    "WorkerDirs",
    "apply",
    "assert_workers_agree",
    "backup_and_restore",
    "choose_accelerator",
    "install_keras_mwms_shim",
    "make_strategy",
    "payload_hash",
    "worker_dirs",
]

log = logging.getLogger(__name__)


def make_strategy(
    cluster: Cluster, *, accelerator: Accelerator, formation_timeout: float = 900.0
) -> tf.distribute.Strategy:
    """The strategy for this process: MWMS over the cluster's workers, else a local one.

    More than one worker: first `trainer.rendezvous.form_group` waits up to `formation_timeout`
    seconds for every worker to connect (TensorFlow alone would wait forever) and raises
    `ClusterFormationError` naming the missing peers; then ``MultiWorkerMirroredStrategy`` with a
    ``SimpleClusterResolver`` built from ``cluster.tf_config()`` (TF_CONFIG in the environment is not
    needed) and NCCL or RING collectives, and `install_keras_mwms_shim` is applied. One worker:
    ``MirroredStrategy`` over several local GPUs, a ``OneDeviceStrategy`` on one GPU, else TensorFlow's
    default strategy.
    """
    if cluster.num_workers > 1:
        tf_config = cluster.tf_config()
        assert tf_config is not None  # more than one worker always has peers
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(tf_config["cluster"]),
            task_type=tf_config["task"]["type"],
            task_id=tf_config["task"]["index"],
            rpc_layer="grpc",
        )
        implementation = (
            tf.distribute.experimental.CommunicationImplementation.NCCL
            if accelerator.communication == "NCCL"
            else tf.distribute.experimental.CommunicationImplementation.RING
        )
        install_keras_mwms_shim()
        form_group(cluster, formation_timeout)
        strategy: tf.distribute.Strategy = tf.distribute.MultiWorkerMirroredStrategy(
            cluster_resolver=resolver,
            communication_options=tf.distribute.experimental.CommunicationOptions(implementation=implementation),
        )
        # TensorFlow's preemption notifier took SIGTERM over when the strategy started: take it back.
        preemption.reinstall()
        log.info(
            "strategy: MultiWorkerMirroredStrategy over %d workers (%s), %d replicas in sync",
            cluster.num_workers, accelerator.communication, strategy.num_replicas_in_sync,
        )
        return strategy
    if accelerator.kind == "gpu" and accelerator.devices > 1:
        strategy = tf.distribute.MirroredStrategy()
    elif accelerator.kind == "gpu":
        strategy = tf.distribute.OneDeviceStrategy("/gpu:0")
    else:
        strategy = tf.distribute.get_strategy()
    log.info("strategy: %s, %d replica(s)", type(strategy).__name__, strategy.num_replicas_in_sync)
    return strategy
