"""The four LongCat services. Each runs as its own process: ``python -m services.<name>``."""

import os

# Idle OpenMP threads sleep instead of spinning: several model processes share the CPU cores on one machine
# (the local stack), and spinning workers of an idle service would steal them from the busy one. Must be
# set before torch loads its OpenMP runtime, which is why it lives here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
