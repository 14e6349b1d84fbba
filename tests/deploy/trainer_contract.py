"""The trainer's exit-code contract (docs/distributed.md), as the chart relies on it. `python -m trainer
search` is the container's entrypoint (no shell in between), so these are the container's exit codes.
k8s/chart/templates/_helpers.tpl ("tfstack.trainer.exitCodes") names them once for the templates; a test
checks that both agree."""

from __future__ import annotations

EXIT_CODES = {
    "done": 0,  # model published, or nothing to do
    "crash": 1,  # anything unexpected: retryable
    "badInput": 2,  # usage, configuration or data error: do not retry
    "notPublished": 3,  # the search finished but the publish gate refused the model: do not retry
    "peerLost": 4,  # a peer was lost or the group could not form: restart the whole group
}
