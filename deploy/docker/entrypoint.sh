#!/bin/sh
# The images' one entry point: `longcat-service NAME [FLAGS...]` runs `python -m services.NAME FLAGS...`,
# exactly the command the local stack runs (longcat/launch.py). Flags also come from LONGCAT_* variables.
# exec: the service is PID 1's only child process image, so SIGTERM reaches its graceful-shutdown handler.
set -eu
name="${1:-}"
case "$name" in
  encoder|denoiser|gateway|trainer)
    shift
    exec python -m "services.${name}" "$@"
    ;;
  longcat)
    # the CLI, for one-off jobs in the same image (e.g. `longcat tiny --out /models/tiny`)
    shift
    exec longcat "$@"
    ;;
  *)
    echo "usage: longcat-service {encoder|denoiser|gateway|trainer} [flags...] | longcat-service longcat ARGS..." >&2
    exit 64
    ;;
esac
