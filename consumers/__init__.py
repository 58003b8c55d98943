"""confluent-kafka consumer processes: worker agents (run candidates) and the sink."""
