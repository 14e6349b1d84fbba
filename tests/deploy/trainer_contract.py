"""The trainer's exit-code contract (docs/distributed.md), as the chart's tests use it: taken from the
trainer itself (trainer.errors), so the chart's failure policies are checked against the codes the
trainer really exits with. `python -m trainer search` is the container's entrypoint (no shell in
between), so these are the container's exit codes. k8s/chart/templates/_helpers.tpl
("tfstack.trainer.exitCodes") names them once for the templates."""

from __future__ import annotations

from trainer.errors import EXIT_BAD_INPUT, EXIT_CRASH, EXIT_NOT_PUBLISHED, EXIT_OK, EXIT_PEER_LOST

EXIT_CODES = {
    "done": EXIT_OK,
    "crash": EXIT_CRASH,  # anything unexpected: retryable
    "badInput": EXIT_BAD_INPUT,  # usage, configuration or data error: do not retry
    "notPublished": EXIT_NOT_PUBLISHED,  # the search finished but the publish gate refused the model
    "peerLost": EXIT_PEER_LOST,  # a peer was lost or the group could not form: restart the whole group
}
