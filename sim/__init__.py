"""A device simulator: behaves like imaging-equipment software for the telemetry tests.

``python -m sim --log FILE [--control FILE] [--props FILE]`` writes a realistic log
(with error codes, and the personal data real logs contain, which the agent must
scrub) at a steady pace; writing ``fail [CODE]`` into the control file (or SIGUSR1)
makes it fail with an urgent code, ``ok`` (or SIGUSR2) recovers, ``stop`` ends it.
See `sim.device`.
"""

from __future__ import annotations
