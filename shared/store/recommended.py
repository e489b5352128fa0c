"""``multipliers: "recommended"``: a job takes the whole boost setting its model's latest finished calibration
sweep recommends (shared.store.sweeps): M, layer mode, head fraction, and the sweep's scope and target mass."""

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


def resolve_recommended(session: Session, data: Any, settings: Settings) -> Any:
    """Replace ``multipliers: "recommended"`` by the latest finished sweep's recommended M for the job's model.

    Its layer mode and head fraction fill layer_modes and head_boost_percentage, and the sweep's scope and
    target mass (its job parameters) fill scope and target_mass, when the job leaves them out.
    A ValidationError (422) says so when no finished sweep for that model has a recommendation.
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
    out = dict(data)
    out["multipliers"] = [sweep.recommended_multiplier]
    if out.get("layer_modes") in (None, "", []):
        out["layer_modes"] = [sweep.recommended_layers]
    if out.get("head_boost_percentage") in (None, ""):
        out["head_boost_percentage"] = (sweep.recommended_head_fraction or 1.0) * 100.0
    params = (sweep.config or {}).get("params") or {}
    for key in ("scope", "target_mass"):  # the M was chosen with these: a job gets the setting it was chosen in
        if out.get(key) in (None, "") and params.get(key) is not None:
            out[key] = params[key]
    return out


def models_with_recommendation(session: Session, models: Sequence[str]) -> set[str]:
    """Return the models among these that have a finished sweep with a recommendation."""
    if not models:
        return set()
    rows = session.scalars(select(Sweep.model).where(Sweep.model.in_(list(models)), Sweep.status == SUCCEEDED,
                                                     Sweep.recommended_multiplier.is_not(None)).distinct())
    return set(rows)
