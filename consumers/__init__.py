"""confluent-kafka consumer processes: worker agents (run candidates) and the sink."""

from shadowline.extras import require

require("pipeline")
