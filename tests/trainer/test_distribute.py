"""Tests for trainer.distribute: accelerator choice, the Keras MWMS shim, agreement, backups, directories.

The ``slow`` tests start two real worker processes (tests/trainer/mwms_child.py) wired by TF_CONFIG
on loopback ports and run MultiWorkerMirroredStrategy over them.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer import distribute, keras_shim
from trainer.cluster import Cluster, local_tf_configs
from trainer.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _devices(*kinds: str) -> list[SimpleNamespace]:
    return [SimpleNamespace(device_type=kind, name=f"/physical_device:{kind}:{i}") for i, kind in enumerate(kinds)]


@pytest.mark.parametrize(
    ("devices", "mixed_precision", "expected"),
    [
        (_devices("CPU"), "auto", distribute.Accelerator("cpu", 0, "float32", "RING", False, False)),
        (_devices("CPU"), None, distribute.Accelerator("cpu", 0, "float32", "RING", False, False)),
        (_devices("CPU"), "off", distribute.Accelerator("cpu", 0, "float32", "RING", False, False)),
        (_devices("CPU"), "mixed_bfloat16", distribute.Accelerator("cpu", 0, "mixed_bfloat16", "RING", False, False)),
        (_devices("CPU", "GPU"), "auto", distribute.Accelerator("gpu", 1, "mixed_float16", "NCCL", True, False)),
        (_devices("CPU", "GPU", "GPU", "GPU", "GPU"), "auto",
         distribute.Accelerator("gpu", 4, "mixed_float16", "NCCL", True, False)),
        (_devices("CPU", "GPU", "GPU"), "mixed_bfloat16",
         distribute.Accelerator("gpu", 2, "mixed_bfloat16", "NCCL", True, False)),
        (_devices("CPU", "GPU"), "off", distribute.Accelerator("gpu", 1, "float32", "NCCL", True, False)),
        (["CPU", "gpu"], "auto", distribute.Accelerator("gpu", 1, "mixed_float16", "NCCL", True, False)),
    ],
    ids=["cpu", "cpu-none", "cpu-off", "cpu-bf16", "1-gpu", "4-gpus", "gpu-bf16", "gpu-off", "type-strings"],
)
def test_choose_accelerator(devices: list[object], mixed_precision: str | None,
                            expected: distribute.Accelerator) -> None:
    assert distribute.choose_accelerator(devices, mixed_precision=mixed_precision, xla=False) == expected


def test_choose_accelerator_on_this_machine_and_xla() -> None:
    accelerator = distribute.choose_accelerator(tf.config.list_physical_devices("CPU"), mixed_precision="auto",
                                                xla=True)
    assert (accelerator.kind, accelerator.policy, accelerator.communication) == ("cpu", "float32", "RING")
    assert accelerator.jit_compile is True
    assert "CPU" in accelerator.describe() and "XLA requested" in accelerator.describe()


def test_choose_accelerator_rejects_unknown_policy() -> None:
    with pytest.raises(ConfigError, match="mixed_precision='float16'"):
        distribute.choose_accelerator(_devices("GPU"), mixed_precision="float16", xla=False)


def test_apply_leaves_the_dtype_policy_to_the_model_builder() -> None:
    # clear_session() would reset a global policy: it travels in ModelSpec.dtype_policy instead.
    before = keras.config.dtype_policy().name
    distribute.apply(distribute.Accelerator("cpu", 0, "mixed_bfloat16", "RING", False, False))
    assert keras.config.dtype_policy().name == before


@pytest.mark.parametrize("version", ["2.15.0", "3.16.0", "4.0.0", "nightly"], ids=str)
def test_shim_is_a_noop_on_unaffected_versions(version: str) -> None:
    from keras.src.backend.tensorflow import trainer as tf_trainer

    build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build
    reduce = tf_trainer.reduce_per_replica
    assert distribute.install_keras_mwms_shim(version) is False
    assert tf_trainer.TensorFlowTrainer._maybe_symbolic_build is build
    assert tf_trainer.reduce_per_replica is reduce


@pytest.mark.parametrize(("version", "applies"), [("3.0.0", True), ("3.15.1", True), ("3.15.2.dev2026", True),
                                                  ("3.16.0", False), ("2.21.0", False)], ids=str)
def test_shim_version_range(version: str, applies: bool) -> None:
    assert keras_shim._shim_applies(version) is applies


def test_installed_keras_is_covered_by_the_shim() -> None:
    # When this fails, Keras was upgraded: rerun the slow two-process tests with the range widened (or
    # without the shim, if keras-team/keras#20585 is fixed) before changing _SHIM_VERSIONS.
    assert keras_shim._shim_applies(keras.__version__), keras.__version__


def test_payload_hash_is_stable_and_63_bits() -> None:
    assert distribute.payload_hash("abc") == distribute.payload_hash(b"abc")
    assert distribute.payload_hash("abc") != distribute.payload_hash("abd")
    assert 0 <= distribute.payload_hash("abc") < 2**63
    assert distribute.payload_hash("") == 0xE4A6A0577479B2B4 >> 1  # blake2b-64 of b""


def test_single_process_strategy_and_agreement() -> None:
    cluster = Cluster(peers=(), rank=0, source="single")
    accelerator = distribute.choose_accelerator(["CPU"], mixed_precision="off", xla=False)
    strategy = distribute.make_strategy(cluster, accelerator=accelerator)
    assert strategy.num_replicas_in_sync == 1
    distribute.assert_workers_agree(strategy, '{"units": 8}', "trial 0 hyperparameters")
    distribute.assert_workers_agree(strategy, {"data_fingerprint": "f", "steps_per_epoch": 3, "restored": {}},
                                    "trial 0")


def test_worker_dirs_chief_writes_shared_paths(tmp_path: Path) -> None:
    chief = Cluster(peers=("127.0.0.1:1", "127.0.0.1:2"), rank=0, source="tf_config")
    with distribute.worker_dirs(tmp_path, chief) as dirs:
        assert dirs == distribute.WorkerDirs(tmp_path / "tuner", tmp_path / "backup", tmp_path / "logs", None)
        assert dirs.tuner_dir.is_dir() and dirs.logs_dir.is_dir()
    assert dirs.tuner_dir.is_dir()


def test_worker_dirs_other_workers_write_private_scratch(tmp_path: Path) -> None:
    worker = Cluster(peers=("127.0.0.1:1", "127.0.0.1:2"), rank=1, source="tf_config")
    with distribute.worker_dirs(tmp_path, worker) as dirs:
        assert dirs.scratch is not None and dirs.scratch.is_dir()
        assert tmp_path not in dirs.scratch.parents
        assert dirs.tuner_dir.parent == dirs.scratch and dirs.logs_dir.parent == dirs.scratch
        assert dirs.tuner_dir.is_dir()
        assert dirs.backup_dir == tmp_path / "backup"  # read by every worker, written by the chief
    assert not dirs.scratch.exists()
    assert not (tmp_path / "tuner").exists()


def test_worker_dirs_scratch_removed_on_error(tmp_path: Path) -> None:
    worker = Cluster(peers=("127.0.0.1:1", "127.0.0.1:2"), rank=1, source="tf_config")
    with pytest.raises(RuntimeError), distribute.worker_dirs(tmp_path, worker) as dirs:
        raise RuntimeError("trial failed")
    assert dirs.scratch is not None and not dirs.scratch.exists()


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if epoch == 2:
            raise RuntimeError("interrupted")


def _tiny_model() -> keras.Model:
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse", jit_compile=False)
    return model


def test_backup_and_restore_writer_saves_and_reader_resumes(tmp_path: Path) -> None:
    x, y = np.ones((8, 3), "float32"), np.zeros((8, 1), "float32")
    backup = tmp_path / "backup"
    with pytest.raises(RuntimeError, match="interrupted"):
        _tiny_model().fit(x, y, epochs=4, verbose=0,
                          callbacks=[distribute.backup_and_restore(backup, writer=True), _Interrupt()])
    assert json.loads((backup / "training_metadata.json").read_text())["epoch"] == 2
    assert sorted(p.name for p in backup.iterdir()) == ["latest.weights.h5", "training_metadata.json"]

    # A non-writer (another worker) restores the chief's epoch and writes nothing, deletes nothing.
    history = _tiny_model().fit(x, y, epochs=4, verbose=0, callbacks=[distribute.backup_and_restore(backup,
                                                                                                      writer=False)])
    assert len(history.history["loss"]) == 2
    assert json.loads((backup / "training_metadata.json").read_text())["epoch"] == 2

    # The writer resumes too and deletes the backup when fit ends.
    history = _tiny_model().fit(x, y, epochs=4, verbose=0, callbacks=[distribute.backup_and_restore(backup)])
    assert len(history.history["loss"]) == 2
    assert not backup.exists()


def test_public_api_is_sorted() -> None:
    # isort-style, as ruff's RUF022 keeps it: CONSTANTS, then Classes, then functions.
    assert distribute.__all__ == sorted(distribute.__all__, key=lambda n: (not n.isupper(), not n[0].isupper(), n))
    assert all(hasattr(distribute, name) for name in distribute.__all__)


# ---------------------------------------------------------------------------------------------- two processes


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _run_two_workers(mode: str, out: Path, timeout: float = 240) -> None:
    """Run ``mwms_child MODE OUT`` as two MWMS workers; fail with their output if either fails."""
    out.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    procs = []
    for rank, tf_config in enumerate(local_tf_configs(_free_ports(2))):
        log = (out / f"worker{rank}.log").open("w")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tests.trainer.mwms_child", mode, str(out)], cwd=ROOT,
            env={**env, "TF_CONFIG": json.dumps(tf_config)}, stdout=log, stderr=subprocess.STDOUT,
        ))
        log.close()
    try:
        codes = [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    logs = "\n".join(f"--- worker {r} ---\n" + (out / f"worker{r}.log").read_text()[-3000:] for r in range(2))
    assert codes == [0, 0], logs


@pytest.mark.slow
def test_two_worker_fit_ends_with_identical_weights_and_logs(tmp_path: Path) -> None:
    _run_two_workers("fit", tmp_path)
    weights = [np.load(tmp_path / f"fit_{rank}.npz") for rank in range(2)]
    assert len(weights[0].files) == 4
    for name in weights[0].files:
        np.testing.assert_allclose(weights[0][name], weights[1][name], rtol=0, atol=1e-7)
    results = [json.loads((tmp_path / f"fit_{rank}.json").read_text()) for rank in range(2)]
    assert results[0]["replicas"] == results[1]["replicas"] == 2
    history = results[0]["history"]
    assert sorted(history) == ["accuracy", "loss", "val_accuracy", "val_loss"]
    assert all(len(values) == 2 and all(np.isfinite(values)) for values in history.values())
    for key, values in history.items():
        np.testing.assert_allclose(values, results[1]["history"][key], rtol=1e-6, err_msg=key)
    log0 = (tmp_path / "worker0.log").read_text()
    assert "keras-team/keras/issues/20585" in log0 and "MultiWorkerMirroredStrategy over 2 workers" in log0
    assert not (tmp_path / "backup").exists()  # the chief deleted its backup when fit ended


@pytest.mark.slow
def test_a_steps_logs_are_reduced_in_one_collective_per_dtype(tmp_path: Path) -> None:
    # Worker r logs loss 1+r, accuracy 0.25(r+1), a 2x2 matrix [[0,1],[2,3]](r+1) and an int 3(r+1):
    # the means over the two workers are 1.5, 0.375, [[0,1.5],[3,4.5]] and 4.5 (MEAN of ints 3 and 6 is a float).
    _run_two_workers("reduce", tmp_path)
    for rank in range(2):
        result = json.loads((tmp_path / f"reduce_{rank}.json").read_text())
        expected = {"loss": 1.5, "accuracy": 0.375, "confusion": [[0.0, 1.5], [3.0, 4.5]], "seen": 4.5}
        assert result["together"] == result["one_by_one"] == expected
        # The three float logs share one collective; the int goes alone (CollectiveReduceV2 ops in the graph).
        assert result["collectives"] == {"together": 2, "one_by_one": 4}


@pytest.mark.slow
def test_two_worker_fit_fails_without_the_shim(tmp_path: Path) -> None:
    # keras-team/keras#20585. When this fails, upstream fixed it: delete install_keras_mwms_shim.
    _run_two_workers("noshim", tmp_path)
    results = [json.loads((tmp_path / f"noshim_{rank}.json").read_text()) for rank in range(2)]
    assert all(r["failed"] for r in results), results
    assert "PerReplica" in results[0]["error"]


@pytest.mark.slow
def test_two_worker_keras_tuner_search_agrees(tmp_path: Path) -> None:
    _run_two_workers("tuner", tmp_path)
    results = [json.loads((tmp_path / f"tuner_{rank}.json").read_text()) for rank in range(2)]
    assert len(results[0]["trials"]) == 2
    assert results[0]["trials"][0] != results[0]["trials"][1]
    assert results[0]["trials"] == results[1]["trials"]
    assert results[0]["best"] == results[1]["best"]
    # The chief wrote the shared tuner dir; the other worker wrote a private scratch dir, now removed.
    assert results[0]["scratch"] is None and Path(results[0]["tuner_dir"]) == tmp_path / "shared" / "tuner"
    assert (tmp_path / "shared" / "tuner" / "child" / "oracle.json").is_file()
    assert results[1]["scratch"] is not None and not Path(results[1]["scratch"]).exists()


@pytest.mark.slow
def test_each_worker_decodes_only_its_shard_and_padding_does_not_count(tmp_path: Path) -> None:
    # The search's datasets (trainer.pipeline.distributed_dataset). 36 training and 12 validation images,
    # global batch 8 over 2 workers: padded to 40 and 16 (copies of each list's first images), so each
    # worker must read 20 + 8 files over both epochs (the second epoch comes from its memory cache),
    # where DATA auto-sharding read all 40 + 16 on each. Both must end with identical weights.
    _run_two_workers("padded", tmp_path)
    results = [json.loads((tmp_path / f"padded_{rank}.json").read_text()) for rank in range(2)]
    train, val = results[0]["train"], results[0]["val"]
    assert len(train) == 36 and len(val) == 12 and results[1]["train"] == train
    reads = [r["reads"] for r in results]
    for split, files, padded in (("train", train, 40), ("val", val, 16)):
        mine = [[p for p in worker if p in set(files)] for worker in reads]
        assert [len(m) for m in mine] == [padded // 2] * 2, (split, mine)
        assert sorted(mine[0] + mine[1]) == sorted(files + files[: padded - len(files)]), split
        copies = set(files[: padded - len(files)])
        assert not (set(mine[0]) & set(mine[1])) - copies, split  # only a padding copy may be read by both
    assert all("uint8" in r["pixels_spec"] for r in results), results[0]["pixels_spec"]
    weights = [np.load(tmp_path / f"padded_{rank}.npz") for rank in range(2)]
    assert len(weights[0].files) > 4
    for name in weights[0].files:
        np.testing.assert_array_equal(weights[0][name], weights[1][name])
    # 12 validation images padded with 4 weight-0 copies: val_accuracy must be the accuracy over the 12.
    accuracy = [{k: r[k] for k in ("val_accuracy", "real_accuracy")} for r in results]
    assert accuracy[0] == accuracy[1]
    assert results[0]["val_accuracy"][-1] == pytest.approx(results[0]["real_accuracy"], abs=1e-6), results[0]


@pytest.mark.slow
def test_two_workers_with_different_payloads_raise_divergence(tmp_path: Path) -> None:
    _run_two_workers("disagree", tmp_path)
    results = [json.loads((tmp_path / f"disagree_{rank}.json").read_text()) for rank in range(2)]
    assert all(r["raised"] for r in results)  # the child catches DivergenceError only
    assert "a per-worker value" in results[0]["message"]
    hashes = [f"{distribute.payload_hash(f'worker {rank}'):016x}" for rank in range(2)]
    assert all(all(h in r["message"] for h in hashes) for r in results)
    for rank, result in enumerate(results):
        assert "Received differences in steps_per_epoch:" in result["named"], result
        assert "data_fingerprint" not in result["named"] and f"this worker's {5 + rank}" in result["named"]


@pytest.mark.slow
def test_a_restarted_worker_resumes_fit_from_the_chief_backup(tmp_path: Path) -> None:
    # Worker 1 dies at the start of epoch 2 of 4; the launcher restarts it (and the chief, whose
    # collectives abort); both restore the chief's epoch-2 backup and run only epochs 2 and 3.
    from trainer.launch import launch

    output = io.StringIO()
    code = launch(["fault", str(tmp_path)], workers=2, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                  module="tests.trainer.mwms_child", cwd=str(ROOT), max_restarts=2, stdout=output, stderr=output)
    assert code == 0, output.getvalue()[-4000:]
    assert (tmp_path / "died").read_text() == "died"
    results = [json.loads((tmp_path / f"fault_{rank}.json").read_text()) for rank in range(2)]
    assert [len(r["history"]["loss"]) for r in results] == [2, 2]
    assert results[0]["history"] == results[1]["history"]
    weights = [np.load(tmp_path / f"fault_{rank}.npz") for rank in range(2)]
    for name in weights[0].files:
        np.testing.assert_allclose(weights[0][name], weights[1][name], rtol=0, atol=1e-7)
    assert not (tmp_path / "backup").exists()


@pytest.mark.slow
def test_repeated_data_sets_open_one_iterator_per_fit_and_stay_exact(tmp_path: Path) -> None:
    # The search's step (issue 25): the training set repeated with steps_per_epoch, and
    # per-replica BatchNormalization whose moving statistics AverageBatchNormStatistics averages.
    _run_two_workers("repeated", tmp_path)
    results = [json.loads((tmp_path / f"repeated_{rank}.json").read_text()) for rank in range(2)]
    for result in results:
        # One training iterator for the whole fit (no throwaway one from the shim's build, none per epoch;
        # before: 1 + 2). Validation, a finite pass: Keras's own two per pass (EpochIterator opens one at the
        # start and, for a set of unknown length, one in _enumerate_iterator's loop), none from the build
        # (before: one more per pass).
        assert result["opened"] == {"train": 1, "val": 4}, result["opened"]
        # Repeated: no per-step end-of-data all-reduce in training (validation keeps its finite pass).
        assert result["end_of_data_check"] == [False, True]
        assert result["synchronized"] and not any(result["synchronized"])
        val_reads = [p for p in result["reads"] if p in set(result["val"])]
        # Its training shard decoded once (memory cache) although the iterator runs on into the next pass.
        assert len(result["reads"]) - len(val_reads) == 20, result["reads"]
        # Known (docs/distributed.md): under MWMS with a repeated training set the validation shard's memory
        # cache is not completed by its first pass (single-process it is: 8 reads), so each of the 2 passes
        # decodes its 8 images again, plus one batch read ahead. Bounded, so that worse fails.
        assert 8 <= len(val_reads) <= 2 * 8 + 4, val_reads
    weights = [np.load(tmp_path / f"repeated_{rank}.npz") for rank in range(2)]
    for name in weights[0].files:  # moving statistics included: averaged across the workers
        np.testing.assert_array_equal(weights[0][name], weights[1][name])
    assert results[0]["val_accuracy"] == results[1]["val_accuracy"]
    assert results[0]["val_accuracy"][-1] == pytest.approx(results[0]["real_accuracy"], abs=1e-6), results[0]


@pytest.mark.slow
def test_xla_cannot_compile_the_collectives_of_two_cpu_workers(tmp_path: Path) -> None:
    """The fact behind `accelerator.xla_blockers`: under MWMS on CPUs, a step with jit_compile=True fails
    in XLA on its all-reduce (the same model compiles with one worker: tests/trainer/test_steps.py)."""
    _run_two_workers("xla", tmp_path)
    results = [json.loads((tmp_path / f"xla_{rank}.json").read_text()) for rank in range(2)]
    for result in results:
        assert result["jit_compile"] is True and result["failed"], result
        assert "collective" in result["error"].lower() and "CollectiveReduce" in result["error"], result["error"][-600:]
    from trainer.accelerator import xla_blockers

    cpu = distribute.choose_accelerator(["CPU"], mixed_precision="off", xla=True)
    assert xla_blockers(cpu, workers=2) and not xla_blockers(cpu, workers=1)
