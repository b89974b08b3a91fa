"""Protobuf replies built from the serving core's plain results (the servicer's last step)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from gateway.proto.interest.v1 import gateway_pb2 as pb
from interest_core.consent import ConsentRule
from interest_core.live_catalogue import ItemProblem
from interest_core.profiles import AuditEntry
from interest_core.recommender import Category, Recommendation, RecommendedItem


def ingested(events: int, bad: Mapping[int, str], users: int, model_version: str) -> pb.IngestEventsResponse:
    """Per-event results in request order: accepted, or INVALID_ARGUMENT with what was wrong."""
    results = [pb.EventResult(index=i, accepted=False, error_code="INVALID_ARGUMENT", error=bad[i])
               if i in bad else pb.EventResult(index=i, accepted=True) for i in range(events)]
    return pb.IngestEventsResponse(accepted=events - len(bad), rejected=len(bad), users_updated=users,
                                   results=results, model_version=model_version)


def category(c: Category) -> pb.InterestCategory:
    return pb.InterestCategory(name=c.name, weight=c.weight)


def item(i: RecommendedItem) -> pb.RecommendedItem:
    reply = pb.RecommendedItem(item_id=i.item_id, title=i.title, score=i.score, rank=i.rank)
    if i.category is not None:
        reply.category.CopyFrom(category(i.category))
    return reply


def recommendation(target: str, answer: Recommendation, model_version: str) -> pb.RecommendResponse:
    return pb.RecommendResponse(
        target_platform=target, items=map(item, answer.items),
        source_platforms=answer.source_platforms, model_version=model_version,
        personalised=answer.personalised, explanation=answer.explanation,
        interests=map(category, answer.interests),
        withheld_sources=[pb.WithheldSource(platform=w.platform, reason=w.reason) for w in answer.withheld],
    )


def consent_rules(rules: Iterable[ConsentRule]) -> list[pb.ConsentRule]:
    return [pb.ConsentRule(source_platform=r.source, target_platform=r.target, migrate=r.allowed,
                           updated_at_ms=r.updated_ms) for r in rules]


def audit(entries: Iterable[AuditEntry]) -> pb.ListAuditResponse:
    return pb.ListAuditResponse(entries=[
        pb.AuditEntry(id=e.id, at_ms=e.at_ms, actor=e.actor, action=e.action, user_pseudonym=e.user_key,
                      platforms=e.platforms, change=e.change) for e in entries])


def catalogue_updated(item_ids: list[str], problems: Mapping[int, ItemProblem], version: int, items: int,
                      model_version: str) -> pb.UpdateCatalogueResponse:
    """Per-change results in request order (upserts, then removals): applied, or the status
    and what was wrong."""
    results = [pb.ItemResult(index=i, item_id=item_id, applied=False, error_code=problems[i].code,
                             error=problems[i].message)
               if i in problems else pb.ItemResult(index=i, item_id=item_id, applied=True)
               for i, item_id in enumerate(item_ids)]
    return pb.UpdateCatalogueResponse(applied=len(item_ids) - len(problems), rejected=len(problems),
                                      results=results, catalogue_version=version, catalogue_items=items,
                                      model_version=model_version)
