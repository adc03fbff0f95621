"""modelfleet: keep AI models healthy on fleets of edge devices."""

from __future__ import annotations

import os

__all__ = ["__version__"]

# Before anything imports ONNX Runtime (modelfleet.bundle and the agent do): left alone it writes a device
# id and a telemetry database under ~/.cache/Microsoft and may send usage telemetry. Devices and servers
# running modelfleet do neither; whoever wants it sets ORT_DISABLE_TELEMETRY=0 first. This sets a
# third-party switch; modelfleet.config stays the only module that reads configuration from the environment.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"
