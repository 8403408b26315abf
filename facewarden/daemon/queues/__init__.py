"""Durable job queues: embedded SQLite (default) and RabbitMQ (scale-out)."""
