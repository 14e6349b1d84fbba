"""Download ImageNet weights for the named backbones into $KERAS_HOME at image build time.

Run by docker/trainer.Dockerfile (build argument BAKE_WEIGHTS): GPU nodes often have no internet, and
Keras finds a cached file with the expected hash before it tries to download. Uses the trainer's own
backbone table, so the names are exactly those of ``--backbone``.
"""

from __future__ import annotations

import sys


def main(names: list[str]) -> int:
    from trainer.hypermodel import BACKBONE_SPECS

    unknown = sorted(set(names) - set(BACKBONE_SPECS))
    if unknown:
        print(f"Expected backbones among {', '.join(sorted(BACKBONE_SPECS))}. Received: {unknown}", file=sys.stderr)
        return 2
    for name in names:
        spec = BACKBONE_SPECS[name]
        if spec.factory is None:
            print(f"{name}: trained from scratch, no weights to bake")
            continue
        size = spec.default_size
        spec.factory(include_top=False, weights="imagenet", input_shape=(size, size, 3))
        print(f"{name}: ImageNet weights cached")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
