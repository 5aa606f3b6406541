"""Every name the API, the workers, the relay and the tests share with the workflow."""

WORKFLOW_QUEUE = "spinbot.workflows"
ACTIVITY_QUEUE = "spinbot.activities"

JOB_WORKFLOW = "JobWorkflow"

# The internal job that asks the data plane for its manifest: hidden from job lists and counts.
CAPABILITIES_PIPELINE = "capabilities"

# Signals
HANDBACK = "handback"
DATAPLANE_FAILED = "dataplane_failed"

# `source` of the status messages the workflow publishes: the relay never mistakes them for the data plane's.
CONTROL_SOURCE = "control-plane"

# Queries
STATE = "state"

# Bridge activities, run by the workflow worker next to the workflow.
SYNC_JOB = "bridge.sync_job"

# Custom search attributes (Keyword), registered on the Temporal server at start.
STATUS_ATTRIBUTE = "JobStatus"
PIPELINE_ATTRIBUTE = "JobPipeline"
SEARCH_ATTRIBUTES = (STATUS_ATTRIBUTE, PIPELINE_ATTRIBUTE)
