"""Migration consent per direction, owned by the data's holder, and who may change or erase what.

A consent rule (source, target, allowed) says whether the user's data held by `source` may be
migrated to `target`; either may be '*' (every platform). The most specific rule wins:
(A, B) over (A, *) over (*, B) over (*, *), so a holder's explicit "no" is never overridden by
another platform's rule nor by an operator-wide default. With no rule the answer is no.

Callers are a platform name or ANY ('*': the operator key, or a gateway without API keys).
Only the holder A (or the operator) may set rules with source A, a platform key's erasure
reaches only its own platform's rows, and only the operator reads the audit trail.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from interest_core.errors import InvalidInput, NotFound, PermissionDenied

ANY = "*"  # a wildcard platform in a rule; as a caller: the operator (gateway.auth.ANY_PLATFORM)


@dataclass(frozen=True)
class ConsentRule:
    """One stored rule of one user: may `source`'s data migrate to `target` ('*': every one)."""

    source: str
    target: str
    allowed: bool
    updated_ms: int = 0


@dataclass(frozen=True)
class ConsentScope:
    """The rules a SetConsent call writes: source '*' (operator default) or one platform, and
    its targets (('*',): every other platform)."""

    source: str
    targets: tuple[str, ...]


@dataclass(frozen=True)
class Withheld:
    """A source platform whose profile a recommendation did not use, and why."""

    platform: str
    reason: str


def winning_rule(rules: Iterable[ConsentRule], source: str, target: str) -> ConsentRule | None:
    """The most specific rule that covers source -> target, or None when none does."""
    rank = {(source, target): 0, (source, ANY): 1, (ANY, target): 2, (ANY, ANY): 3}
    covering = [r for r in rules if (r.source, r.target) in rank]
    return min(covering, key=lambda r: rank[(r.source, r.target)], default=None)


def allowed(rules: Iterable[ConsentRule], source: str, target: str) -> bool:
    """Whether the user's `source` data may migrate to `target` (off without a rule)."""
    rule = winning_rule(rules, source, target)
    return rule is not None and rule.allowed


def withheld_reason(rules: Iterable[ConsentRule], source: str, target: str) -> str:
    """Why `source` is not used for `target`: the user refused, or never consented."""
    rule = winning_rule(rules, source, target)
    why = "the user refused" if rule is not None else "never given, off by default"
    return f"no consent to share {source} data with {target}: {why}"


def consent_scope(caller: str, source: str, targets: Sequence[str], served: Iterable[str]) -> ConsentScope:
    """The rules that `caller` asks to set: source '' is the caller's own platform (for the
    operator: a default for every source); targets [] are every other platform.
    PermissionDenied when a platform key names another platform's data."""
    known = list(served)
    if any(not t for t in targets):
        raise InvalidInput("target_platforms holds an empty name; leave the list empty for every platform")
    for name in (source, *targets):
        if name and name not in known:
            raise NotFound(f"unknown platform {name!r}; known: {', '.join(known)}")
    source = source or caller
    if caller != ANY and source != caller:
        raise PermissionDenied(
            f"consent to share {source} data can be set only with the {source} platform's key or "
            f"the operator key; this key is scoped to {caller!r}")
    if source != ANY and source in targets:
        raise InvalidInput(f"target_platforms names the source {source!r}: a platform's own "
                           "data is always used for its own recommendations")
    return ConsentScope(source, tuple(sorted(set(targets))) or (ANY,))


def visible_rules(caller: str, rules: Iterable[ConsentRule]) -> list[ConsentRule]:
    """The rules a caller is shown: the operator all, a platform those naming it or '*'."""
    return [r for r in rules if caller == ANY or {r.source, r.target} & {caller, ANY}]


def shares_somewhere(caller: str, rules: Sequence[ConsentRule], served: Iterable[str]) -> bool:
    """GetProfile's `migrate_consent`: whether the caller's own data (for the operator: any
    served platform's) may migrate to at least one other served platform."""
    platforms = list(served)
    sources = platforms if caller == ANY else [caller]
    return any(allowed(rules, s, t) for s in sources for t in platforms if t != s)


def erasure_scope(caller: str, all_platforms: bool) -> str | None:
    """The platform whose rows a DeleteUser removes, or None for every platform (the
    operator's). PermissionDenied when a platform key asks for every platform."""
    if caller == ANY:
        return None
    if all_platforms:
        raise PermissionDenied("erasing a user on every platform (all_platforms) needs the operator "
                               f"key; this key may erase only {caller!r}'s data")
    return caller


def require_operator(caller: str, what: str) -> None:
    """PermissionDenied unless the caller holds the operator key."""
    if caller != ANY:
        raise PermissionDenied(f"{what} is readable with the operator key only; this key is "
                               f"scoped to {caller!r}")
