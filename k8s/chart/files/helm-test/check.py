"""`helm test`: predict over gRPC and over REST with the client's own command line, and check the answers.

Runs in the client image (docker/client.Dockerfile): `python -m serving.client status` must find an
AVAILABLE version; then `predict --top-k <classes + 1>` on one image, over each transport, must print
exactly one probability per class (the answer's shape: one row of that many classes) in [0, 1], summing to
1; the top class is named by the model's own `class_name` output and must be the expected class at its index
(the trainer orders the classes by name: trainer/scan.py), the others are printed by index; both
transports must agree. Exit 0 when all holds, else 1 with one line on stderr saying what did not.

    python check.py --grpc HOST:PORT --rest http://HOST:PORT --model NAME --timeout SECONDS \
        --image PNG --classes 0,1,2
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

#: One "name probability" pair of the CLI's predict line: "<path>: name 0.9876, name 0.0100, ...".
PAIR = re.compile(r"(.+?) ([01]\.\d{4})(?:, |$)")


class CheckFailed(Exception):
    pass


def client(*args: str, timeout: float) -> str:
    """Run `python -m serving.client ARGS`; its stdout, or CheckFailed with its error line."""
    try:
        done = subprocess.run([sys.executable, "-m", "serving.client", *args], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise CheckFailed(f"`serving.client {args[0]}` did not end within {timeout:.0f} s") from exc
    if done.returncode != 0:
        raise CheckFailed(f"`serving.client {' '.join(args[:3])}` exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def parse_predict(output: str, image: str) -> list[tuple[str, float]]:
    """(name or index, probability) pairs, best first, from the CLI's one line for `image`."""
    lines = [line for line in output.splitlines() if line.startswith(f"{image}: ")]
    if len(lines) != 1:
        raise CheckFailed(f"Expected one line for {image}. Received: {output!r}")
    return [(name, float(p)) for name, p in PAIR.findall(lines[0][len(image) + 2:])]


def check(answer: list[tuple[str, float]], classes: list[str], transport: str) -> dict[str, float]:
    """class name -> probability, once the answer has one probability per class and names its top class as
    the class at that index."""
    if len(answer) != len(classes):
        raise CheckFailed(f"Expected {len(classes)} probabilities (one per class) over {transport}. "
                          f"Received {len(answer)}: {answer}")
    probabilities = [p for _, p in answer]
    # Each probability is printed to 4 decimals: the sum may be off by 5e-5 per class.
    if not all(0.0 <= p <= 1.0 for p in probabilities) or abs(sum(probabilities) - 1.0) > 1e-3 + 5e-5 * len(classes):
        raise CheckFailed(f"Expected probabilities in [0, 1] summing to 1 over {transport}. Received: {answer}")
    others = {name for name, _ in answer[1:]}
    missing = [i for i in range(len(classes)) if str(i) not in others]
    top_name = answer[0][0]
    if len(missing) != 1 or classes[missing[0]] != top_name:
        raise CheckFailed(f"Expected the top class to be one of {classes}, at its index. Received: {answer}")
    return {classes[int(name)] if name in others else name: p for name, p in answer}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grpc", required=True, help="host:port of the gRPC API")
    parser.add_argument("--rest", required=True, help="http://host:port of the REST API")
    parser.add_argument("--model", required=True)
    parser.add_argument("--timeout", type=float, default=30.0, help="deadline of each call, seconds")
    parser.add_argument("--image", required=True, help="an image the model classifies")
    parser.add_argument("--classes", required=True, help="the model's class names, comma-separated")
    args = parser.parse_args(argv)
    classes = sorted(args.classes.split(","))  # index order: the trainer sorts the class names
    common = ["--model", args.model, "--timeout", str(args.timeout)]
    limit = args.timeout * 3 + 30  # the CLI's own deadline, its start-up and a retry
    try:
        print(client("status", "--target", args.grpc, *common, timeout=limit), end="")
        answers = {}
        for transport, target in (("gRPC", args.grpc), ("REST", args.rest)):
            output = client("predict", "--target", target, *common, "--top-k", str(len(classes) + 1), args.image,
                            timeout=limit)
            answers[transport] = check(parse_predict(output, args.image), classes, transport)
            top = max(answers[transport], key=answers[transport].get)
            print(f"{transport}: {len(classes)} classes, top {top} {answers[transport][top]:.4f}")
        if max(abs(answers["gRPC"][name] - answers["REST"][name]) for name in classes) > 2e-4:
            raise CheckFailed(f"Expected the same answer over gRPC and REST. Received: {answers}")
    except CheckFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("ok: the model answered over gRPC and REST")
    return 0


if __name__ == "__main__":
    sys.exit(main())
