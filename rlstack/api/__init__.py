"""The HTTP run service: launch, monitor and manage training runs as Ray jobs."""
