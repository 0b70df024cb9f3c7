"""Rollout plans: what an operator asks for when rolling out a fleet.

A plan is written in TOML (``hsmfleet rollout plan FILE`` checks one, ``rollout start FILE``
sends it)::

    fleet = "fleet-2026"

    [members]                # by id ...
    ids = ["node-a", "node-b", "node-c"]
    # ... or by label and failure domain, picked from the nodes that announced themselves
    # count = 5
    # domains = ["dc1", "dc2", "dc3"]  # eligible failure domains (default: any)
    # hsm = "soft"                     # label: the HSM kind the node announced (default: any)
    min_per_domain = 1

    [quorum]
    threshold = 2            # default: a majority of the members
    survive_domain_loss = false

    [keys]                   # role = algorithm, made inside one member's HSM
    vault = "ed25519"

    [validity]
    days = 365
    # not_before = "2026-01-01T00:00:00.000Z"   # default: when the rollout starts

    [vault]                  # optional: the fleet guards a vault (its keys join [keys])
    limit = 10               # wrong PIN guesses allowed since the PIN was last proven
    authority_key = "<base64 Ed25519 key>"   # the account authority, or authority_key_file
    replace_interval_s = 86400   # least time between replacements without the PIN
    login_ttl_s = 120            # how long a started login may be finished

    [cosigners]
    threshold = 2            # k of the n pinned cosigners must vouch
    [[cosigners.pin]]
    id = "cosigner-a"        # its NATS subject token
    pin_file = "cosigner-a.pin.json"   # what `hsmfleet cosigner pin` prints, or inline:
    # name = "cosigner-a.example/log"
    # public_key = "<base64 Ed25519 key>"

    [rollout]
    wave_size = 1            # members changed at once; at most what the quorum can lose
    approve_publish = true   # a manual gate before publish
    on_member_loss = "pause" # or "continue" while the quorum survives
    member_deadline_s = 60   # time a member has for each step (stopped while paused)

:func:`plan_json` turns the parsed file into the plan's canonical JSON (defaults filled in, the
files it names read; ``orchestrator.cli.plan_file`` reads a plan file) and :func:`parse_plan` turns
that JSON into a :class:`RolloutPlan`; both refuse unknown settings, so a typo is an error.
:func:`check_plan` holds the rules every plan must meet; each broken rule is its own typed
error. What depends on the fleet's current state (which nodes exist) is
checked when the rollout starts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from messages.artifact import MAX_MEMBERS
from messages.ceremony import KeyRole
from messages.documents import (
    DocumentError,
    is_name,
    is_role,
    load_json,
    time_ms,
)
from messages.errors import HsmfleetError, MessageError
from messages.origin import is_origin
from messages.schema import Body
from messages.signing import ALGORITHMS, ECDSA_P256, ED25519, key_id
from messages.vault_policy import VAULT_KEYS, VaultPolicy, VaultPolicyError

FLEET_KEY_ALGORITHMS = (ED25519, ECDSA_P256)
"""The algorithms of a fleet's signing keys; a vault's keys
(:data:`messages.vault_policy.VAULT_KEYS`) come with its ``[vault]`` section."""
MAX_KEYS = 16
MAX_DAYS = 3650
MAX_DEADLINE_S = 86_400
ON_MEMBER_LOSS = ("pause", "continue")


# --- errors: one kind per broken rule --------------------------------------------------------


class PlanError(HsmfleetError):
    """The rollout plan is refused."""

    kind = "plan"


class PlanUnreadable(PlanError):
    """The plan file cannot be read, or is not TOML (JSON over the API)."""

    kind = "plan_unreadable"


class PlanUnknownSetting(PlanError):
    """The plan holds a setting this build does not know (a typo is an error, not ignored)."""

    kind = "plan_unknown_setting"


class PlanMissingSetting(PlanError):
    """A required setting is missing."""

    kind = "plan_missing_setting"


class PlanBadValue(PlanError):
    """A setting has the wrong type."""

    kind = "plan_bad_value"


class BadFleetId(PlanError):
    """The fleet id cannot name the fleet's subjects and documents."""

    kind = "plan_fleet"


class BadMembers(PlanError):
    """The member selection is empty, too large, names a node twice, or mixes ids and count."""

    kind = "plan_members"


class BadDomainSpread(PlanError):
    """The minimum per failure domain cannot be met by the members asked for."""

    kind = "plan_domain_spread"


class BadQuorum(PlanError):
    """The threshold is not a majority of the members."""

    kind = "plan_quorum"


class WaveTooLarge(PlanError):
    """A wave would take out more members than the quorum can lose (or is empty)."""

    kind = "plan_wave"


class BadKeyRoles(PlanError):
    """No fleet key, a bad role name, or an algorithm fleet keys cannot use."""

    kind = "plan_keys"


class BadVault(PlanError):
    """The vault section is incomplete or out of range, or vault keys come without it."""

    kind = "plan_vault"


class BadValidity(PlanError):
    """The validity window is empty, too long, or its start is not an RFC 3339 time."""

    kind = "plan_validity"


class BadCosignerPolicy(PlanError):
    """No cosigner, a bad or repeated pin, or a threshold outside 1..n."""

    kind = "plan_cosigners"


class BadGate(PlanError):
    """The member-loss policy or the member deadline is not usable."""

    kind = "plan_gate"


# --- the plan --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemberSelection(Body):
    """Members by id, or ``count`` of the nodes matching the label and failure domains."""

    ids: tuple[str, ...]
    count: int
    domains: tuple[str, ...]
    hsm: str | None
    min_per_domain: int


@dataclass(frozen=True)
class QuorumPlan(Body):
    """The commit threshold (``None``: a majority) and whether losing one whole failure domain
    must leave a quorum."""

    threshold: int | None
    survive_domain_loss: bool


@dataclass(frozen=True)
class Validity(Body):
    """The fleet's validity window: ``days`` from ``not_before`` (``None``: the start)."""

    days: int
    not_before: str | None


@dataclass(frozen=True)
class PlanCosigner(Body):
    """A pinned cosigner: its NATS id, log origin, Ed25519 key and (optional) HTTP base URL."""

    id: str
    name: str
    public_key: bytes
    url: str | None


@dataclass(frozen=True)
class CosignerPolicy(Body):
    """Which cosigners log the fleet's bundles and how many of them must vouch."""

    threshold: int
    pins: tuple[PlanCosigner, ...]


@dataclass(frozen=True)
class Pacing(Body):
    """How the rollout proceeds: wave size, the publish gate, member loss and deadlines."""

    wave_size: int
    approve_publish: bool
    on_member_loss: str
    member_deadline_s: int


@dataclass(frozen=True)
class RolloutPlan(Body):
    """A validated rollout plan, as recorded in the log."""

    fleet: str
    members: MemberSelection
    quorum: QuorumPlan
    keys: tuple[KeyRole, ...]
    validity: Validity
    cosigners: CosignerPolicy
    rollout: Pacing
    vault: VaultPolicy | None = None

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        if self.vault is None:
            del out["vault"]  # a plan without a vault reads as plans did before vaults
        return out

    @property
    def size(self) -> int:
        return self.members.count

    @property
    def threshold(self) -> int:
        """The commit threshold: the plan's, or a majority of the planned members."""
        given = self.quorum.threshold
        return given if given is not None else self.size // 2 + 1

    @property
    def tolerance(self) -> int:
        """How many members the quorum can lose."""
        return self.size - self.threshold


# --- reading ---------------------------------------------------------------------------------

# Each section's settings: name -> (types, required, default). Defaults fill in what a TOML
# file leaves out; the plan's JSON always carries every setting.
_Spec = dict[str, tuple[tuple[type, ...], bool, Any]]
_TOP: _Spec = {
    "fleet": ((str,), True, None),
    "members": ((dict,), True, None),
    "quorum": ((dict,), False, {}),
    "keys": ((dict, list), True, None),
    "validity": ((dict,), False, {}),
    "cosigners": ((dict,), True, None),
    "rollout": ((dict,), False, {}),
    "vault": ((dict, type(None)), False, None),
}
_VAULT: _Spec = {
    "limit": ((int,), False, 10),
    "authority_alg": ((str,), False, ED25519),
    "authority_key": ((str,), False, None),
    "authority_key_file": ((str,), False, None),
    "replace_interval_s": ((int,), False, 86_400),
    "login_ttl_s": ((int,), False, 120),
}
_MEMBERS: _Spec = {
    "ids": ((list,), False, []),
    "count": ((int,), False, None),
    "domains": ((list,), False, []),
    "hsm": ((str, type(None)), False, None),
    "min_per_domain": ((int,), False, 0),
}
_QUORUM: _Spec = {
    "threshold": ((int, type(None)), False, None),
    "survive_domain_loss": ((bool,), False, False),
}
_VALIDITY: _Spec = {
    "days": ((int,), False, 365),
    "not_before": ((str, type(None)), False, None),
}
_COSIGNERS: _Spec = {
    "threshold": ((int,), True, None),
    "pin": ((list,), False, None),
    "pins": ((list,), False, None),
}
_PIN: _Spec = {
    "id": ((str,), True, None),
    "name": ((str,), False, None),
    "public_key": ((str,), False, None),
    "url": ((str, type(None)), False, None),
    "pin_file": ((str,), False, None),
}
_ROLLOUT: _Spec = {
    "wave_size": ((int,), False, 1),
    "approve_publish": ((bool,), False, True),
    "on_member_loss": ((str,), False, "pause"),
    "member_deadline_s": ((int,), False, 60),
}


def _section(raw: Any, spec: _Spec, where: str) -> dict[str, Any]:
    """``raw`` checked against ``spec`` with defaults filled in."""
    if not isinstance(raw, dict):
        raise PlanBadValue(f"{where} must be a table")
    unknown = sorted(set(raw) - set(spec))
    if unknown:
        raise PlanUnknownSetting(f"unknown settings in {where}", unknown=unknown)
    out: dict[str, Any] = {}
    for name, (types, required, default) in spec.items():
        if name not in raw:
            if required:
                raise PlanMissingSetting(f"{where}.{name} is required")
            out[name] = default
            continue
        value = raw[name]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise PlanBadValue(f"{where}.{name} has the wrong type", value=value)
        out[name] = value
    return out


def _strings(values: list[Any], where: str) -> tuple[str, ...]:
    if not all(isinstance(v, str) for v in values):
        raise PlanBadValue(f"{where} must be a list of strings")
    return tuple(values)


ReadFile = Callable[[str], bytes]
"""Reads a file a plan names (relative to the plan's own file); raises ``OSError``."""


def _pin(raw: Any, read: ReadFile | None, where: str) -> dict[str, Any]:
    """One cosigner entry as plan JSON; a ``pin_file`` (read with ``read``) gives the name,
    key and URL that ``hsmfleet cosigner pin`` printed."""
    entry = _section(raw, _PIN, where)
    pin_file = entry.pop("pin_file")
    if pin_file is not None:
        if read is None:
            raise PlanBadValue(f"{where}.pin_file is only allowed in a plan file")
        if entry["name"] is not None or entry["public_key"] is not None:
            raise BadCosignerPolicy(f"{where} gives both pin_file and an inline pin")
        try:
            pinned = load_json(read(pin_file))
        except (OSError, DocumentError) as exc:
            raise PlanUnreadable(f"cannot read {where}.pin_file: {exc}") from None
        if not isinstance(pinned, dict):
            raise BadCosignerPolicy(f"{where}.pin_file is not a cosigner pin")
        entry |= {k: pinned.get(k) for k in ("name", "public_key")}
        entry["url"] = entry["url"] or pinned.get("url")
    for name in ("name", "public_key"):
        if not isinstance(entry[name], str):
            raise PlanMissingSetting(f"{where}.{name} is required (or a pin_file)")
    return entry


def plan_json(raw: dict[str, Any], read: ReadFile | None = None) -> dict[str, Any]:
    """The canonical JSON of a plan written as TOML (or JSON): every setting, defaults filled
    in, the files it names read with ``read`` (a plan sent as JSON names none). Refuses unknown,
    missing and mistyped settings."""
    top = _section(raw, _TOP, "plan")
    members = _section(top["members"], _MEMBERS, "members")
    ids = _strings(members["ids"], "members.ids")
    if ids and members["count"] is not None and members["count"] != len(ids):
        raise BadMembers("give members.ids or members.count, not both", count=members["count"])
    if not ids and members["count"] is None:
        raise PlanMissingSetting("members needs ids or count")
    keys = top["keys"]
    if isinstance(keys, dict):
        if not all(isinstance(alg, str) for alg in keys.values()):
            raise PlanBadValue("keys maps each role to an algorithm name")
        roles = [{"role": role, "alg": alg} for role, alg in keys.items()]
    else:
        roles = keys  # JSON form: a list of {role, alg}
    cosigners = _section(top["cosigners"], _COSIGNERS, "cosigners")
    entries = cosigners["pin"] if cosigners["pin"] is not None else cosigners["pins"] or []
    vault = None if top["vault"] is None else _vault(top["vault"], read)
    if vault is not None:
        listed = {r.get("role") for r in roles if isinstance(r, dict)}
        roles = [*roles, *({"role": r, "alg": a} for r, a in VAULT_KEYS.items() if r not in listed)]
    normal = {
        "fleet": top["fleet"],
        "members": {
            "ids": list(ids),
            "count": len(ids) if ids else members["count"],
            "domains": list(_strings(members["domains"], "members.domains")),
            "hsm": members["hsm"],
            "min_per_domain": members["min_per_domain"],
        },
        "quorum": _section(top["quorum"], _QUORUM, "quorum"),
        "keys": roles,
        "validity": _section(top["validity"], _VALIDITY, "validity"),
        "cosigners": {
            "threshold": cosigners["threshold"],
            "pins": [_pin(p, read, f"cosigners.pin[{i}]") for i, p in enumerate(entries)],
        },
        "rollout": _section(top["rollout"], _ROLLOUT, "rollout"),
    }
    if vault is not None:
        normal["vault"] = vault
    return normal


def _vault(raw: Any, read: ReadFile | None) -> dict[str, Any]:
    """The vault section as plan JSON; an ``authority_key_file`` (read with ``read``) holds
    the account authority's public key in base64."""
    section = _section(raw, _VAULT, "vault")
    key_file = section.pop("authority_key_file")
    if key_file is not None:
        if read is None:
            raise PlanBadValue("vault.authority_key_file is only allowed in a plan file")
        if section["authority_key"] is not None:
            raise BadVault("give vault.authority_key or vault.authority_key_file, not both")
        try:
            section["authority_key"] = read(key_file).decode().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise PlanUnreadable(f"cannot read vault.authority_key_file: {exc}") from None
    if section["authority_key"] is None:
        raise PlanMissingSetting("vault.authority_key is required (or authority_key_file)")
    return section


def parse_plan(raw: Any) -> RolloutPlan:
    """A checked plan from its JSON (what the API receives); every defect is a
    :class:`PlanError`."""
    if not isinstance(raw, dict):
        raise PlanBadValue("a plan is a JSON object")
    normal = plan_json(raw)
    try:
        plan = RolloutPlan.from_json(normal, "plan")
    except VaultPolicyError as exc:
        raise BadVault(str(exc)) from None
    except MessageError as exc:
        raise PlanBadValue(f"the plan does not fit its schema: {exc}") from None
    check_plan(plan)
    return plan


# --- the rules -------------------------------------------------------------------------------


def check_plan(plan: RolloutPlan) -> None:
    """Raise the :class:`PlanError` of the first rule ``plan`` breaks."""
    if not is_name(plan.fleet):
        raise BadFleetId("fleet id must be 1-128 of A-Z a-z 0-9 _ -", fleet=plan.fleet)
    _check_members(plan.members)
    _check_quorum(plan)
    _check_keys(plan.keys, plan.vault)
    _check_vault(plan.vault)
    _check_validity(plan.validity)
    _check_cosigners(plan.cosigners)
    _check_pacing(plan)


def _check_members(m: MemberSelection) -> None:
    if not 1 <= m.count <= MAX_MEMBERS:
        raise BadMembers(f"a fleet has 1 to {MAX_MEMBERS} members", count=m.count)
    if m.ids and len(m.ids) != m.count:
        raise BadMembers("members.count must equal the number of ids", count=m.count)
    if len(set(m.ids)) != len(m.ids):
        raise BadMembers("a member is named twice", ids=sorted(m.ids))
    bad = [i for i in m.ids if not is_name(i)]
    if bad:
        raise BadMembers("member ids must be node ids", bad=bad)
    if m.hsm is not None and not is_name(m.hsm):
        raise BadMembers("the hsm label must be a name", hsm=m.hsm)
    if len(set(m.domains)) != len(m.domains) or not all(is_name(d) for d in m.domains):
        raise BadDomainSpread("failure domains must be distinct names", domains=list(m.domains))
    if m.min_per_domain < 0:
        raise BadDomainSpread("min_per_domain must not be negative")
    if m.domains and m.min_per_domain * len(m.domains) > m.count:
        raise BadDomainSpread(
            "min_per_domain in every listed domain needs more members than the plan asks for",
            count=m.count,
            domains=len(m.domains),
            min_per_domain=m.min_per_domain,
        )


def _check_quorum(plan: RolloutPlan) -> None:
    size, given = plan.size, plan.quorum.threshold
    if given is not None and not size // 2 < given <= size:
        raise BadQuorum(
            "the threshold must be a majority of the members", threshold=given, members=size
        )
    spread = plan.members.domains
    if plan.quorum.survive_domain_loss and spread:
        # The best a selection can do is spread evenly; the fullest domain is then this big.
        fullest = -(-size // len(spread))
        if len(spread) < 2 or size - fullest < plan.threshold:
            raise BadQuorum(
                "no spread of these members over these domains survives losing one domain",
                members=size,
                domains=len(spread),
                threshold=plan.threshold,
            )


def _check_keys(keys: tuple[KeyRole, ...], vault: VaultPolicy | None) -> None:
    if not 1 <= len(keys) <= MAX_KEYS:
        raise BadKeyRoles(f"a fleet has 1 to {MAX_KEYS} keys", keys=len(keys))
    roles = [k.role for k in keys]
    if len(set(roles)) != len(roles):
        raise BadKeyRoles("a key role is named twice", roles=roles)
    for key in keys:
        if not is_role(key.role):
            raise BadKeyRoles("key roles are lowercase names", role=key.role)
        if key.role in VAULT_KEYS:
            if vault is None:
                raise BadVault("vault keys need a [vault] section", role=key.role)
            if key.alg != VAULT_KEYS[key.role]:
                raise BadVault(
                    "a vault key has a fixed algorithm", role=key.role, alg=VAULT_KEYS[key.role]
                )
            continue
        if key.alg not in FLEET_KEY_ALGORITHMS:
            raise BadKeyRoles(
                "fleet keys are Ed25519 or ECDSA P-256: only signing keys move between HSMs",
                role=key.role,
                alg=key.alg,
                allowed=list(FLEET_KEY_ALGORITHMS),
            )


def _check_vault(vault: VaultPolicy | None) -> None:
    if vault is not None and vault.authority_alg not in ALGORITHMS:
        raise BadVault("the authority key is Ed25519 or ECDSA P-256", alg=vault.authority_alg)


def _check_validity(v: Validity) -> None:
    if not 1 <= v.days <= MAX_DAYS:
        raise BadValidity(f"validity.days must be 1 to {MAX_DAYS}", days=v.days)
    if v.not_before is not None:
        try:
            time_ms(v.not_before, "validity.not_before")
        except DocumentError as exc:
            raise BadValidity(str(exc)) from None


def _check_cosigners(c: CosignerPolicy) -> None:
    if not c.pins:
        raise BadCosignerPolicy("at least one cosigner must be pinned")
    for what, values in (("ids", [p.id for p in c.pins]), ("names", [p.name for p in c.pins])):
        if len(set(values)) != len(values):
            raise BadCosignerPolicy(f"cosigner {what} must be distinct", values=values)
    for pin in c.pins:
        if not is_name(pin.id):
            raise BadCosignerPolicy("a cosigner id must be a subject token", id=pin.id)
        if not is_origin(pin.name):
            raise BadCosignerPolicy("a cosigner name must be a log origin", name=pin.name)
        if len(pin.public_key) != 32:
            raise BadCosignerPolicy("a cosigner key is 32 bytes (Ed25519)", id=pin.id)
    if not 1 <= c.threshold <= len(c.pins):
        raise BadCosignerPolicy(
            "the cosigner threshold must be 1 to the number of cosigners",
            threshold=c.threshold,
            cosigners=len(c.pins),
        )


def _check_pacing(plan: RolloutPlan) -> None:
    pacing = plan.rollout
    if pacing.on_member_loss not in ON_MEMBER_LOSS:
        raise BadGate("on_member_loss is pause or continue", value=pacing.on_member_loss)
    if not 1 <= pacing.member_deadline_s <= MAX_DEADLINE_S:
        raise BadGate(f"member_deadline_s must be 1 to {MAX_DEADLINE_S}")
    if not 1 <= pacing.wave_size <= plan.tolerance:
        raise WaveTooLarge(
            "a wave must change at least one member and no more than the quorum can lose",
            wave_size=pacing.wave_size,
            can_lose=plan.tolerance,
        )


def describe(plan: RolloutPlan) -> list[str]:
    """What the rollout would do, step by step, for ``hsmfleet rollout plan``."""
    m = plan.members
    who = (
        ", ".join(m.ids)
        if m.ids
        else f"{m.count} announced node(s)"
        + (f" in {', '.join(m.domains)}" if m.domains else "")
        + (f" with hsm {m.hsm}" if m.hsm else "")
    )
    spread = f", at least {m.min_per_domain} per failure domain" if m.min_per_domain else ""
    keys = ", ".join(f"{k.role} ({k.alg})" for k in plan.keys)
    window = plan.validity.not_before or "the start of the rollout"
    cosigners = ", ".join(p.id for p in plan.cosigners.pins)
    gate = "after an operator approves" if plan.rollout.approve_publish else "without a gate"
    loss = (
        "pause for the operator"
        if plan.rollout.on_member_loss == "pause"
        else "continue while the quorum survives"
    )
    return [
        f"fleet {plan.fleet}: {m.count} member(s): {who}{spread}",
        f"quorum: {plan.threshold} of {m.count} (can lose {plan.tolerance})"
        + ("; must survive losing a failure domain" if plan.quorum.survive_domain_loss else ""),
        f"1. enroll: attest every member with a fresh nonce; if a member is lost: {loss}",
        f"2. ceremony: one member makes {keys} in its HSM and wraps them to the others, "
        f"{plan.rollout.wave_size} member(s) at a time; each returns a signed receipt",
        f"3. quorum: members form the replication group {plan.rollout.wave_size} at a time; "
        "a test write commits with a majority",
        f"4. publish ({gate}): the fleet-key artifact is cosigned by {plan.cosigners.threshold} of "
        f"{cosigners} and countersigned by the operator",
        "5. activate",
        f"each stage ends with a stage bundle cosigned by {plan.cosigners.threshold} of "
        f"{len(plan.cosigners.pins)}; valid {plan.validity.days} day(s) from {window}; "
        f"{plan.rollout.member_deadline_s}s per member step",
        *_describe_vault(plan.vault),
    ]


def _describe_vault(vault: VaultPolicy | None) -> list[str]:
    if vault is None:
        return []
    authority = key_id(vault.authority_alg, vault.authority_key)
    return [
        f"vault: {vault.limit} wrong PIN guesses per user between logins; requests authorized "
        f"by the account authority key {authority}; a record replaced without its PIN at most "
        f"every {vault.replace_interval_s}s"
    ]
