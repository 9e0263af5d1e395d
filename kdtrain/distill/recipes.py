"""Recipe names -> loss terms, and each term's default weight.

Recipes combine with commas (``fgd,chen2017``); the union of their terms runs.
Weights are calibrated for kdtrain's reductions (kdops ``normalize`` choices
below); raw imitation at weight ~1 on sum-reduced features hurt in planning.
"""

from __future__ import annotations

import math

from kdtrain.errors import UsageError

RECIPES = {
    "none": (),
    "imitation": ("imitation",),
    "fgd": ("fgd",),
    # Chen 2017: hint (with adaptation) + RCN and RPN head distillation.
    "chen2017": ("imitation", "chen_rcn", "chen_rpn"),
    "cwd": ("cwd",),
    "pkd": ("pkd",),
    "mgd": ("mgd",),
}

# Multiplier of each logged loss key. FGD's own alpha..lambda live inside
# kdops.nn.FGDLoss presets; this weight scales the whole FGD term (summed over
# levels). Each value next to the papers and official configs: docs/recipes.md.
DEFAULT_WEIGHTS = {
    "imitation": 1.0,      # kdops.nn.HintLoss, normalize="mean"
    "fgd": 1.0,
    "chen_rcn_cls": 1.0,   # soft CE (mu=0; the hard CE stays in torchvision's loss)
    "chen_rcn_reg": 0.5,   # nu = 0.5 (docs/math.md §7)
    "chen_rpn_cls": 1.0,
    "chen_rpn_reg": 0.5,   # nu = 0.5 on the RPN's bounded regression too (Chen 2017 eq. 1, 4)
    "cwd": 1.0,
    "pkd": 1.0,
    "mgd": 1.0,            # MGD's alpha lives in the kdops.nn.MGDLoss presets, as FGD's
}

# Loss keys each term produces (for weights given per term name).
TERM_KEYS = {
    "imitation": ("imitation",),
    "fgd": ("fgd",),
    "chen_rcn": ("chen_rcn_cls", "chen_rcn_reg"),
    "chen_rpn": ("chen_rpn_cls", "chen_rpn_reg"),
    "cwd": ("cwd",),
    "pkd": ("pkd",),
    "mgd": ("mgd",),
}


def parse_recipe(recipe: str) -> tuple[str, ...]:
    """'fgd,chen2017' -> ordered unique term names; 'none' -> (). Recipes that share a term (imitation,chen2017)
    run it once; one recipe named twice is refused."""
    terms: list[str] = []
    names = [part.strip() for part in recipe.split(",") if part.strip()]
    for i, name in enumerate(names):
        if name not in RECIPES:
            raise UsageError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)} (comma-combinable)")
        if name in names[:i]:
            raise UsageError(f"--recipe {recipe}: {name} is named twice; name each recipe once")
        for term in RECIPES[name]:
            if term not in terms:
                terms.append(term)
    return tuple(terms)


AUTO = "auto"  # a weight calibrated from gradient magnitudes (kdtrain/distill/auto_weights.py)
AUTO_RATIO = 0.5  # its default target: weighted term gradient / detection loss gradient
AUTO_ITERS = 10   # its default number of calibration iterations


def parse_weight_spec(text: str | dict | None) -> tuple[dict, tuple[str, ...]]:
    """'fgd=2,chen_rcn=auto', 'auto' or a dict -> ({loss key: weight}, loss keys set to auto).

    Weights start from the defaults; a term name (chen_rcn) sets all of its loss keys; a bare
    ``auto`` makes every key automatic. An automatic key keeps its default weight in the dict
    (the fallback when calibration cannot measure it).
    """
    weights, auto = dict(DEFAULT_WEIGHTS), []
    if not text:
        return weights, ()
    if isinstance(text, str) and text.strip() == AUTO:
        return weights, tuple(DEFAULT_WEIGHTS)
    items = text.items() if isinstance(text, dict) else (p.split("=", 1) for p in text.split(",") if p.strip())
    for item in items:
        if len(item) != 2:
            raise UsageError(f"--distill-weights: bad item {item[0]!r}: expected NAME=VALUE, NAME=auto or auto")
        key, value = item[0].strip(), str(item[1]).strip()
        keys = TERM_KEYS.get(key, (key,) if key in DEFAULT_WEIGHTS else None)
        if keys is None:
            raise UsageError(f"--distill-weights: unknown distillation weight {key!r}; known: "
                             f"{', '.join(sorted(set(TERM_KEYS) | set(DEFAULT_WEIGHTS)))}")
        for k in keys:
            if value == AUTO:
                auto.append(k)
                continue
            try:
                weights[k] = float(value)
            except ValueError:
                raise UsageError(f"--distill-weights: {key}={value!r}: expected a number or {AUTO}") from None
            if not (math.isfinite(weights[k]) and weights[k] >= 0):
                raise UsageError(f"--distill-weights: {key}={value}: a weight must be a finite number >= 0 "
                                 "(0 turns the term off)")
            if k in auto:
                auto.remove(k)
    return weights, tuple(dict.fromkeys(auto))


def named_weight_keys(text: str | dict | None) -> dict:
    """{name as given: its loss keys} of the weights ``text`` names (a bare ``auto`` names none)."""
    if not text or (isinstance(text, str) and text.strip() == AUTO):
        return {}
    items = text.items() if isinstance(text, dict) else (p.split("=", 1) for p in text.split(",") if p.strip())
    names = [str(item[0]).strip() for item in items]
    return {name: TERM_KEYS.get(name, (name,)) for name in names}


def check_weights_fit(recipe: str, text: str | dict | None) -> None:
    """UsageError for a bad weight spec, or a weight named for a term the recipe does not run."""
    parse_weight_spec(text)
    terms = parse_recipe(recipe)
    keys = {k for term in terms for k in TERM_KEYS[term]}
    for name, its_keys in named_weight_keys(text).items():
        if not set(its_keys) & keys:
            runs = ", ".join(sorted(keys)) if keys else "no distillation term"
            raise UsageError(f"--distill-weights {name}: recipe {recipe!r} has no such term (it runs {runs}); "
                             "drop the weight or add its recipe")


def parse_weights(text: str | dict | None) -> dict:
    """{loss key: weight} of parse_weight_spec; automatic keys hold their default weight."""
    return parse_weight_spec(text)[0]


def warmup_factor(iteration: int, warmup_iters: int) -> float:
    """Linear warm-up of every distillation weight from 0 to 1 over warmup_iters."""
    if warmup_iters <= 0:
        return 1.0
    return min(1.0, (iteration + 1) / warmup_iters)
