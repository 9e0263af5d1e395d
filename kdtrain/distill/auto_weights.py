"""Automatic distillation weights: calibrated once from gradient magnitudes, then fixed.

For every loss key set to ``auto`` (``--distill-weights auto`` or ``fgd=auto``), during the first
``iters`` training steps (``--distill-auto-iters``):

    g_det(k) = || d L_det / d theta_k ||,   g_k = || d L_k / d theta_k ||

where L_k is the key's raw (unweighted) loss, L_det the sum of the student's own detection losses
and theta_k the student parameters L_k reaches, i.e. the ones it shares with the detection loss
(the backbone and neck for a feature term; also the box head for Chen 2017's head terms). The
adaptation layers are left out: the detection loss never reaches them. Both norms are summed over
the steps on the device; after the last calibration step one host read (an all-reduce first under
DDP) fixes

    w_k = ratio * sum g_det(k) / sum g_k        (--distill-auto-ratio)

so that the weighted term's gradient on the shared parameters is ``ratio`` times the detection
loss's, on average over the calibration steps. The weight is then a constant for the rest of the
run and is kept in the checkpoint, so ``--resume`` continues with it. Before the last calibration
step the automatic terms are weighted 0 (the student trains on its detection loss alone); the
``--distill-warmup`` ramp multiplies the weights as usual. A key whose loss never reached a
student parameter, or gave it a zero gradient throughout (Chen 2017's bounded regression is 0 while the
student regresses better than the teacher), keeps its default weight, and the log says so.
"""

from __future__ import annotations

import math

import torch

from kdtrain.distill.recipes import AUTO_ITERS as DEFAULT_ITERS, AUTO_RATIO as DEFAULT_RATIO
from kdtrain.errors import UsageError


def _sq_norms(grads) -> list:
    """Squared L2 norm of each gradient, None where the loss does not reach the parameter."""
    present = [g for g in grads if g is not None]
    norms = iter(torch._foreach_norm(present) if present else [])
    return [None if g is None else next(norms).float().square() for g in grads]


def shared_gradient_norms(det_loss: torch.Tensor, raw: dict, params: list) -> dict:
    """{key: (||d raw[key] / d theta||, ||d det_loss / d theta||)} as detached 0-d tensors, theta the parameters
    of ``params`` that both losses reach; keys that reach none of them (or need no gradient) are left out.
    The graph is kept for the step's own backward; no .grad is written."""
    keys = [k for k, v in raw.items() if v.requires_grad]
    if not keys:
        return {}
    det_sq = _sq_norms(torch.autograd.grad(det_loss, params, retain_graph=True, allow_unused=True))
    out = {}
    for key in keys:
        term_sq = _sq_norms(torch.autograd.grad(raw[key], params, retain_graph=True, allow_unused=True))
        shared = [i for i, t in enumerate(term_sq) if t is not None and det_sq[i] is not None]
        if shared:
            out[key] = (torch.stack([term_sq[i] for i in shared]).sum().sqrt().detach(),
                        torch.stack([det_sq[i] for i in shared]).sum().sqrt().detach())
    return out


class AutoWeights:
    """The calibration state of the automatic keys; ``state_dict`` goes into the training checkpoint."""

    def __init__(self, keys, default_weights: dict, ratio: float = DEFAULT_RATIO, iters: int = DEFAULT_ITERS,
                 log=print):
        if not ratio > 0:
            raise UsageError(f"--distill-auto-ratio must be > 0, got {ratio!r}")
        if not (isinstance(iters, int) and iters > 0):
            raise UsageError(f"--distill-auto-iters must be an integer > 0, got {iters!r}")
        self.keys = tuple(keys)
        self.default_weights = {k: float(default_weights[k]) for k in self.keys}
        self.ratio, self.iters = float(ratio), int(iters)
        self.steps = 0
        self.det_sum: dict = {}   # key -> 0-d tensor on the training device
        self.term_sum: dict = {}
        self.weights: dict | None = None  # key -> float, once calibrated
        self.report: dict | None = None   # once calibrated: what was measured and chosen, at which iteration
        self._device = torch.device("cpu")  # of the sums; the training device once observed
        self._log = log

    @property
    def calibrated(self) -> bool:
        return self.weights is not None

    def weight(self, key: str) -> float:
        """The key's weight: 0 while calibrating."""
        return self.weights[key] if self.calibrated else 0.0

    def observe(self, det_loss: torch.Tensor, raw: dict, params: list, iteration: int) -> None:
        """Add one step's gradient norms (the graph is kept for the step's own backward)."""
        self._device = det_loss.device
        norms = shared_gradient_norms(det_loss, {k: raw[k] for k in self.keys if k in raw}, params)
        for key, (g_term, g_det) in norms.items():
            self.term_sum[key] = self.term_sum.get(key, 0.0) + g_term
            self.det_sum[key] = self.det_sum.get(key, 0.0) + g_det
        self.steps += 1
        if self.steps >= self.iters:
            self._finish(iteration)

    def _finish(self, iteration: int) -> None:
        # Every key, 0 where unmeasured: the all-reduce needs one shape on every rank (a key can be
        # missing from some batches, e.g. RPN distillation when the anchor grids differ).
        zero = torch.zeros((), device=self._device)
        stacked = torch.stack([torch.stack([torch.as_tensor(self.det_sum.get(k, zero), device=self._device),
                                            torch.as_tensor(self.term_sum.get(k, zero), device=self._device)])
                               for k in self.keys]).float()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(stacked)  # every rank fixes the same weights
        sums = dict(zip(self.keys, stacked.tolist()))  # the one host read of the calibration
        weights, grad_ratio, unmeasured = {}, {}, []
        for key in self.keys:
            det, term = sums[key]
            if term > 0 and det > 0 and math.isfinite(det / term):
                grad_ratio[key] = term / det
                weights[key] = self.ratio / grad_ratio[key]
            else:
                weights[key] = self.default_weights[key]
                unmeasured.append(key)
        self.weights = weights
        self.det_sum, self.term_sum = {}, {}
        self.report = {
            "kind": "auto_weights", "iteration": iteration, "calibration_iters": self.iters,
            "target_ratio": self.ratio, "weights": weights,
            "grad_ratio_at_weight_1": grad_ratio,
            "grad_ratio_at_default_weight": {k: r * self.default_weights[k] for k, r in grad_ratio.items()},
            "default_weights": self.default_weights, "unmeasured": unmeasured,
        }
        self._log(f"[kdtrain] automatic distillation weights after {self.iters} iterations (target gradient ratio "
                  f"{self.ratio:g} of the detection loss's): " + ", ".join(map(self._describe, weights)))

    def _describe(self, key: str) -> str:
        weight, default = self.weights[key], self.default_weights[key]
        ratio = self.report["grad_ratio_at_weight_1"].get(key)
        if ratio is None:
            return f"{key}={weight:g} (its default: no gradient on the student during calibration)"
        return f"{key}={weight:.4g} (ratio at weight 1: {ratio:.3g}, at the default {default:g}: {ratio * default:.3g})"

    # ---- checkpoint ----------------------------------------------------------
    def state_dict(self) -> dict:
        return {"keys": list(self.keys), "ratio": self.ratio, "iters": self.iters, "steps": self.steps,
                "det_sum": dict(self.det_sum), "term_sum": dict(self.term_sum), "weights": self.weights,
                "report": self.report}

    def load_state_dict(self, state: dict | None) -> None:
        if not state:
            raise UsageError("--resume: the checkpoint has no automatic distillation weights (it was not written "
                             f"by a run with --distill-weights auto for {', '.join(self.keys)}); resume with the "
                             "run's own --distill-weights")
        if list(state["keys"]) != list(self.keys):
            raise UsageError(f"--resume: the checkpoint's automatic distillation weights are for "
                             f"{', '.join(state['keys'])}, this run's for {', '.join(self.keys)}; resume with the "
                             "run's own --distill-weights")
        if not state["weights"] and (state["ratio"], state["iters"]) != (self.ratio, self.iters):
            raise UsageError(f"--resume: the checkpoint was calibrating with --distill-auto-ratio {state['ratio']:g} "
                             f"--distill-auto-iters {state['iters']}; resume with the same values")
        self.steps = int(state["steps"])
        self.det_sum, self.term_sum = dict(state["det_sum"]), dict(state["term_sum"])
        self.weights = dict(state["weights"]) if state["weights"] else None
        self.report = state["report"]
