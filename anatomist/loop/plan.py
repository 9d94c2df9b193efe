"""The shaping plan: the config's `shape` section read against a finished audit.

Concepts are named as `anatomist dpo` names them (cluster id, label, "length", read by
`AuditFolder.resolve_concept`), plus two selectors that only make sense after an audit:
    flagged             every concept with a flagged row (direction amplify / suppress, any topic)
    flagged:DETECTOR    those of them that track a screen detector (the audit's `tracks` column:
                        AUROC of the concept's score for the responses the detector fires on)
A concept named explicitly keeps its own λ where a selector also picks it. The plan says, per
shaped concept, why it is shaped: the selector or name, its flagged rows and the detectors it tracks.
"""

from __future__ import annotations

from dataclasses import asdict

from anatomist.audit.folder import AuditFolder
from anatomist.errors import AnatomistError
from anatomist.loop.config import ShapeConfig
from anatomist.shape.recipe import Recipe
from anatomist.shape.shaping import Inoculation, TokenFilter

SELECTOR = "flagged"


def flagged_concepts(audit: AuditFolder, detector: str | None = None) -> list[int]:
    """Clusters with a flagged row, in the audit's row order (its ranking); with `detector`, only
    those that track it."""
    rows = audit.rows
    rows = rows[(rows["direction"] != "none") & (rows["cluster"] >= 0)]
    ids = list(dict.fromkeys(int(c) for c in rows["cluster"]))
    if detector is None:
        return ids
    tracks = audit.tracks
    return [k for k in ids if any(t["detector"] == detector for t in tracks.get(k, []))]


def expand(audit: AuditFolder, name: str) -> tuple[list[int | str], str]:
    """(the concepts a name stands for, how it was chosen): a selector's clusters, else [name]."""
    name = str(name)
    if name == SELECTOR or name.startswith(SELECTOR + ":"):
        detector = name.partition(":")[2] or None
        return flagged_concepts(audit, detector), name
    return [name], "named"


def _expand_lam(audit: AuditFolder, lam: dict[str, float]) -> tuple[dict, dict]:
    out, why = {}, {}
    for name, value in lam.items():                       # selectors first: explicit names override them
        if expand(audit, name)[1] != "named":
            for k in expand(audit, name)[0]:
                out[k], why[k] = value, name
    for name, value in lam.items():
        if expand(audit, name)[1] == "named":
            k = audit.resolve_concept(name)
            out[k], why[k] = value, "named"
    return out, why


def make_plan(audit_dir, shape: ShapeConfig) -> dict:
    """The resolved recipe (cluster ids) and why each concept is in it, as JSON-able data."""
    audit = AuditFolder(audit_dir)
    lam, why = _expand_lam(audit, shape.lam)
    tf = None
    if shape.token_filter is not None:
        named = [k for c in shape.token_filter.concepts for k in expand(audit, c)[0]]
        if named:
            tf = TokenFilter(clusters=tuple(audit.resolve_concept(k) for k in named), tau=shape.token_filter.tau,
                             sides=shape.token_filter.sides)
            for k in tf.clusters:
                why.setdefault(k, "token filter")
    ino = None
    if shape.inoculate is not None:
        picked = expand(audit, shape.inoculate.concept)[0]
        if picked:   # a selector inoculates its top-ranked concept
            k = audit.resolve_concept(picked[0])
            ino = Inoculation(k, text=shape.inoculate.text, min_delta=shape.inoculate.min_delta)
            why.setdefault(k, "inoculation")
    if shape.drop_extreme is not None and not (lam or tf or ino):
        raise AnatomistError("shape.drop_extreme needs a shaped concept (lam, token_filter or inoculate) to rank "
                             "pairs by")
    recipe = Recipe(lam=lam, token_filter=tf, inoculate=ino, drop_extreme=shape.drop_extreme)
    selectors = {name: [int(k) for k in expand(audit, name)[0]] for name in shape.lam
                 if expand(audit, name)[1] != "named"}
    return {"recipe": recipe_dict(recipe), "recipe_is_plain": recipe.is_plain, "selectors": selectors,
            "concepts": [concept_why(audit, k, why[k], lam.get(k)) for k in recipe.concepts],
            "asked": asdict(shape)}


def concept_why(audit: AuditFolder, k: int, how: str, lam: float | None) -> dict:
    rows = audit.rows
    flagged = rows[(rows["cluster"] == k) & (rows["direction"] != "none")]
    return {"cluster": int(k), "name": audit.name(k), "lam": lam, "how": how,
            "flagged_rows": [{"topic": str(r.topic), "mean": float(r.mean), "q": float(r.q), "direction": str(r.direction)}
                             for r in flagged.itertuples()],
            "tracks": [t for t in audit.tracks.get(int(k), [])] if k >= 0 else []}


def recipe_dict(recipe: Recipe) -> dict:
    return {"lam": {str(k): v for k, v in recipe.lam.items()},
            "token_filter": None if recipe.token_filter is None else asdict(recipe.token_filter),
            "inoculate": None if recipe.inoculate is None else asdict(recipe.inoculate),
            "drop_extreme": recipe.drop_extreme}


def recipe_of(plan: dict) -> Recipe:
    """The plan's recipe back as a `Recipe` (cluster ids)."""
    r = plan["recipe"]
    tf, ino = r["token_filter"], r["inoculate"]
    return Recipe(lam={int(k): v for k, v in r["lam"].items()},
                  token_filter=None if tf is None else TokenFilter(tuple(tf["clusters"]), tf["tau"], tf["sides"]),
                  inoculate=None if ino is None else Inoculation(**ino), drop_extreme=r["drop_extreme"])
