"""The chart names the trainer's exit codes once (``tfstack.trainer.exitCodes`` in _helpers.tpl); they must be
the trainer's own (trainer.errors), or the failure policies would act on the wrong codes. The behaviour tests
(tests/deploy/chart/test_trainer_job.py) then replay each code against the rendered policies."""

from __future__ import annotations

import re

import yaml

from tests.deploy.rendering import CHART_DIR
from tests.deploy.trainer_contract import EXIT_CODES


def test_the_charts_exit_codes_are_the_trainers() -> None:
    helpers = (CHART_DIR / "templates" / "_helpers.tpl").read_text()
    body = re.search(r'define "tfstack\.trainer\.exitCodes" -}}\n(.*?)\{\{- end', helpers, re.S)
    assert body is not None
    assert yaml.safe_load(body.group(1)) == EXIT_CODES
