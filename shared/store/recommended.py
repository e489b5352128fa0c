"""``multipliers: "recommended"``: a job takes the whole boost setting its model's latest finished calibration
sweep recommends (shared.store.sweeps): M, layer mode, head fraction, scope, target mass and boilerplate M."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.errors import ValidationError
from shared.settings import Settings
from shared.store.sweeps import SUCCEEDED
from shared.store.tables import Sweep


def latest_recommendation(session: Session, model: str, pack: str | None = None) -> Sweep | None:
    """Return the latest finished sweep with a recommendation for this model (and pack, when given)."""
    stmt = select(Sweep).where(Sweep.model == model, Sweep.status == SUCCEEDED,
                               Sweep.recommended_multiplier.is_not(None))
    if pack is not None:
        stmt = stmt.where(Sweep.pack == pack)
    return session.scalars(stmt.order_by(Sweep.finished_at.desc(), Sweep.id.desc()).limit(1)).first()


RECOMMENDED = "recommended"


def wants_recommended(value: Any) -> bool:
    """Tell whether a job's multipliers ask for the recommended M ("recommended", or a list holding only it)."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    return isinstance(value, str) and value.strip().lower() == RECOMMENDED


def recommended_setting(sweep: Sweep) -> dict[str, Any]:
    """Return a sweep's recommended setting: M, layer mode, head fraction, scope, target mass and boilerplate M."""
    # A sweep finished before the scope and target mass were stored with it: its one scope and target mass.
    params = (sweep.config or {}).get("params") or {}
    old = sweep.recommended_scope is None
    return {"sweep_id": sweep.id, "multiplier": sweep.recommended_multiplier, "layers": sweep.recommended_layers,
            "head_fraction": sweep.recommended_head_fraction or 1.0,
            "scope": (params.get("scope") or "all") if old else sweep.recommended_scope,
            "target_mass": params.get("target_mass") if old else sweep.recommended_target_mass,
            # NULL: a sweep finished before the boilerplate M was stored with it, which never de-boosted.
            "boilerplate_multiplier": sweep.recommended_boilerplate_multiplier or 1.0}


SETTING_FIELDS = ("layer_modes", "head_boost_percentage", "scope", "target_mass", "boilerplate_multiplier")


def resolve_recommended(session: Session, data: Any, settings: Settings, whole: bool = False) -> Any:
    """Replace ``multipliers: "recommended"`` by the latest finished sweep's recommended setting for the job's model.

    The setting's M fills multipliers; its layer mode, head fraction, scope, target mass and boilerplate M fill
    layer_modes, head_boost_percentage, scope, target_mass and boilerplate_multiplier when the job leaves them out (always, with whole: the form,
    whose fields are never left out). A ValidationError (422) says so when no finished sweep for that model has
    a recommendation.
    """
    if not isinstance(data, Mapping) or not wants_recommended(data.get("multipliers")):
        return data
    model = data.get("model") or settings.model.name
    if not isinstance(model, str):
        return data  # the validator reports the model
    sweep = latest_recommendation(session, model.strip())
    if sweep is None:
        raise ValidationError(f'multipliers "recommended" needs a finished calibration sweep of model {model!r} '
                              "with a recommendation, and there is none: start one (POST /api/sweeps or the "
                              "Sweeps page) or give multipliers as numbers", field="multipliers")
    rec = recommended_setting(sweep)
    given = {"layer_modes": [rec["layers"]], "head_boost_percentage": rec["head_fraction"] * 100.0,
             "scope": rec["scope"], "target_mass": rec["target_mass"],
             "boilerplate_multiplier": rec["boilerplate_multiplier"]}
    out = dict(data)
    out["multipliers"] = [rec["multiplier"]]
    for key in SETTING_FIELDS:  # the M was chosen with these: a job gets the setting it was chosen in
        if whole or out.get(key) in (None, "", []):
            out[key] = given[key]
    return out


def models_with_recommendation(session: Session, models: Sequence[str]) -> set[str]:
    """Return the models among these that have a finished sweep with a recommendation."""
    if not models:
        return set()
    rows = session.scalars(select(Sweep.model).where(Sweep.model.in_(list(models)), Sweep.status == SUCCEEDED,
                                                     Sweep.recommended_multiplier.is_not(None)).distinct())
    return set(rows)


def recommendations(session: Session, models: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Return {model: its recommended setting} for the models among these that have one."""
    out = {}
    for model in models_with_recommendation(session, models):
        sweep = latest_recommendation(session, model)
        if sweep is not None:
            out[model] = recommended_setting(sweep)
    return out
