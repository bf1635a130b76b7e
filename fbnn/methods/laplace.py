"""Laplace approximations: K-FAC, diagonal, last-layer and full (Ritter, Botev & Barber 2018;
MacKay 1992; Daxberger et al. 2021).

The posterior is a Gaussian around the MAP parameters theta* whose precision is the
curvature of the negative log joint:

    precision = N * E[J' Hout J] + tau I,

with ``J = d out / d theta`` per example and ``Hout = -d^2 log p(y | out) / d out^2``
(the generalised Gauss-Newton, GGN). ``tau`` is the prior precision (a scalar or one per
layer); the curvature is summed over the data passed to ``step`` and kept unscaled and
uninverted in the state, so ``N`` and ``tau`` can be changed at prediction time
without another pass (the seed's design, SPEC 3.8.2).

Structures (``structure=``):
- ``"kfac"``: per Linear/Conv2d layer with weight and bias packed as ``M = [W | b]``
  ``(out, in+1)``, ``E[J' Hout J] ~ H (x) Q`` with the input factor ``Q = E[a~ a~']``
  (``a~ = [a; 1]``) and the pre-activation factor ``H = E[Hl]``. ``Hl`` is the exact
  per-example GGN of the layer's pre-activations h: for ``Hout = G G'`` (softmax:
  ``G = diag(sqrt p) - p sqrt(p)'``) the ``K`` columns of ``G`` are backpropagated to
  every layer at once (a ``vmap`` of ``vjp`` over columns), ``G_l = (dout/dh)' G``, and
  ``Hl = G_l G_l'``; this is SPEC 3.8.2's recursion ``Hl = B W' H(l+1) W B`` for ReLU
  nets and the exact GGN block for any architecture. Conv2d layers use unfolded
  patches (Grosse & Martens' KFC: ``Q`` averaged and ``H`` summed over positions).
  Other parameters (norm layers' affine, a learnt noise level) get a diagonal block.
- ``"diag"``: the diagonal of the GGN for every parameter.
- ``"last_layer"``: the full GGN of the last Linear layer's weights and bias (in
  ``M``'s row-major order); all other parameters stay at the MAP.
- ``"full"``: the full GGN of all parameters (small models only: ``P x P``).
Dense blocks keep their eigenvalues (for the log-determinant at any tau) and use one
Cholesky factor of the precision per (tau, N) for samples and predictives.

Curvatures (``curvature=``): ``"ggn"`` (exact, ``K`` backward passes per batch),
``"fisher"`` (one label per example drawn from the model's predictive with the step's
key; for non-categorical likelihoods ``G eps`` with ``eps ~ N(0, I)``, the same thing for a
Gaussian), ``"empirical"`` (the gradient at the observed label: the empirical Fisher).

Damping of K-FAC (``damping=``):
- ``"standard"``: precision ``N Q (x) H + tau I``, handled exactly through the
  eigendecompositions of both factors (laplace-torch's KronDecomposed);
- ``"ritter"``: the seed's (SPEC 3.8.3), each factor scaled and damped separately,
  ``Q~ = sqrt(N) Q + sqrt(tau) I``, ``H~ = sqrt(N) H + sqrt(tau) I``, precision ``Q~ (x) H~``;
  ``tau = 1 / hessian_diag_sig^2`` (0.15 in the seed). Samples are ``M + L_H^-T Z L_Q^-1``
  with Cholesky factors ``L`` of ``H~`` and ``Q~`` (triangular solves, no inverse).

A ``Laplace`` is a ``Method`` (``init``/``step``/``sample``/``check``, usable with
``fbnn.fit`` for one epoch) with the posterior's functions alongside: ``glm_predictive``
(the linearised predictive ``f ~ N(f*(x), J Sigma J')``, computed per layer from the
Kronecker identities, never forming the ``B x K x P`` Jacobian), ``glm_probs`` (probit),
``log_marginal_likelihood`` and ``optimize_prior_precision`` (scalar or per layer, exact
1-D maximisations of a function concave in ``log tau`` for the standard forms).
Linear algebra runs in float64; samples come back in the parameters' dtype.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch.func import vjp, vmap
from torch.overrides import TorchFunctionMode

from .. import random as fr
from . import base

__all__ = ["Laplace", "LaplaceState", "LayerSpec", "laplace", "kfac_laplace", "diag_laplace",
           "last_layer_laplace", "full_laplace", "fit_laplace", "find_layers", "probit",
           "grid_search_prior_precision", "STRUCTURES", "CURVATURES", "DAMPINGS"]

STRUCTURES = ("kfac", "diag", "last_layer", "full")
CURVATURES = ("ggn", "fisher", "empirical")
DAMPINGS = ("standard", "ritter")
_F64 = torch.float64
_DRAW_BYTES = 2 ** 24  # posterior draws of a block come in chunks of about this many bytes


def _draw_chunk(numel: int) -> int:
    """Draws per key for a block of ``numel`` parameters: a function of the block only, so
    the first ``m`` of ``n`` draws never depend on ``n``."""
    return max(1, min(256, _DRAW_BYTES // (8 * numel)))


class LayerSpec(NamedTuple):
    """A Linear or Conv2d call found in the model: its parameter names and conv settings."""
    group: str                   # the layer's name ("fc0"), its prior-precision group
    weight: str                  # params key of the weight
    bias: Optional[str]          # params key of the bias, or None
    kind: str                    # "linear" or "conv2d"
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)


class LaplaceState(NamedTuple):
    """Unscaled curvature sums around ``params`` (float64), over ``count`` examples.

    - ``kron``: ``{weight: (Q_sum (D, D), H_sum (O, O))}`` with ``D = in (+1 with a bias)``;
    - ``diag``: ``{leaf: sum of the GGN diagonal}`` shaped like the leaf;
    - ``dense``: ``(P, P)`` GGN sum of the last layer / all parameters, else ``(0, 0)``;
    - ``log_lik``: ``sum log p(y | f(x; params))`` over the same examples;
    - ``layers``: the ``LayerSpec``s found at the first ``step`` (``None`` before);
    - ``eigen``: eigendecompositions of the factors from ``Laplace.decompose`` (or None).
    """
    params: Any
    model_state: Any
    kron: dict
    diag: dict
    dense: torch.Tensor
    count: torch.Tensor          # () int64
    log_lik: torch.Tensor        # () float64
    layers: Optional[tuple]
    eigen: Optional[dict]


class Laplace(NamedTuple):
    """A ``Method`` (first nine fields) plus the posterior's functions (see the module doc)."""
    init: Callable
    step: Callable
    sample: Callable
    check: Callable
    model: Any
    keyed: bool
    name: str
    streams: Optional[int]
    subsets: Optional[Callable]
    decompose: Callable
    glm_predictive: Callable
    glm_probs: Callable
    log_marginal_likelihood: Callable
    optimize_prior_precision: Callable
    groups: Callable
    config: dict


# --- validation ---------------------------------------------------------------------------

def _positive(value, what: str, who: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point():
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or value <= 0:
        raise ValueError(f"{who}: {what} must be a finite number > 0, got {value!r}")
    return float(value)


def _check_prior_precision(value, who: str):
    if isinstance(value, dict):
        if not value:
            raise ValueError(f"{who}: prior_precision dict is empty")
        return {str(k): _positive(v, f"prior_precision[{k!r}]", who) for k, v in value.items()}
    return _positive(value, "prior_precision", who)


def _check_n_data(value, who: str):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{who}: n_data must be a positive int, got {value!r}")
    return int(value)


# --- finding layers: a torch-function mode that sees every F.linear / F.conv2d --------------

_LINEAR_ARGS = ("input", "weight", "bias")
_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_KINDS = {"linear": _LINEAR_ARGS, "conv2d": _CONV_ARGS}


class _Call(NamedTuple):
    weight: str
    bias: Optional[str]
    kind: str
    input: torch.Tensor
    out_shape: tuple
    conv: tuple  # (stride, padding, dilation, groups)


def _pair(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v), int(v))


class _Tap(TorchFunctionMode):
    """Records each ``linear``/``conv2d`` call whose weight is a leaf of ``params`` (found by
    identity) and adds ``probes[weight]`` (zeros) to its output, so that gradients with
    respect to the probes are gradients with respect to the pre-activations."""

    def __init__(self, params: dict, probes: dict | None = None):
        super().__init__()
        self.names = {id(v): k for k, v in params.items()}
        self.probes = probes or {}
        self.calls: list = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        arg_names = _KINDS.get(getattr(func, "__name__", None))
        if arg_names is None:
            return out
        bound = dict(zip(arg_names, args))
        bound.update(kwargs)
        weight = self.names.get(id(bound.get("weight")))
        if weight is None:
            return out
        bias_t = bound.get("bias")
        bias = self.names.get(id(bias_t)) if bias_t is not None else None
        kind = func.__name__
        conv = ()
        if kind == "conv2d":
            conv = (_pair(bound.get("stride", 1)), bound.get("padding", 0), _pair(bound.get("dilation", 1)),
                    int(bound.get("groups", 1)))
        self.calls.append(_Call(weight, bias, kind, bound["input"], tuple(out.shape), conv))
        if weight in self.probes:
            out = out + self.probes[weight]
        return out


def _conv_padding(padding, weight_shape, dilation):
    """Explicit ``(ph, pw)`` for int/tuple/'valid'/'same' padding, or None if asymmetric."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0)
        total = [d * (k - 1) for d, k in zip(dilation, weight_shape[2:])]
        if any(t % 2 for t in total):
            return None
        return tuple(t // 2 for t in total)
    return _pair(padding)


def find_layers(model, params: dict, x: torch.Tensor, model_state=None) -> tuple:
    """The ``LayerSpec``s of the Linear/Conv2d calls of ``model`` on inputs like ``x``, in call
    order. A weight used by several calls, grouped convolutions and asymmetric 'same' padding
    are left out (their parameters get diagonal blocks). Needs a flat params dict."""
    if not isinstance(params, dict):
        raise ValueError(f"laplace: params must be a flat dict of tensors, got {type(params).__name__}")
    tap = _Tap(params)
    with torch.no_grad(), tap:
        model.apply(params, x[:1], state=model_state)
    uses: dict = {}
    for c in tap.calls:
        uses[c.weight] = uses.get(c.weight, 0) + 1
    specs, seen = [], set()
    for c in tap.calls:
        if uses[c.weight] > 1 or c.weight in seen:
            continue
        seen.add(c.weight)
        group = c.weight.rpartition(".")[0] or c.weight
        if c.kind == "linear":
            specs.append(LayerSpec(group, c.weight, c.bias, "linear"))
            continue
        stride, padding, dilation, groups = c.conv
        padding = _conv_padding(padding, params[c.weight].shape, dilation)
        if groups == 1 and padding is not None:
            specs.append(LayerSpec(group, c.weight, c.bias, "conv2d", stride, padding, dilation))
    return tuple(specs)


# --- one forward pass and K' backward passes ----------------------------------------------------

def _expand_input(spec: LayerSpec, weight: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """A layer's input as ``(B, T, D)``: ``T`` positions (1 for a Linear on ``(B, in)``) and
    ``D = in`` (Conv2d: ``C k_h k_w`` unfolded patches), plus a column of ones with a bias."""
    if spec.kind == "linear":
        a = a.reshape(a.shape[0], -1, a.shape[-1])
    else:
        a = F.unfold(a, weight.shape[2:], dilation=spec.dilation, padding=spec.padding,
                     stride=spec.stride).transpose(1, 2)
    if spec.bias is not None:
        a = torch.cat([a, a.new_ones(a.shape[:-1] + (1,))], dim=-1)
    return a


def _as_positions(spec: LayerSpec, g: torch.Tensor, lead: int) -> torch.Tensor:
    """Pre-activation gradients ``(*lead, ...)`` as ``(*lead, T, O)``."""
    shape = g.shape[:lead]
    if spec.kind == "linear":
        return g.reshape(*shape, -1, g.shape[-1])
    return g.reshape(*shape, g.shape[lead], -1).transpose(-1, -2)


def _forward(model, params, model_state, x, specs):
    """``out (B, K)`` and ``{weight: (a~ (B, T, D), out_shape)}`` for the layers in ``specs``."""
    tap = _Tap(params)
    with torch.no_grad(), tap:
        out = model.apply(params, x, state=model_state)
    if out.dim() != 2:
        raise ValueError(f"laplace: model outputs must be (B, K), got {tuple(out.shape)}")
    wanted = {s.weight: s for s in specs}
    acts = {}
    for c in tap.calls:
        if c.weight in wanted and c.weight not in acts:
            s = wanted[c.weight]
            acts[c.weight] = (_expand_input(s, params[s.weight], c.input), c.out_shape)
    return out, acts


def _backward(model, params, model_state, x, specs, acts, rest: list, cot: torch.Tensor):
    """Backpropagate output cotangents ``cot (K', B, K)``: returns ``{weight: (K', B, T, O)}``
    pre-activation gradients and ``{leaf: (K', B, *shape)}`` per-example gradients of ``rest``."""
    probes = {s.weight: torch.zeros(acts[s.weight][1], dtype=cot.dtype) for s in specs}
    if not rest:
        def f(pr):
            with _Tap(params, pr):
                return model.apply(params, x, state=model_state)
        _, vjp_fn = vjp(f, probes)
        grads = vmap(vjp_fn)(cot)[0]
        rest_grads = {}
    else:
        rest_p = {k: params[k] for k in rest}

        def one(pr_n, x_n, cot_n):
            def f(pr, rp):
                p = {**params, **rp}
                with _Tap(p, {k: v[None] for k, v in pr.items()}):
                    return model.apply(p, x_n[None], state=model_state)[0]
            _, vjp_fn = vjp(f, pr_n, rest_p)
            return vmap(vjp_fn)(cot_n)

        g_pr, g_rest = vmap(one, in_dims=(0, 0, 1))(probes, x, cot)
        grads = {k: v.transpose(0, 1) for k, v in g_pr.items()}
        rest_grads = {k: v.transpose(0, 1) for k, v in g_rest.items()}
    by_weight = {s.weight: s for s in specs}
    grads = {k: _as_positions(by_weight[k], v, 2) for k, v in grads.items()}
    return grads, rest_grads


def _output_columns(likelihood, curvature: str, out: torch.Tensor, y: torch.Tensor, key) -> torch.Tensor:
    """Output cotangents ``(K', B, K)`` whose outer products sum to the output curvature:
    ``G`` with ``G G' = Hout`` (``ggn``), one sampled-label gradient (``fisher``), or the
    observed-label gradient (``empirical``)."""
    if curvature == "empirical":
        out_ = out.detach().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(-likelihood.log_lik(out_, y).sum(), out_)
        return g[None]
    categorical = likelihood.name == "categorical"
    if categorical:
        p = torch.softmax(out, dim=-1)
        if curvature == "fisher":
            u = fr.uniform(key, (out.shape[0], 1), dtype=p.dtype)
            label = (torch.cumsum(p, -1) < u).sum(-1).clamp_max(out.shape[-1] - 1)
            return (p - F.one_hot(label, out.shape[-1]).to(p.dtype))[None]
        sp = p.sqrt()
        g = torch.diag_embed(sp) - p[:, :, None] * sp[:, None, :]   # (B, K, K): G G' = diag(p) - p p'
        return g.permute(2, 0, 1)
    g = _output_hessian_root(likelihood, out, y)
    if curvature == "fisher":
        eps = fr.normal(key, out.shape, dtype=out.dtype)
        return torch.einsum("bkj,bj->bk", g, eps)[None]
    return g.permute(2, 0, 1)


def _output_hessian_root(likelihood, out, y) -> torch.Tensor:
    """``G (B, K, K)`` with ``G G'`` the per-example ``-d^2 log p / d out^2``, negative
    eigenvalues clipped to zero (exact for convex losses such as a fixed-noise Gaussian)."""
    def nll(o, t):
        return -likelihood.log_lik(o[None], t[None]).sum()
    hess = vmap(torch.func.hessian(nll))(out.detach(), y)
    evals, evecs = torch.linalg.eigh(hess.to(_F64))
    return (evecs * evals.clamp_min(0).sqrt()[:, None, :]).to(out.dtype)


# --- accumulating the curvature ---------------------------------------------------------------

def _split_packed(spec: LayerSpec, params: dict, m: torch.Tensor) -> dict:
    """``(..., O, D)`` packed ``[W | b]`` values -> ``{weight: (..., *W.shape), bias: (..., O)}``."""
    w_shape = params[spec.weight].shape
    lead = m.shape[:-2]
    if spec.bias is None:
        return {spec.weight: m.reshape(*lead, *w_shape)}
    return {spec.weight: m[..., :-1].reshape(*lead, *w_shape), spec.bias: m[..., -1]}


def _pack(spec: LayerSpec, params: dict) -> torch.Tensor:
    """``M = [W | b]`` of shape ``(O, D)``."""
    w = params[spec.weight]
    w = w.reshape(w.shape[0], -1)
    return w if spec.bias is None else torch.cat([w, params[spec.bias][:, None]], dim=1)


def _layer_grad(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per-example, per-column gradients of ``M``: ``sum_t g_t a_t'``: ``(K', B, O, D)``."""
    return torch.einsum("kbto,btd->kbod", g, a)


def _diag_of_layer(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``sum_{k,b} (sum_t g_t a_t')^2``: ``(O, D)``."""
    if a.shape[1] == 1:
        return (g[:, :, 0] ** 2).sum(0).T @ (a[:, 0] ** 2)
    return (_layer_grad(a, g) ** 2).sum((0, 1))


def _add_kron_block(dense: torch.Tensor, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``dense + sum_b kron(Hb, a_b a_b')`` with ``Hb = sum_k g_kb g_kb'``, as a new ``(O D, O D)``
    float64 tensor (``dense`` may be empty), for a layer with one position; rows and columns
    in ``M``'s row-major order. Built one output row ``i`` at a time: rows ``(i, .)`` are
    ``a' [Hb[i, i'] a_b]`` over ``(i', .)``, so no ``(O D)^2`` temporary is permuted or cast."""
    a, g = a[:, 0], g[:, :, 0]
    n, d = a.shape
    o = g.shape[-1]
    hb = torch.einsum("kbi,kbj->bij", g, g)
    out = torch.empty(o * d, o * d, dtype=_F64)
    for i in range(o):
        v = (hb[:, i, :, None] * a[:, None, :]).reshape(n, o * d)
        rows = slice(i * d, (i + 1) * d)
        block = a.T @ v
        if dense.numel():
            torch.add(dense[rows], block, out=out[rows])
        else:
            out[rows] = block
    return out


# --- the posterior at given (tau, N) ----------------------------------------------------------

class _Post(NamedTuple):
    kron: dict                   # weight -> ("standard", U_H, U_Q, S) | ("ritter", L_H, L_Q)
    diag: dict                   # leaf -> posterior variance (float64)
    dense: Optional[torch.Tensor]  # L, lower Cholesky factor of the dense block's precision
    dense_order: tuple           # ("layer", spec) | ("leaves", names)


def probit(mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """Probit approximation of ``E softmax(f)``, ``f ~ N(mean, cov)``: ``softmax(kappa * mean)``
    with ``kappa = 1 / sqrt(1 + pi/8 var)``. ``mean (B, K)``, ``cov (B, K, K)`` -> ``(B, K)``."""
    var = torch.diagonal(cov, dim1=-2, dim2=-1)
    return torch.softmax(mean / torch.sqrt(1.0 + math.pi / 8.0 * var), dim=-1)


def laplace(model, likelihood, *, structure: str = "kfac", curvature: str = "ggn",
            damping: str = "standard", prior_precision=1.0, n_data: int | None = None) -> Laplace:
    """A Laplace approximation of ``model``'s posterior around given MAP parameters.

    ``structure``: one of ``STRUCTURES``; ``curvature``: one of ``CURVATURES``;
    ``damping``: ``"standard"`` or ``"ritter"`` (K-FAC only; see the module doc).
    ``prior_precision``: tau > 0, or ``{group: tau}`` for every group (``Laplace.groups``;
    a group is a layer, e.g. ``"fc0"`` for ``fc0.weight`` and ``fc0.bias``). ``n_data``:
    the ``N`` that scales the curvature (default: the number of examples accumulated).
    Both are defaults; every function of the posterior takes them as keywords too.

    Usage: ``la = laplace(model, lik); state = fit_laplace(la, params, (x, y))`` (or
    ``fbnn.fit(la, la.init(key, params), (x, y), key, epochs=1, batch_size=128)``), then
    ``la.sample(state, key, S)``, ``la.glm_probs(state, x)``, ...
    """
    who = "laplace"
    if structure not in STRUCTURES:
        raise ValueError(f"{who}: unknown structure {structure!r}; choose one of {STRUCTURES}")
    if curvature not in CURVATURES:
        raise ValueError(f"{who}: unknown curvature {curvature!r}; choose one of {CURVATURES}")
    if damping not in DAMPINGS:
        raise ValueError(f"{who}: unknown damping {damping!r}; choose one of {DAMPINGS}")
    if damping == "ritter" and structure != "kfac":
        raise ValueError(f"{who}: damping='ritter' is for structure='kfac', not {structure!r}")
    default_tau = _check_prior_precision(prior_precision, who)
    default_n = _check_n_data(n_data, who)
    config = {"structure": structure, "curvature": curvature, "damping": damping,
              "prior_precision": default_tau, "n_data": default_n}

    # --- which parameters go where ---

    def used_layers(layers):
        if structure in ("kfac", "diag"):
            return list(layers)
        if structure == "last_layer":
            return [layers[-1]]
        return []

    def rest_leaves(params, layers):
        names = list(params)
        if structure == "full":
            return names
        if structure == "last_layer":
            return []
        covered = {n for s in layers for n in (s.weight, s.bias) if n is not None}
        return [n for n in names if n not in covered]

    def leaf_groups(params, layers) -> dict:
        out = {}
        for n in params:
            out[n] = n.rpartition(".")[0] or n
        for s in layers:
            if s.bias is not None:
                out[s.bias] = out[s.weight]
        if structure == "last_layer":
            s = layers[-1]
            return {n: out[n] for n in (s.weight, s.bias) if n is not None}
        return out

    def groups(state) -> tuple:
        """The prior-precision groups, in parameter order."""
        _need_fitted(state)
        return tuple(dict.fromkeys(leaf_groups(state.params, state.layers).values()))

    def _need_fitted(state):
        if state.layers is None or int(state.count) == 0:
            raise ValueError(f"{who}: the state holds no curvature yet; call step or fit_laplace first")

    # --- Method interface ---

    def init(key, params, model_state=None) -> LaplaceState:
        if not isinstance(params, dict):
            raise ValueError(f"{who}: params must be a flat dict of tensors, got {type(params).__name__}")
        ms = model.init_state() if model_state is None else model_state
        return LaplaceState(params, ms, {}, {}, torch.zeros(0, 0, dtype=_F64),
                            torch.zeros((), dtype=torch.int64), torch.zeros((), dtype=_F64), None, None)

    def discover(state, x):
        layers = find_layers(model, state.params, x, state.model_state)
        if structure in ("kfac", "last_layer") and not layers:
            raise ValueError(f"{who}: structure {structure!r} needs a Linear or Conv2d layer, but model "
                             f"{getattr(model, 'name', '')!r} has none that K-FAC supports")
        if structure == "last_layer":
            last = layers[-1]
            if last.kind != "linear":
                raise ValueError(f"{who}: last-layer Laplace needs a Linear last layer, found {last.kind}")
        return layers

    def step(state, batch, key):
        if batch.weight is not None:
            raise ValueError(f"{who}: weighted batches are not supported")
        if curvature == "fisher" and key is None:
            raise ValueError(f"{who}: curvature='fisher' draws labels and needs a key")
        x, y = batch.x, batch.y
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"{who}: x has {x.shape[0]} rows but y has {y.shape[0]}")
        layers = state.layers if state.layers is not None else discover(state, x)
        params, ms = state.params, state.model_state
        specs = used_layers(layers)
        rest = rest_leaves(params, layers)
        out, acts = _forward(model, params, ms, x, specs)
        if structure == "last_layer" and acts[specs[0].weight][0].shape[1] != 1:
            raise ValueError(f"{who}: last-layer Laplace needs the last Linear layer to act on (B, in) inputs")
        log_lik = likelihood.log_lik(out, y)
        cot = _output_columns(likelihood, curvature, out, y, key)
        grads, rest_grads = _backward(model, params, ms, x, specs, acts, rest, cot)
        kron, diag, dense = dict(state.kron), dict(state.diag), state.dense

        def add_diag(name, value):
            diag[name] = diag.get(name, 0) + value.to(_F64)

        for s in specs:
            a, g = acts[s.weight][0], grads[s.weight]
            if structure == "kfac":
                a2, g2 = a.reshape(-1, a.shape[-1]), g.reshape(-1, g.shape[-1])
                q = (a2.T @ a2).to(_F64) / a.shape[1]
                h = (g2.T @ g2).to(_F64)
                if s.weight in kron:
                    q, h = kron[s.weight][0] + q, kron[s.weight][1] + h
                kron[s.weight] = (q, h)
            elif structure == "diag":
                for n, v in _split_packed(s, params, _diag_of_layer(a, g)).items():
                    add_diag(n, v)
            else:  # last_layer
                dense = _add_kron_block(dense, a, g)
        if structure == "full":
            j = torch.cat([rest_grads[n].reshape(cot.shape[0] * x.shape[0], -1) for n in rest], dim=1)
            block = (j.T @ j).to(_F64)
            dense = block if dense.numel() == 0 else dense + block
        else:
            for n in rest:
                add_diag(n, (rest_grads[n] ** 2).sum((0, 1)))
        new = LaplaceState(params, ms, kron, diag, dense, state.count + x.shape[0],
                           state.log_lik + log_lik.detach().to(_F64).sum(), layers, None)
        return new, {"loss": -log_lik.detach().sum()}

    def check(state, x, y):
        base.check_data(model, likelihood, state.params, state.model_state, x, y)

    # --- eigendecompositions (independent of tau and N) ---

    def decompose(state) -> LaplaceState:
        """The state with ``eigen`` filled: eigenvalues and eigenvectors of the mean K-FAC
        factors, eigenvalues of the mean dense GGN. Later calls reuse them."""
        _need_fitted(state)
        if state.eigen is not None:
            return state
        count = float(state.count)
        eigen = {}
        for w, (q, h) in state.kron.items():
            lq, uq = torch.linalg.eigh(q / count)
            lh, uh = torch.linalg.eigh(h / count)
            eigen[w] = (lq.clamp_min(0), uq, lh.clamp_min(0), uh)
        if state.dense.numel():  # eigenvalues only: the log-determinant for any tau
            eigen["__dense__"] = torch.linalg.eigvalsh(state.dense / count).clamp_min(0)
        return state._replace(eigen=eigen)

    def _eigen(state):
        return decompose(state).eigen

    def _ready(state):
        """``state`` with the eigendecompositions its posterior needs, computed once per call."""
        _need_fitted(state)
        if state.eigen is None and structure == "kfac" and damping == "standard":
            return decompose(state)
        return state

    # --- resolving tau and N ---

    def taus(state, prior_precision) -> dict:
        """``{leaf: tau}`` for the leaves in the posterior."""
        value = config["prior_precision"] if prior_precision is None else \
            _check_prior_precision(prior_precision, who)
        lg = leaf_groups(state.params, state.layers)
        if not isinstance(value, dict):
            return {n: value for n in lg}
        known = set(lg.values())
        unknown = sorted(set(value) - known)
        missing = sorted(known - set(value))
        if unknown or missing:
            raise ValueError(f"{who}: prior_precision groups do not match the model's {sorted(known)}: "
                             f"unknown {unknown}, missing {missing}")
        return {n: value[g] for n, g in lg.items()}

    def resolve_n(state, n_data) -> float:
        n = _check_n_data(n_data, who)
        if n is None:
            n = config["n_data"]
        return float(n if n is not None else int(state.count))

    def dense_order(state):
        if structure == "last_layer":
            return ("layer", state.layers[-1])
        return ("leaves", tuple(state.params))

    def posterior(state, prior_precision, n_data) -> _Post:
        _need_fitted(state)
        tau = taus(state, prior_precision)
        n = resolve_n(state, n_data)
        count = float(state.count)
        kron = {}
        if structure == "kfac":
            eig = _eigen(state) if damping == "standard" else None
            for w, (q, h) in state.kron.items():
                t = tau[w]
                if damping == "standard":
                    lq, uq, lh, uh = eig[w]
                    kron[w] = ("standard", uh, uq, 1.0 / (n * lh[:, None] * lq[None, :] + t))
                else:
                    eye_q = torch.eye(q.shape[0], dtype=_F64)
                    eye_h = torch.eye(h.shape[0], dtype=_F64)
                    lq = torch.linalg.cholesky(math.sqrt(n) * q / count + math.sqrt(t) * eye_q)
                    lh = torch.linalg.cholesky(math.sqrt(n) * h / count + math.sqrt(t) * eye_h)
                    kron[w] = ("ritter", lh, lq)
        diag = {name: 1.0 / (n * d / count + tau[name]) for name, d in state.diag.items()}
        dense = None
        if state.dense.numel():  # Cholesky factor L of the precision: Sigma = L^-T L^-1
            prec = n * state.dense / count + torch.diag(_dense_tau(state, tau, dense_order(state)))
            dense = torch.linalg.cholesky(prec)
        return _Post(kron, diag, dense, dense_order(state) if dense is not None else ())

    def _dense_tau(state, tau, order) -> torch.Tensor:
        if order[0] == "layer":
            s = order[1]
            return torch.full((_pack(s, state.params).numel(),), tau[s.weight], dtype=_F64)
        return torch.cat([torch.full((state.params[n].numel(),), tau[n], dtype=_F64) for n in order[1]])

    # --- sampling ---

    def sample(state, key, n, *, prior_precision=None, n_data=None) -> base.Samples:
        """``n`` posterior draws: ``Samples`` with params ``(n, ...)``. Block ``i``'s draws come
        in chunks (of a size fixed by the block) from ``fold_in(fold_in(key, i), chunk)``, so
        the first ``m`` of ``n`` draws do not depend on ``n``."""
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"{who}: the number of samples must be a positive int, got {n!r}")
        state = _ready(state)
        post = posterior(state, prior_precision, n_data)
        params = state.params
        out = {k: v.detach().unsqueeze(0).repeat(n, *([1] * v.dim())) for k, v in params.items()}
        by_weight = {s.weight: s for s in state.layers}
        blocks = [("kron", w) for w in post.kron] + [("diag", d) for d in post.diag] + \
                 ([("dense", None)] if post.dense is not None else [])
        for i, (kind, name) in enumerate(blocks):
            bkey = fr.fold_in(key, i)
            if kind == "kron":
                size = _pack(by_weight[name], params).numel()
            else:
                size = params[name].numel() if kind == "diag" else post.dense.shape[0]
            chunk = _draw_chunk(size)
            for c0 in range(0, n, chunk):
                k, m = fr.fold_in(bkey, c0 // chunk), min(chunk, n - c0)
                if kind == "kron":
                    delta = {leaf: v[:m] for leaf, v in _split_packed(
                        by_weight[name], params, _kron_noise(post.kron[name], k, chunk)).items()}
                elif kind == "diag":
                    z = fr.normal(k, (chunk,) + tuple(params[name].shape), dtype=_F64)[:m]
                    delta = {name: z * post.diag[name].sqrt()}
                else:
                    delta = _dense_unflatten(state, post, _dense_noise(post.dense, k, chunk)[:m])
                for leaf, v in delta.items():
                    out[leaf][c0:c0 + m] += v.to(out[leaf].dtype)
        return base.expand_samples({}, state.model_state, n)._replace(params=out)

    def _dense_unflatten(state, post, vec) -> dict:
        """``(..., P)`` dense-block values -> ``{leaf: (..., *shape)}``."""
        kind, what = post.dense_order
        lead = vec.shape[:-1]
        if kind == "layer":
            m = _pack(what, state.params)
            return _split_packed(what, state.params, vec.reshape(*lead, *m.shape))
        res, i = {}, 0
        for n in what:
            size = state.params[n].numel()
            res[n] = vec[..., i:i + size].reshape(*lead, *state.params[n].shape)
            i += size
        return res

    # --- the linearised (GLM) predictive ---

    def glm_predictive(state, x, *, prior_precision=None, n_data=None, chunk: int = 256):
        """``(mean (B, K), cov (B, K, K))`` of ``f(x) ~ N(f*(x), J Sigma J')`` (in the outputs'
        dtype). Inputs are processed ``chunk`` at a time; per layer the covariance comes
        from the Kronecker identity ``(a' Q~^-1 a) (df/dh) H~^-1 (df/dh)'`` (or its
        eigenbasis form), never from a ``B x K x P`` Jacobian."""
        if isinstance(chunk, bool) or not isinstance(chunk, numbers.Integral) or chunk < 1:
            raise ValueError(f"{who}: chunk must be a positive int, got {chunk!r}")
        state = _ready(state)
        post = posterior(state, prior_precision, n_data)
        params, ms = state.params, state.model_state
        by_weight = {s.weight: s for s in state.layers}
        specs = [by_weight[w] for w in post.kron]
        rest = []
        if structure in ("diag",):
            specs = [s for s in state.layers if s.weight in post.diag]
        if structure == "last_layer":
            specs = [state.layers[-1]]
            root = _inverse_cholesky_t(post.dense)   # Sigma = root root'
        if structure == "full":
            rest = list(params)
        else:
            covered = {n for s in specs for n in (s.weight, s.bias) if n is not None}
            rest = [n for n in post.diag if n not in covered]
        means, covs = [], []
        for b0 in range(0, x.shape[0], chunk):
            xb = x[b0:b0 + chunk]
            out, acts = _forward(model, params, ms, xb, specs)
            k = out.shape[-1]
            cot = torch.eye(k, dtype=out.dtype)[:, None, :].expand(k, xb.shape[0], k)
            grads, rest_grads = _backward(model, params, ms, xb, specs, acts, rest, cot)
            cov = torch.zeros(xb.shape[0], k, k, dtype=_F64)
            for s in specs:
                a, g = acts[s.weight][0].to(_F64), grads[s.weight].to(_F64)
                if s.weight in post.kron:
                    cov += _kron_cov(post.kron[s.weight], a, g)
                elif structure == "diag":
                    var = _pack_values(s, params, post.diag)
                    cov += _diag_layer_cov(var, a, g)
                else:
                    cov += _dense_layer_cov(root, a, g)
            if rest:
                if structure == "full":
                    j = torch.cat([rest_grads[n].reshape(k, xb.shape[0], -1) for n in rest], -1).to(_F64)
                    cov += _dense_cov(post.dense, j)
                else:
                    for n in rest:
                        r = rest_grads[n].reshape(k, xb.shape[0], -1).to(_F64)
                        cov += torch.einsum("kbp,lbp,p->bkl", r, r, post.diag[n].reshape(-1))
            means.append(out)
            covs.append(cov.to(out.dtype))
        return torch.cat(means), torch.cat(covs)

    def glm_probs(state, x, **kw) -> torch.Tensor:
        """Class probabilities ``(B, K)`` of the GLM predictive with the probit approximation."""
        mean, cov = glm_predictive(state, x, **kw)
        return probit(mean.to(_F64), cov.to(_F64)).to(mean.dtype)

    # --- marginal likelihood ---

    def _group_terms(state, n):
        """Per group: ``(P_g, |theta_g|^2, [logdet(tau) functions])`` of the precision's blocks."""
        count = float(state.count)
        lg = leaf_groups(state.params, state.layers)
        terms = {g: [0, 0.0, []] for g in dict.fromkeys(lg.values())}
        for leaf, g in lg.items():
            p = state.params[leaf].detach().to(_F64)
            terms[g][0] += p.numel()
            terms[g][1] += float((p ** 2).sum())
        eig = _eigen(state)
        for w in state.kron:
            lq, _, lh, _ = eig[w]
            g = lg[w]
            if damping == "standard":
                lam = (n * lh[:, None] * lq[None, :]).reshape(-1)
                terms[g][2].append(lambda t, lam=lam: torch.log(lam + t).sum())
            else:
                o, d = lh.numel(), lq.numel()
                terms[g][2].append(lambda t, lq=lq, lh=lh, o=o, d=d:
                                   o * torch.log(math.sqrt(n) * lq + math.sqrt(t)).sum()
                                   + d * torch.log(math.sqrt(n) * lh + math.sqrt(t)).sum())
        for leaf, dsum in state.diag.items():
            lam = (n * dsum / count).reshape(-1)
            terms[lg[leaf]][2].append(lambda t, lam=lam: torch.log(lam + t).sum())
        if state.dense.numel():
            lam = n * eig["__dense__"]
            order = dense_order(state)
            gs = {lg[order[1].weight]} if order[0] == "layer" else {lg[x] for x in order[1]}
            if len(gs) != 1:
                return terms, lam   # a dense block over several groups: not separable
            terms[gs.pop()][2].append(lambda t, lam=lam: torch.log(lam + t).sum())
        return terms, None

    def log_marginal_likelihood(state, prior_precision=None, *, n_data=None) -> torch.Tensor:
        """Laplace's ``log p(D) ~ log p(D | theta*) + log p(theta*) + P/2 log 2 pi - 1/2 log det(precision)``
        for the Gaussian prior ``N(0, 1/tau)``: a float64 scalar. The data term is the
        accumulated log-likelihood scaled to ``N`` examples."""
        state = decompose(state)
        n = resolve_n(state, n_data)
        tau = taus(state, prior_precision)
        lg = leaf_groups(state.params, state.layers)
        tau_g = {g: tau[leaf] for leaf, g in lg.items()}
        total = state.log_lik * (n / float(state.count))
        terms, coupled = _group_terms(state, n)
        for g, (p, sq, fns) in terms.items():
            t = tau_g[g]
            total = total + 0.5 * p * math.log(t) - 0.5 * t * sq - 0.5 * sum(f(t) for f in fns)
        if coupled is not None:  # one dense block over several groups
            chol = posterior(state, prior_precision, n_data).dense
            total = total - torch.log(torch.diagonal(chol)).sum()
        return total

    def optimize_prior_precision(state, *, per_layer: bool = False, n_data=None, bounds=(1e-8, 1e8),
                                 tol: float = 1e-10):
        """The prior precision maximising ``log_marginal_likelihood``: a float, or with
        ``per_layer=True`` a ``{group: tau}`` dict. The objective separates over groups and
        each part is maximised over ``log tau`` by golden-section search inside ``bounds``
        (concave in ``log tau`` for the standard forms, so the maximum is global)."""
        state = decompose(state)
        lo, hi = bounds
        if not (0 < lo < hi) or not math.isfinite(hi):
            raise ValueError(f"{who}: bounds must satisfy 0 < low < high < inf, got {bounds!r}")
        n = resolve_n(state, n_data)
        terms, coupled = _group_terms(state, n)
        if coupled is not None:
            if per_layer:
                raise ValueError(f"{who}: per-layer prior precisions need a separable structure "
                                 f"(kfac, diag, last_layer); structure {structure!r} couples the groups")
            terms = {"all": [sum(t[0] for t in terms.values()), sum(t[1] for t in terms.values()),
                             [fn for t in terms.values() for fn in t[2]]
                             + [lambda t, lam=coupled: torch.log(lam + t).sum()]]}

        def objective(parts):
            def f(s):
                t = math.exp(s)
                return sum(0.5 * p * s - 0.5 * t * sq - 0.5 * sum(float(fn(t)) for fn in fns)
                           for p, sq, fns in parts)
            return f

        if not per_layer:
            return math.exp(_golden_max(objective(list(terms.values())), math.log(lo), math.log(hi), tol))
        return {g: math.exp(_golden_max(objective([t]), math.log(lo), math.log(hi), tol))
                for g, t in terms.items()}

    name = f"{structure}_laplace"
    return Laplace(init, step, sample, check, model, False, name, None, None, decompose, glm_predictive, glm_probs,
                   log_marginal_likelihood, optimize_prior_precision, groups, config)


# --- block helpers (pure tensor functions) -----------------------------------------------------

def _kron_noise(block, key, chunk: int) -> torch.Tensor:
    """``chunk`` draws of ``M - M*`` for a K-FAC block: ``(C, O, D)`` float64."""
    if block[0] == "standard":
        _, uh, uq, s = block
        z = fr.normal(key, (chunk,) + tuple(s.shape), dtype=_F64)
        return uh @ (z * s.sqrt()) @ uq.T
    _, lh, lq = block
    z = fr.normal(key, (chunk, lh.shape[0], lq.shape[0]), dtype=_F64)
    y = torch.linalg.solve_triangular(lh.T, z, upper=True)                # L_H^-T Z
    return torch.linalg.solve_triangular(lq, y, upper=False, left=False)  # ... L_Q^-1


def _dense_noise(chol, key, chunk: int) -> torch.Tensor:
    """``chunk`` draws ``(C, P)`` of ``N(0, (L L')^-1)``: ``L^-T z``."""
    z = fr.normal(key, (chol.shape[0], chunk), dtype=_F64)
    return torch.linalg.solve_triangular(chol.T, z, upper=True).T


def _inverse_cholesky_t(chol) -> torch.Tensor:
    """``L^-T`` (upper triangular): ``(L L')^-1 = L^-T L^-1``."""
    return torch.linalg.solve_triangular(chol.T, torch.eye(chol.shape[0], dtype=chol.dtype), upper=True)


def _kron_cov(block, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``J Sigma J'`` of one K-FAC layer: ``a (B, T, D)``, ``g (K, B, T, O)`` -> ``(B, K, K)``."""
    if a.shape[1] == 1:
        a1, g1 = a[:, 0], g[:, :, 0]
        if block[0] == "standard":
            _, uh, uq, s = block
            gt = g1 @ uh                                        # (K, B, O)
            w = ((a1 @ uq) ** 2) @ s.T                          # (B, O)
            return torch.einsum("kbi,lbi,bi->bkl", gt, gt, w)
        _, lh, lq = block
        qa = (torch.linalg.solve_triangular(lq, a1.T, upper=False) ** 2).sum(0)       # a' Q~^-1 a: (B,)
        zh = torch.linalg.solve_triangular(lh, g1.reshape(-1, g1.shape[-1]).T, upper=False)
        zh = zh.T.reshape(g1.shape)                                                  # L_H^-1 g
        return qa[:, None, None] * torch.einsum("kbi,lbi->bkl", zh, zh)
    gm = _layer_grad(a, g)                                      # (K, B, O, D)
    if block[0] == "standard":
        _, uh, uq, s = block
        gt = uh.T @ gm @ uq
        return torch.einsum("kbij,lbij,ij->bkl", gt, gt, s)
    _, lh, lq = block
    x = torch.linalg.solve_triangular(lh, gm, upper=False)                       # L_H^-1 G
    x = torch.linalg.solve_triangular(lq.T, x, upper=True, left=False)          # ... L_Q^-T
    return torch.einsum("kbij,lbij->bkl", x, x)


def _pack_values(spec: LayerSpec, params: dict, values: dict) -> torch.Tensor:
    w = values[spec.weight].reshape(params[spec.weight].shape[0], -1)
    return w if spec.bias is None else torch.cat([w, values[spec.bias][:, None]], dim=1)


def _diag_layer_cov(var: torch.Tensor, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``J diag(var) J'`` of one layer: ``var (O, D)``."""
    if a.shape[1] == 1:
        w = (a[:, 0] ** 2) @ var.T                              # (B, O)
        return torch.einsum("kbi,lbi,bi->bkl", g[:, :, 0], g[:, :, 0], w)
    gm = _layer_grad(a, g)
    return torch.einsum("kbij,lbij,ij->bkl", gm, gm, var)


def _dense_cov(chol, j: torch.Tensor) -> torch.Tensor:
    """``J Sigma J'`` for Jacobian rows ``j (K, B, P)``: ``|L^-1 J'|^2``."""
    k, b, p = j.shape
    z = torch.linalg.solve_triangular(chol, j.reshape(k * b, p).T, upper=False).T.reshape(k, b, p)
    return torch.einsum("kbp,lbp->bkl", z, z)


def _dense_layer_cov(root, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``J Sigma J'`` for a dense block over one Linear layer's ``M`` (row-major), with
    ``Sigma = root root'`` and ``J_k = vec(g_k a')``: contract ``root`` with ``a`` first, so
    the ``(B, K, O D)`` Jacobian is never formed."""
    a1, g1 = a[:, 0], g[:, :, 0]
    o, d = g1.shape[-1], a1.shape[-1]
    y = torch.einsum("bd,idm->bim", a1, root.reshape(o, d, -1))   # (B, O, P)
    jr = torch.einsum("kbi,bim->kbm", g1, y)                      # (K, B, P)
    return torch.einsum("kbm,lbm->bkl", jr, jr)


def _golden_max(f, lo: float, hi: float, tol: float) -> float:
    """Maximiser of a unimodal ``f`` on ``[lo, hi]``: a coarse grid, then golden section."""
    grid = torch.linspace(lo, hi, 65, dtype=_F64).tolist()
    values = [f(s) for s in grid]
    i = max(range(len(grid)), key=values.__getitem__)
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    r = (math.sqrt(5) - 1) / 2
    c, d = b - r * (b - a), a + r * (b - a)
    fc, fd = f(c), f(d)
    while b - a > tol:
        if fc > fd:
            b, d, fd = d, c, fc
            c = b - r * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + r * (b - a)
            fd = f(d)
    return (a + b) / 2


# --- constructors and drivers ---------------------------------------------------------------------

def kfac_laplace(model, likelihood, **kw) -> Laplace:
    """``laplace(..., structure="kfac")``. The seed (SPEC 3.8): ``damping="ritter",
    prior_precision=1 / 0.15**2, n_data=60000``."""
    return laplace(model, likelihood, structure="kfac", **kw)


def diag_laplace(model, likelihood, **kw) -> Laplace:
    """``laplace(..., structure="diag")``; ``curvature="empirical"`` gives the empirical Fisher."""
    return laplace(model, likelihood, structure="diag", **kw)


def last_layer_laplace(model, likelihood, **kw) -> Laplace:
    """``laplace(..., structure="last_layer")``: full covariance over the last Linear layer."""
    return laplace(model, likelihood, structure="last_layer", **kw)


def full_laplace(model, likelihood, **kw) -> Laplace:
    """``laplace(..., structure="full")``: the full ``P x P`` GGN (small models)."""
    return laplace(model, likelihood, structure="full", **kw)


def fit_laplace(la: Laplace, params, data, *, model_state=None, batch_size: int = 128, key=None,
                progress: bool = False) -> LaplaceState:
    """Accumulate the curvature of ``la`` at ``params`` over ``data = (x, y)`` in order,
    ``batch_size`` examples at a time (memory stays bounded by one batch). ``key`` is
    needed for ``curvature="fisher"`` (batch ``i`` uses ``fold_in(key, i)``)."""
    x, y = data
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"fit_laplace: batch_size must be a positive int, got {batch_size!r}")
    state = la.init(key, params, model_state)
    la.check(state, x, y)
    if la.config["curvature"] == "fisher" and key is None:
        raise ValueError("fit_laplace: curvature='fisher' draws labels and needs a key")
    starts = range(0, x.shape[0], batch_size)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc=la.name, dynamic_ncols=True)
    for i, b0 in enumerate(starts):
        batch = base.Batch(x[b0:b0 + batch_size], y[b0:b0 + batch_size])
        state, _ = la.step(state, batch, None if key is None else fr.fold_in(key, i))
    return state


def grid_search_prior_precision(la: Laplace, state, x_val, y_val, grid, *, predictive: str = "glm",
                                likelihood=None, key=None, n_samples: int = 100, n_data=None):
    """The prior precision in ``grid`` with the highest validation log-likelihood
    ``mean log p(y | x)``; returns ``(best_tau, {tau: value})``.

    ``predictive="glm"``: the probit GLM predictive for a categorical likelihood;
    otherwise (``likelihood`` required) ``log mean_s p(y | f_s)`` over ``n_samples`` draws
    ``f_s ~ N(f*, J Sigma J')``. ``predictive="mc"``: the same average over weight samples."""
    if predictive not in ("glm", "mc"):
        raise ValueError(f"grid_search_prior_precision: predictive must be 'glm' or 'mc', got {predictive!r}")
    grid = [_positive(t, "grid value", "grid_search_prior_precision") for t in grid]
    if not grid:
        raise ValueError("grid_search_prior_precision: grid is empty")
    categorical = likelihood is None or likelihood.name == "categorical"
    if not categorical or predictive == "mc":
        if likelihood is None:
            raise ValueError("grid_search_prior_precision: pass likelihood= for this predictive")
        if key is None:
            raise ValueError("grid_search_prior_precision: a key is needed for sampled predictives")
    from ..predict import predict
    scores = {}
    for i, tau in enumerate(grid):
        if predictive == "glm" and categorical:
            probs = la.glm_probs(state, x_val, prior_precision=tau, n_data=n_data).to(_F64)
            score = torch.log(probs.gather(-1, y_val.long()[:, None]).clamp_min(1e-300)).mean()
        else:
            k = fr.fold_in(key, i)
            if predictive == "glm":
                mean, cov = la.glm_predictive(state, x_val, prior_precision=tau, n_data=n_data)
                chol = torch.linalg.cholesky(cov.to(_F64) + 1e-12 * torch.eye(cov.shape[-1], dtype=_F64))
                z = fr.normal(k, (n_samples,) + tuple(mean.shape), dtype=_F64)
                outs = (mean.to(_F64) + torch.einsum("bkl,sbl->sbk", chol, z)).to(mean.dtype)
            else:
                outs = predict(la.model, la.sample(state, k, n_samples, prior_precision=tau, n_data=n_data),
                               x_val)
            ll = torch.stack([likelihood.log_lik(o, y_val) for o in outs]).to(_F64)
            score = (torch.logsumexp(ll, 0) - math.log(ll.shape[0])).mean()
        scores[tau] = float(score)
    return max(scores, key=scores.get), scores
