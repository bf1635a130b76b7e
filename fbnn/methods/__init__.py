"""Inference methods: each a ``Method`` of pure ``init``/``step``/``sample`` functions."""
from .base import Batch, Method, Samples, expand_samples
from .ensemble import EnsembleState, ensemble, init_members
from .map import MapState, map_estimate, mc_dropout

map = map_estimate  # noqa: A001  (``fbnn.methods.map``, as in the design)

__all__ = ["Batch", "Method", "Samples", "expand_samples", "ensemble", "init_members",
           "EnsembleState", "map", "map_estimate", "mc_dropout", "MapState"]
