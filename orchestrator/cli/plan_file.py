"""Reading a rollout plan from its TOML file, and the files it names beside it."""

from __future__ import annotations

import tomllib
from pathlib import Path

from messages.plan import PlanUnreadable, RolloutPlan, parse_plan, plan_json


def load_plan(path: Path) -> RolloutPlan:
    """Read, complete and check the TOML plan at ``path``; the pin and key files it names are
    read relative to its folder. Every defect is a :class:`messages.plan.PlanError`."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanUnreadable(f"cannot read the plan: {exc}", path=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise PlanUnreadable(f"the plan is not TOML: {exc}", path=str(path)) from None
    return parse_plan(plan_json(raw, lambda name: (path.parent / name).read_bytes()))
