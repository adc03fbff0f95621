"""The fleet simulator and the small real models it, the tests and the demo run.

Importing this package needs only numpy and onnx; scikit-learn and skl2onnx (the
``train`` extra) are imported when a factory that trains is called.
"""

from __future__ import annotations

from modelfleet.sim.models import ModelCase, digits_mlp, large_matmul, tiny_cnn

__all__ = ["ModelCase", "digits_mlp", "large_matmul", "tiny_cnn"]
