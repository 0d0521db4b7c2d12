"""The alerter: pure rules, sinks (Kafka topic, webhooks), the lease-holding service."""
