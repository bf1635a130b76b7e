"""fbnn: Bayesian neural networks in the JAX style on torch.func."""
from . import likelihoods, methods, models, optim, predict, priors, random, tree
from .fit import Collector, FitResult, fit

__version__ = "0.1.0"
__all__ = ["tree", "random", "models", "likelihoods", "priors", "optim", "methods", "predict",
           "fit", "Collector", "FitResult", "metrics", "data", "diagnostics"]


def __getattr__(name):  # metrics, data and diagnostics load lazily
    if name in ("metrics", "data", "diagnostics"):
        import importlib
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(name)
