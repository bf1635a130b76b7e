"""Inference methods: each a ``Method`` of pure ``init``/``step``/``sample`` functions."""
from .base import Batch, Method, Samples, expand_samples
from .ensemble import EnsembleState, ensemble, init_members
from .map import MapState, map_estimate, mc_dropout
from .sgmcmc import (PsgldState, SghmcSaState, SghmcState, SgldState, gibbs_precision, psgld, sghmc,
                     sghmc_sa, sgld)

from . import evidential, laplace, vi  # noqa: E402  (method families: fbnn.methods.vi.bbp, ...)

map = map_estimate  # noqa: A001  (``fbnn.methods.map``, as in the design)

__all__ = ["vi", "laplace", "evidential", "Batch", "Method", "Samples", "expand_samples", "ensemble", "init_members",
           "EnsembleState", "map", "map_estimate", "mc_dropout", "MapState", "sgld", "psgld", "sghmc",
           "sghmc_sa", "gibbs_precision", "SgldState", "PsgldState", "SghmcState", "SghmcSaState"]
