"""Publishing the outbox to RabbitMQ."""
