"""templates/NOTES.txt."""

from __future__ import annotations

import shlex

from serving.client.__main__ import build_parser
from tests.deploy.rendering import render


def test_should_print_a_predict_command_the_client_accepts_when_installed() -> None:
    notes = render("defaults").notes
    (line,) = [line for line in notes.splitlines() if "serving.client predict" in line]
    argv = shlex.split(line.strip())
    assert argv[:3] == ["python", "-m", "serving.client"]
    args = build_parser().parse_args(argv[3:])
    assert args.command == "predict" and args.model == "digits" and args.target == "localhost:8500"
    assert "helm test digits" in notes


def test_should_name_the_tfjob_when_mode_is_tfjob() -> None:
    notes = render("tfjob").notes
    assert "Kubeflow TFJob" in notes and "-worker-0" in notes
    assert "Indexed Job" in render("defaults").notes
