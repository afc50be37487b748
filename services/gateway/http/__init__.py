"""The gateway's HTTP door: FastAPI routes over the one :class:`~services.gateway.core.GatewayCore` (the gRPC
servicers are the other door). ``app.create_app`` builds the application; ``server.HttpServer`` runs it."""
