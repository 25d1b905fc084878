"""personsearch: text-based person search (IRRA with attention-guided masking)."""

import os as _os

# OpenMP threads that spin while waiting for work collapse throughput as soon as anything else
# wants the cores (DataLoader workers decoding images, a second process): measured 6x slower
# training steps on 2 cores. Sleeping waits cost nothing measurable on large operations. Only a
# default, and only effective when set before torch is first imported.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
