"""gRPC plumbing every service shares: server builder (health, reflection, limits, SIGTERM), error mapping,
request ids, metrics, config, and the proto <-> tensor wrappers."""
