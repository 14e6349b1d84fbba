"""A TensorFlow process for the launcher's thread test: ``python -m tests.trainer.threads_child``.

Runs a few ops, then prints ``inter-op threads N``: how many threads of this process the kernel names
``tf_Compute``, the threads of TensorFlow's inter-op pool (created from TF_NUM_INTEROP_THREADS, else one per
core), read from ``/proc/self/task/*/comm``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main() -> int:
    import tensorflow as tf

    matrix = tf.random.uniform((256, 256))
    for _ in range(3):
        matrix = tf.linalg.matmul(matrix, matrix) / 256.0
    float(tf.reduce_sum(matrix))
    names = [Path(f"/proc/self/task/{task}/comm").read_text().strip() for task in os.listdir("/proc/self/task")]
    print(f"inter-op threads {names.count('tf_Compute')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
