"""``python -m longcat.rpc.healthcheck HOST:PORT``: exit 0 when the server's gRPC health says SERVING.

For container health checks (compose.yaml) where no grpc_health_probe binary is installed."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from longcat.rpc.channel import health_status, make_channel

    args = sys.argv[1:] if argv is None else argv
    address = args[0] if args else "127.0.0.1:50051"
    channel = make_channel(address)
    try:
        status = health_status(channel, timeout=3.0)
    finally:
        channel.close()
    print(f"{address}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
