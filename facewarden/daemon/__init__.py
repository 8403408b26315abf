"""The daemon: CLI, sources, routing, queues, workers, HTTP app, lifecycle."""
