"""The `workflow.patched` ids of the job workflow: changes to its command sequence, kept until no run from before
them remains."""

CLEAR_WAKEUP_BEFORE_SYNC = "clear-wakeup-before-sync"
SEGMENT_TAG_WITHOUT_RUN_ID = "segment-tag-without-run-id"  # node-plane activities heartbeat every second
SEGMENT_TIMEOUT_FROM_MANIFEST = "segment-timeout-from-manifest"
FAILURE_WITHOUT_GRAPH = "dataplane-failure-without-graph"
CONTINUE_AS_NEW = "continue-as-new-when-suggested"
KEEP_EARLY_HANDBACK = "keep-handback-of-segment-not-yet-reopened"
# A run that starts with this marker has every change above. sdk-core upserts TemporalChangeVersion for each patch a
# run records, and each workflow task that upserts costs Temporal a visibility write: one marker in the first task,
# which upserts the job's status anyway, instead of one per change in later tasks. Runs from before it still ask for
# each change by its own id. A later change gets an id of its own, as usual.
EVERY_PATCH_ABOVE = "every-patch-above-2026-11-26"
