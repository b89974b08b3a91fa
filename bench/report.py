"""Turn the bench run into results/bench.json (the issue's schema + details), a Markdown
table and a latency-vs-throughput plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.fair_share import TARGET_RATIO as FAIR_SHARE_RATIO
from bench.startup import STARTUP_TARGET_S

RECOMMEND_TARGET_RATE = 200.0
RECOMMEND_TARGET_P99_MS = 15.0
CATALOGUE_TARGET_S = 1.0  # a catalogue change rankable (or gone) on every gateway within this of the reply
LIMIT_TARGET_FRACTION = 0.85  # the stack's throughput at saturation against the in-process limit


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return max(runs, key=lambda r: r["throughput_rps"])


def _seed_reference(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The seed's best operating point: lowest p99 among runs within 5% of its top throughput."""
    top = _best(runs)["throughput_rps"]
    return min((r for r in runs if r["throughput_rps"] >= 0.95 * top), key=lambda r: r["p99_ms"])


def _short(run: dict[str, Any]) -> dict[str, Any]:
    return {
        "throughput_rps": run["throughput_rps"],
        "p50_ms": run["p50_ms"],
        "p99_ms": run["p99_ms"],
        "concurrency": run["level"],
    }


def summarise(data: dict[str, Any]) -> dict[str, Any]:
    seed = _seed_reference(data["encode_runs"]["seed_eager"])
    stack_runs = data["encode_runs"]["stack"]
    stack = _best(stack_runs)
    within_p99 = [r for r in stack_runs if r["p99_ms"] <= seed["p99_ms"] and not r["errors"]]
    stack_at_seed_p99 = _best(within_p99) if within_p99 else None
    limit = data["limit_ort"]
    rec_runs = data["recommend_runs"]
    rec = next(r for r in rec_runs if r["mode"] == "open" and r["level"] == RECOMMEND_TARGET_RATE
               and r.get("target", "kitchen") == "kitchen")
    ingest = data["ingest_runs"][0]
    targets = {
        "encode_3x_seed_at_equal_or_better_p99": {
            "stack_rps": stack_at_seed_p99["throughput_rps"] if stack_at_seed_p99 else None,
            "seed_rps": seed["throughput_rps"],
            "seed_p99_ms": seed["p99_ms"],
            "ratio": round(stack_at_seed_p99["throughput_rps"] / seed["throughput_rps"], 2)
            if stack_at_seed_p99
            else None,
            "met": bool(
                stack_at_seed_p99 and stack_at_seed_p99["throughput_rps"] >= 3 * seed["throughput_rps"]
            ),
        },
        "stack_85pct_of_limit": _limit_target(stack, limit, data.get("encode_paired")),
        "recommend_p99_under_15ms_at_200rps": {
            "rate_rps": rec["level"],
            "achieved_rps": rec["throughput_rps"],
            "p99_ms": rec["p99_ms"],
            "errors": rec["errors"],
            "met": rec["level"] >= RECOMMEND_TARGET_RATE
            and rec["p99_ms"] < RECOMMEND_TARGET_P99_MS
            and not rec["errors"],
        },
    }
    fair = data.get("fair_share")
    if fair:
        targets["victim_p99_flooded_within_2x_of_alone"] = {
            k: fair[k] for k in ("victim_p99_alone_ms", "victim_p99_flooded_ms", "p99_ratio", "victim_errors",
                                 "flooder_refused", "met")}
    propagation = (data.get("scale_out") or {}).get("catalogue_propagation")
    if propagation:  # (the key names the target CATALOGUE_TARGET_S, one second)
        targets["catalogue_change_on_every_gateway_within_1s"] = propagation
    million = (data.get("catalogue_scale") or {}).get("catalogue_1m")
    if million:
        targets["catalogue_1m"] = catalogue_1m_target(million)
    startup = data.get("startup") or {}
    if "serving_s" in startup:
        targets["startup_serving_under_20s"] = {"serving_s": startup["serving_s"],
                                                "met": startup["serving_s"] < STARTUP_TARGET_S}
    return {
        "revision": data["revision"],
        "machine": data["machine"],
        "encode": {
            "seed_eager": _short(seed),
            "limit_ort": {
                "throughput_rps": limit["requests_per_s"],
                "p50_ms": limit["batch_p50_ms"],
                "p99_ms": limit["batch_p99_ms"],
                "texts_per_s": limit["texts_per_s"],
                "note": f"latency = one length-sorted batch of {limit['batch']} texts",
            },
            "stack": _short(stack),
        },
        "recommend": {
            "rate_rps": rec["level"],
            "achieved_rps": rec["throughput_rps"],
            "p50_ms": rec["p50_ms"],
            "p99_ms": rec["p99_ms"],
        },
        "ingest": {
            "throughput_rps": ingest["throughput_rps"],
            "p99_ms": ingest["p99_ms"],
            "cache_hit_rate": ingest["cache_hit_rate"],
        },
        "startup": startup,
        "fair_share": {k: v for k, v in fair.items() if k != "runs"} if fair else None,
        "scale_out": data.get("scale_out"),
        "catalogue_1m": million,
        "added_index_load": data.get("added_index_load"),
        "perf_analyzer": data.get("perf_analyzer", {}),
        "targets": targets,
        "details": data,
    }


CATALOGUE_1M_TARGETS = {"p99_ms": RECOMMEND_TARGET_P99_MS, "overlap_at_10": 0.98,
                        "resident_mib": 1e9 / 2**20, "serving_s": 30.0}  # 1 GB read as 10^9 bytes


def catalogue_1m_target(million: dict[str, Any]) -> dict[str, Any]:
    """Each of the million-item catalogue's targets met or not (None: not measured), for the
    migrated users and, as strictly, for the model-only users (every call through the index)."""
    t = CATALOGUE_1M_TARGETS
    only = million.get("model_only") or {}

    def fast(p99: float | None, errors: Any) -> bool:
        return p99 is not None and p99 < t["p99_ms"] and not errors

    def close(overlap: float | None) -> bool | None:
        return None if overlap is None else overlap >= t["overlap_at_10"]

    parts = {
        "p99_under_15ms_at_200rps": million["rate_rps"] >= RECOMMEND_TARGET_RATE
        and fast(million["p99_ms"], million.get("errors")) and fast(only.get("p99_ms"), only.get("errors")),
        "overlap_at_10_at_least_0.98": close(min(million["overlap_at_10"], only.get("overlap_at_10", 1.0))),
        "index_and_vectors_at_most_1GB": million["resident_mib"] <= t["resident_mib"],
        "serving_within_30s": million["serving_s"] <= t["serving_s"],
    }
    return {**parts, "met": all(v is True for v in parts.values())}


def _catalogue_1m_row(million: dict[str, Any] | None, target: dict[str, Any] | None) -> list[str]:
    if not million or not target:
        return []
    only = million.get("model_only") or {}
    return [f"| catalogue of 10^6 items: p99 < 15 ms at 200 req/s, overlap@10 ≥ 0.98 with exact ranking, "
            f"index + vectors ≤ 1 GB, SERVING ≤ 30 s | migrated users: p99 {million['p99_ms']} ms, "
            f"overlap@10 {million['overlap_at_10']}; model-only users (every call through the index): "
            f"p99 {only.get('p99_ms')} ms, overlap@10 {only.get('overlap_at_10')}; "
            f"{million['resident_mib']} MiB; SERVING {million['serving_s']} s | {target['met']} |"]


def _catalogue_scale(section: dict[str, Any] | None) -> list[str]:
    """The catalogue-scale section (bench.catalogue_scale): each size's figures and the rank cost."""
    if not section:
        return []
    if "error" in section:
        return ["## Catalogue scale", "", f"not run: {section['error']}", ""]
    lines = [
        "## Catalogue scale (Recommend kitchen, k = 10, 200 req/s open loop)",
        "",
        "Kitchen catalogues grown from the real one (real items, then noisy variants: "
        f"bench/catalogue_scale.py); users {section['queries']}: migrated (food and kitchen history, "
        "consent: the blend applies) and model_only (kitchen history only: the model term alone); "
        f"settings {section['settings']}.",
        "",
        "| items | ranked | users | p99 ms at 200/s | achieved req/s | gateway cores | rank paths | "
        "overlap@10 vs exact | SERVING s | index + vectors MiB | gateway RSS MiB |",
        "| --: | --- | --- | --: | --: | --: | --- | --: | --: | --: | --: |",
    ]

    def rows(n: int, path: str, run: dict[str, Any], overlaps: dict[str, float] | None) -> list[str]:
        out = []
        for group, paths in run["rank_paths"].items():
            load = run["load"].get(group) or {}
            cores = (load.get("processes") or {}).get("gateway", {}).get("cpu_cores", "")
            counted = ", ".join(f"{p} {v:.0f}" for p, v in sorted(paths.items()) if v)
            truth = "(the truth)" if path.startswith("exact (") else ""
            overlap = overlaps.get(group, "") if overlaps else truth
            out.append(f"| {n:,} | {path} | {group} | {load.get('p99_ms', 'not run')} | "
                       f"{load.get('throughput_rps', '')} | {cores} | {counted} | {overlap} | "
                       f"{run['serving_s']} | {run['index_and_vectors_mib']} | "
                       f"{run['resident_mib']['total']} |")
        return out

    for r in section["sizes"]:
        lines += rows(r["items"], r["path"], r, r.get("overlap_at_10"))
        if "exact" in r:
            lines += rows(r["items"], "exact (forced)", r["exact"], None)
    updates = [f"{r['items']:,} items: {r['update']['add_s']} s to add 10, {r['update']['remove_s']} s to "
               "remove them" for r in section["sizes"] if r.get("update")]
    lines += ["", "UpdateCatalogue (rankable, or gone, when it answers): " + "; ".join(updates) + "."]
    if section["rank_cost"]:
        lines += ["", "Rank cost per query in-process, one at a time (exact scan vs index search + "
                  "re-scoring):", "", "| items | exact ms | index ms | index build s |",
                  "| --: | --: | --: | --: |"]
        lines += [f"| {c['items']:,} | {c['exact_ms']} | {c['ann_ms']} | {c['index_build_s']} |"
                  for c in section["rank_cost"]]
    if section.get("added_items_cost"):
        lines += ["", "Items added since the index's build (as UpdateCatalogue adds them), in-process at "
                  "the largest indexed size: Recommender.ann_top_k for a model-only query, one at a time, "
                  "with the added items scored exactly beside the index, then (from ann_added_index_min "
                  "on) in the index the gateway builds of them, its top 10 against their exact scoring:", "",
                  "| items added | call p50 ms | call p99 ms | its search p50 ms |"
                  " indexed by the gateway: build s | call p50 ms | call p99 ms | overlap@10 |",
                  "| --: | --: | --: | --: | --: | --: | --: | --: |"]
        lines += [f"| {c['added']:,} | {c['call_p50_ms']} | {c['call_p99_ms']} | {c['search_p50_ms']} | "
                  + " | ".join(str(c.get(key, "")) for key in (
                      "added_index_build_s", "indexed_call_p50_ms", "indexed_call_p99_ms",
                      "indexed_overlap_at_10")) + " |"
                  for c in section["added_items_cost"]]
    lines += ["", "![catalogue scale](catalogue_scale.png)", ""]
    return lines


def plot_catalogue_scale(section: dict[str, Any], path: Path, title: str) -> None:
    """Recommend's p99 at 200/s, the resident index + vectors, and the rank cost against N."""
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.5))
    for path_name, style in (("ann", "-"), ("exact", "--")):
        found = [(r["items"], r if r["path"] == path_name else r.get("exact") if path_name == "exact"
                  else None) for r in section["sizes"]]
        runs = [(n, run) for n, run in found if run is not None]
        if not runs:
            continue
        for group, marker in (("migrated", "s"), ("model_only", "o")):
            points = [(n, run["load"][group]["p99_ms"]) for n, run in runs if group in run["load"]]
            if points:
                ax1.plot(*zip(*points), marker + style, label=f"{path_name}, {group}")
        ax2.plot([n for n, _ in runs], [run["index_and_vectors_mib"] for _, run in runs], "s" + style,
                 label=path_name)
    ax1.axhline(RECOMMEND_TARGET_P99_MS, color="red", ls=":", label="p99 target 15 ms")
    ax1.set(xscale="log", yscale="log", xlabel="catalogue items", ylabel="ms",
            title="Recommend p99 at 200 req/s")
    ax2.axhline(1e9 / 2**20, color="red", ls=":", label="1 GB")
    ax2.set(xscale="log", yscale="log", xlabel="catalogue items", ylabel="MiB",
            title="resident: index + vectors")
    cost = section["rank_cost"]
    if cost:
        ax3.plot([c["items"] for c in cost], [c["exact_ms"] for c in cost], "o--", label="exact scan")
        ax3.plot([c["items"] for c in cost], [c["ann_ms"] for c in cost], "s-", label="index + re-scoring")
    ax3.set(xscale="log", xlabel="catalogue items", ylabel="ms per query",
            title="rank cost, one query at a time")
    for ax in (ax1, ax2, ax3):
        if ax.get_legend_handles_labels()[0]:  # (no rank cost measured: nothing to name)
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _limit_target(stack: dict[str, Any], limit: dict[str, Any], paired: dict[str, Any] | None
                  ) -> dict[str, Any]:
    """The stack's share of the limit. Unpaired: the stack's best run of the sweep against the
    better of the limit's measurements before and after it. Paired (when measured): the median
    over rounds of a stack run against the mean of the limit measured just before and just
    after it; the verdict uses the paired figure, as the VM's speed drifts within a run."""
    unpaired = stack["throughput_rps"] / limit["requests_per_s"]
    out: dict[str, Any] = {
        "stack_rps": stack["throughput_rps"],
        "limit_rps": limit["requests_per_s"],
        "fraction": round(unpaired, 3),
    }
    decisive = unpaired
    if paired and paired.get("rounds"):
        out["paired_fractions"] = [r["fraction"] for r in paired["rounds"]]
        out["paired_median_fraction"] = decisive = paired["median_fraction"]
    out["met"] = decisive >= LIMIT_TARGET_FRACTION
    return out


def _limit_runs(runs: list[dict[str, Any]]) -> str:
    """How the limit moved between its measurement before the stack's runs and after them."""
    if len(runs) < 2:
        return ""
    parts = ", ".join(f"{r['texts_per_s']} {r['when']}" for r in runs)
    return f" (the better of two measurements alone on the machine, texts/s: {parts})"


def _table(runs: list[dict[str, Any]], procs: tuple[str, ...], target: bool = False) -> list[str]:
    head = (
        ("| target " if target else "")
        + "| mode | level | req/s | p50 ms | p95 ms | p99 ms | errors | "
        + " | ".join(f"{p} CPU cores / peak MiB" for p in procs)
        + " |"
    )
    lines = [head, "|" + " --- |" * (7 + len(procs) + target)]
    for r in runs:
        cells = [
            f"{r['processes'].get(p, {}).get('cpu_cores', 0):.2f} / "
            f"{r['processes'].get(p, {}).get('peak_rss_mb', 0):.0f}"
            for p in procs
        ]
        lines.append(
            (f"| {r.get('target', 'kitchen')} " if target else "")
            + f"| {r['mode']} | {r['level']:g} | {r['throughput_rps']} | {r['p50_ms']} | {r['p95_ms']} | "
            f"{r['p99_ms']} | {r['errors'] or ''} | " + " | ".join(cells) + " |"
        )
    return lines


def _mixed(runs: list[dict[str, Any]] | None) -> list[str]:
    """Recommend and IngestEvents run at once (absent in reports from before this run existed)."""
    if not runs:
        return []
    return [
        "## Recommend while IngestEvents runs (both open loop, at once)",
        "",
        "Every IngestEvents commits its profiles durably (an fsync) before it answers; the "
        "Recommends ask for other users (stored beforehand). The CPU columns are the same window "
        "for both rows.",
        "",
        *_table(runs, ("gateway", "triton", "load_generator"), target=True),
        "",
    ]


def _limit_cell(lim: dict[str, Any]) -> str:
    unpaired = (f"{lim['fraction']:.0%} ({lim['stack_rps']} vs {lim['limit_rps']} req/s, best "
                f"stack run vs best limit measurement)")
    if "paired_median_fraction" not in lim:
        return unpaired
    rounds = ", ".join(f"{f:.0%}" for f in lim["paired_fractions"])
    return (f"paired: median {lim['paired_median_fraction']:.0%} (rounds {rounds}; each stack run "
            f"against the mean of the limit just before and after it); unpaired: {unpaired}")


def _paired_table(paired: dict[str, Any] | None) -> list[str]:
    if not paired or not paired.get("rounds"):
        return []
    lines = [
        f"(b) vs (c) paired: the limit (one pass) and the stack at closed-loop concurrency "
        f"{paired['concurrency']}, measured alternately, so that each stack run is compared with "
        "the limit measured just before and just after it:",
        "",
        "| round | limit before req/s | stack req/s | stack p99 ms | limit after req/s "
        "| stack / mean limit |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for n, r in enumerate(paired["rounds"], 1):
        lines.append(f"| {n} | {r['limit_before_rps']} | {r['stack_rps']} | {r['stack_p99_ms']} | "
                     f"{r['limit_after_rps']} | {r['fraction']:.0%} |")
    lines += [f"| median | | | | | {paired['median_fraction']:.0%} |", ""]
    return lines


def _startup_row(target: dict[str, Any] | None) -> list[str]:
    """The Targets row of the stack's start-up (none when it was not measured)."""
    if target is None:
        return []
    return [f"| start-up: `make serve` (Triton + gateway) to gRPC SERVING < {STARTUP_TARGET_S:g} s | "
            f"{target['serving_s']:.2f} s | {target['met']} |"]


def _propagation_row(target: dict[str, Any] | None) -> list[str]:
    """The Targets row of catalogue changes across two gateways (none when not measured)."""
    if not target:
        return []
    head = f"| catalogue change served by every gateway within {CATALOGUE_TARGET_S:g} s of the reply | "
    if "error" in target:
        return [f"{head}not measured: {target['error']} | |"]
    added, removed = target["added_on_the_other"], target["removed_on_the_other"]

    def lags(x: dict[str, Any]) -> str:
        never = f", {x['never_seen']} never" if x["never_seen"] else ""
        return f"p50 {x['p50_s']} s, max {x['max_s']} s{never}"
    return [f"{head}{target['changes']} items added through one of two gateways (PostgreSQL), seen "
            f"by the other: {lags(added)}; removed through the other, gone from the first: "
            f"{lags(removed)}; stale on the gateway that took the change: {target['stale_on_own_gateway']} "
            f"(catalogue_poll_s {target['poll_s']:g}) | {target['met']} |"]


def _fair_share_row(fair: dict[str, Any] | None) -> list[str]:
    """The Targets row of the fair-share run (none in reports from before it existed)."""
    if not fair:
        return []
    return [f"| fair share: victim p99 flooded within {FAIR_SHARE_RATIO:g}× of alone, no victim errors | "
            f"kitchen Recommend at {fair['victim_rate_rps']:g}/s: p99 {fair['victim_p99_alone_ms']} ms "
            f"alone, {fair['victim_p99_flooded_ms']} ms flooded ({fair['p99_ratio']}×), "
            f"{fair['victim_errors']} errors; food refused {fair['flooder_refused']} | {fair['met']} |"]


def _fair_share(fair: dict[str, Any] | None) -> list[str]:
    """The fair-share section: the victim alone and flooded, and what the flooder got."""
    if not fair:
        return []
    runs, rpc = fair["runs"], fair.get("flood_rpc", "Recommend")
    return [
        "## Fair share: one platform floods, another is served",
        "",
        f"kitchen asks Recommend (its own stored profiles, k=10) open loop at "
        f"{fair['victim_rate_rps']:g}/s, alone and then while food floods {rpc} closed loop "
        f"at concurrency {fair['flood_concurrency']} with no backoff, from another process, far "
        f"past its share `platforms.food.max_in_flight` = {fair['food_max_in_flight']} (kitchen's "
        f"share {fair['kitchen_max_in_flight']}, the gateway's `max_in_flight` {fair['max_in_flight']}).",
        "",
        "| run | req/s | p50 ms | p99 ms | errors | CPU cores: gateway / triton / flooder |",
        "| --- | --- | --- | --- | --- | --- |",
        *(f"| kitchen {name} | {r['throughput_rps']} | {r['p50_ms']} | {r['p99_ms']} | "
          f"{r['errors'] or ''} | " + " / ".join(f"{r['processes'].get(p, {}).get('cpu_cores', 0):.2f}"
                                                 for p in ("gateway", "triton", "flooder"))
          + " |" for name, r in (("alone", runs["alone"]), ("flooded", runs["flooded"]))),
        f"| food flooding ({rpc}) | {runs['flooder']['throughput_rps']} OK | {runs['flooder']['p50_ms']} | "
        f"{runs['flooder']['p99_ms']} | {runs['flooder']['errors']} | |",
        "",
    ]


def _added_index_load(section: dict[str, Any] | None) -> list[str]:
    """The section of bench.added_index_load: Recommend at 10^6 items while a gateway builds its
    index of the items added since `make engine`, and after."""
    if not section:
        return []
    if "error" in section:
        return ["## Recommend while a gateway indexes the items added since `make engine`", "",
                f"not run: {section['error']}", ""]
    build, during, after = section.get("build") or {}, section["during_build"], section["after_build"]
    by_second = [(s, p) for s, p in enumerate(section["p99_ms_by_second"]) if p is not None]
    worst = max(by_second, key=lambda sp: sp[1]) if by_second else None

    def cells(w: dict[str, Any]) -> str:
        errors = ", ".join(f"{n} {code}" for code, n in sorted(w.get("errors", {}).items())) or "none"
        return f"{w['calls']} | {w.get('p50_ms', '')} | {w.get('p99_ms', '')} | {errors}"

    return [
        "## Recommend while a gateway indexes the items added since `make engine`",
        "",
        f"The {section['catalogue_items']:,}-item kitchen catalogue; {section['added']:,} items added "
        f"through UpdateCatalogue ({section['texts_per_s']} texts/s through Triton), the last "
        f"{section['index_min']:,} of them starting a build of all {section['added']:,} in the background "
        "(bench/added_index_load.py, docs/catalogue.md); from the last add's reply, the model-only "
        f"users at {section['rate_rps']:g} Recommend/s for {section['duration_s']:g} s.",
        "",
        "| calls sent | calls | p50 ms | p99 ms | errors |",
        "| --- | --- | --- | --- | --- |",
        f"| while it built ({build['build_s']} s by the gateway's log) | {cells(during)} |" if build else
        f"| the whole run (the build had not ended) | {cells(during)} |",
        f"| from a second after it | {cells(after)} |",
        "",
        (f"Worst second's p99: {worst[1]} ms, second {worst[0]} after the last add "
         "(added_index_load.png, second by second)." if worst else ""),
        "",
        "![p99 second by second while the added items are indexed](added_index_load.png)",
        "",
    ]


def plot_added_index_load(section: dict[str, Any], path: Path, title: str) -> None:
    """Recommend's p99 second by second from the last add, the build's time shaded."""
    fig, ax = plt.subplots(figsize=(8, 3.5))
    points = [(s + 0.5, p) for s, p in enumerate(section["p99_ms_by_second"]) if p is not None]
    if points:
        ax.plot(*zip(*points), ".-", label="p99 of the calls sent that second")
    build = section.get("build") or {}
    if build:
        ax.axvspan(0, build["at_s"], color="orange", alpha=0.2,
                   label=f"building the index of {build['items']:,.0f} added items ({build['build_s']} s)")
    ax.axhline(RECOMMEND_TARGET_P99_MS, color="red", ls=":", label="p99 target 15 ms")
    ax.set(yscale="log", xlabel="seconds after the last add", ylabel="ms",
           title=f"Recommend at {section['rate_rps']:g}/s, {section['catalogue_items']:,} items")
    ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


SCALE_OUT_STACKS = (("one_gateway_sqlite", "one gateway, SQLite"),
                    ("two_gateways_postgres", "two gateways, PostgreSQL"))
SCALE_OUT_RUNS = ("ingest", "recommend", "recommend_at_rate")


def _scale_out(section: dict[str, Any] | None) -> list[str]:
    """The scale-out section (bench.scale_out): both stacks' figures, then each process's CPU
    cores in each run; none in reports from before it existed, the reason where it did not run."""
    if not section:
        return []
    head = ["## Scale-out: one gateway on SQLite beside two gateways sharing PostgreSQL (one Triton)", ""]
    if "error" in section:
        return [*head, f"not run: {section['error']}", ""]
    stacks = [(label, section[key]) for key, label in SCALE_OUT_STACKS if key in section]
    others = sorted(dict.fromkeys(p for _, st in stacks for p in st["cpu"]["ingest"]
                                  if p not in st["gateways"]),
                    key=lambda p: p == "load_generator")  # the load generator last, as in the other tables
    rate, level = f"{section['open_rate_rps']:g}/s", section["concurrency"]
    lines = [
        *head,
        f"IngestEvents (real users' histories) and Recommend (kitchen from food, stored profiles, "
        f"consent given) closed loop at concurrency {level}, then Recommend open loop at {rate}, "
        f"{section['duration_s']:g} s each, through one client channel over the gateways "
        "(round_robin, as devtools/fleet.py sets it up).",
        "",
        "| stack | ingest req/s | ingest p99 ms | Recommend req/s | Recommend p99 ms "
        f"| Recommend p99 ms at {rate} | ingest req/s per gateway core | Recommend req/s per gateway core "
        "| errors |",
        "|" + " --- |" * 9,
        *(f"| {label} | {st['ingest_rps']} | {st['ingest_p99_ms']} | {st['recommend_rps']} | "
          f"{st['recommend_p99_ms']} | {st['recommend_p99_ms_at_200rps']} | "
          f"{st['ingest_rps_per_gateway_core']} | {st['recommend_rps_per_gateway_core']} | "
          f"{st['errors'] or ''} |" for label, st in stacks),
        "",
        f"CPU cores: ingest / Recommend at concurrency {level} / Recommend at {rate} (gateways summed; "
        "each process's in results/bench.json)",
        "",
        "| stack | gateways | " + " | ".join(p.replace("_", " ") for p in others) + " |",
        "|" + " --- |" * (2 + len(others)),
        *(f"| {label} | " + " | ".join(
            [" / ".join(f"{st['gateway_cores'][run]:.2f}" for run in SCALE_OUT_RUNS)]
            + [" / ".join(f"{st['cpu'][run][p]:.2f}" for run in SCALE_OUT_RUNS) if p in st["cpu"]["ingest"]
               else "" for p in others]) + " |" for label, st in stacks),
        "",
        section["notes"],
        "",
    ]
    return lines


def write_markdown(summary: dict[str, Any], path: Path) -> None:
    d = summary["details"]
    t = summary["targets"]
    enc = t["encode_3x_seed_at_equal_or_better_p99"]
    lim = t["stack_85pct_of_limit"]
    rec = t["recommend_p99_under_15ms_at_200rps"]
    ing = d["ingest_runs"][0]
    lines = [
        "# Benchmark (`make bench`)",
        "",
        f"Revision `{summary['revision']}` on {summary['machine']}; {d['duration_s']:g} s per run.",
        f"EncodeInterest requests carry the last {d['mean_events_per_encode_request']} (mean) real food "
        "titles of a held-out user; the stack's gateway here has its item cache off, so every text "
        "goes through BERT, as it does in (a) and (b).",
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "| --- | --- | --- |",
        f"| EncodeInterest ≥ 3× seed at equal or better p99 | {enc['ratio']}× "
        f"({enc['stack_rps']} vs {enc['seed_rps']} req/s, seed p99 {enc['seed_p99_ms']} ms) | {enc['met']} |",
        f"| stack ≥ {LIMIT_TARGET_FRACTION:.0%} of in-process limit | {_limit_cell(lim)} | {lim['met']} |",
        f"| Recommend p99 < 15 ms at 200 req/s | p99 {rec['p99_ms']} ms "
        f"at {rec['achieved_rps']} req/s | {rec['met']} |",
        f"| ingest skips BERT for items seen before | cache hit rate {ing['cache_hit_rate']:.1%} | |",
        *_startup_row(t.get("startup_serving_under_20s")),
        *_fair_share_row(d.get("fair_share")),
        *_catalogue_1m_row(summary.get("catalogue_1m"), t.get("catalogue_1m")),
        *_propagation_row(t.get("catalogue_change_on_every_gateway_within_1s")),
        "",
        "## EncodeInterest",
        "",
        "(a) seed: PyTorch eager fp32, plain gRPC server, one request at a time, 128-token padding",
        "",
        *_table(d["encode_runs"]["seed_eager"], ("seed_server", "load_generator")),
        "",
        "(c) this stack: gateway → Triton dynamic batching → ONNX Runtime INT8",
        "",
        *_table(d["encode_runs"]["stack"], ("gateway_uncached", "triton", "load_generator")),
        "",
        f"(b) limit, ONNX Runtime INT8 in-process (2 threads), length-sorted batches of "
        f"{d['limit_ort']['batch']} (best of 16/32/64): "
        f"{d['limit_ort']['texts_per_s']} texts/s = {d['limit_ort']['requests_per_s']} requests/s"
        + _limit_runs(d.get("limit_ort_runs", [])),
        "",
        *_paired_table(d.get("encode_paired")),
        "## Recommend (stored food and kitchen profiles, migration consented, k=10)",
        "",
        "Target kitchen (27,637 items) is migrated from food, target food (8,661 items) from "
        "kitchen. Where the trained blend lets co-occurrence lead, an exact bound ranks only the "
        "1,024 items of largest blend (bounded); otherwise the whole catalogue is scored (full). "
        "The paths taken are counted below the table.",
        "",
        *_table(d["recommend_runs"], ("gateway", "load_generator"), target=True),
        "",
        "Rankings by path in the gateway (interest_rank_path_total): "
        + ", ".join(f"{k} {v:.0f}" for k, v in sorted(d.get("rank_paths", {}).items())),
        "",
        "## IngestEvents (item cache on)",
        "",
        *_table(d["ingest_runs"], ("gateway", "triton", "load_generator")),
        "",
        f"Cache: {ing['cache_hits']:.0f} hits, {ing['cache_misses']:.0f} misses.",
        "",
        *_mixed(d.get("mixed_runs")),
        *_fair_share(d.get("fair_share")),
        *_scale_out(d.get("scale_out")),
        *_catalogue_scale(d.get("catalogue_scale")),
        *_added_index_load(d.get("added_index_load")),
        "## perf_analyzer (Triton alone, real tokenized titles, batch 1 per request)",
        "",
    ]
    pa = summary["perf_analyzer"]
    if pa.get("by_concurrency"):
        lines += ["| concurrency | infer/s | p50 ms | p99 ms |", "| --- | --- | --- | --- |"]
        lines += [
            f"| {r['concurrency']} | {r['throughput_infer_per_s']} | {r['p50_ms']} | {r['p99_ms']} |"
            for r in pa["by_concurrency"]
        ]
    else:
        lines.append(f"not run: {pa.get('error', 'unknown reason')}")
    lines += ["", "![latency vs throughput](bench.png)", ""]
    path.write_text("\n".join(lines))


def plot(summary: dict[str, Any], path: Path) -> None:
    d = summary["details"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, style in (("seed_eager", "o--"), ("stack", "s-")):
        runs = [r for r in d["encode_runs"][name] if r["mode"] == "closed"]
        ax1.plot([r["throughput_rps"] for r in runs], [r["p99_ms"] for r in runs], style, label=f"{name} p99")
        ax1.plot(
            [r["throughput_rps"] for r in runs],
            [r["p50_ms"] for r in runs],
            style,
            alpha=0.4,
            label=f"{name} p50",
        )
        for r in runs:
            ax1.annotate(f"c={r['level']:g}", (r["throughput_rps"], r["p99_ms"]), fontsize=7)
    ax1.axvline(d["limit_ort"]["requests_per_s"], color="grey", ls=":", label="limit (ORT in-process)")
    ax1.set(
        xlabel="throughput (requests/s)",
        ylabel="latency (ms)",
        yscale="log",
        title="EncodeInterest: latency vs throughput",
    )
    ax1.legend(fontsize=8)
    runs = [r for r in d["recommend_runs"] if r["mode"] == "open" and r.get("target", "kitchen") == "kitchen"]
    ax2.plot([r["level"] for r in runs], [r["p99_ms"] for r in runs], "s-", label="p99")
    ax2.plot([r["level"] for r in runs], [r["p50_ms"] for r in runs], "o-", alpha=0.5, label="p50")
    ax2.axhline(RECOMMEND_TARGET_P99_MS, color="red", ls=":", label="p99 target 15 ms")
    ax2.set(
        xlabel="offered rate (requests/s)",
        ylabel="latency (ms)",
        title="Recommend food -> kitchen (stored profiles) under open-loop load",
    )
    ax2.legend(fontsize=8)
    fig.suptitle(f"{summary['machine'][:90]} — rev {summary['revision']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(data: dict[str, Any], out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(data)
    (out / "bench.json").write_text(json.dumps(summary, indent=2))
    write_markdown(summary, out / "bench.md")
    plot(summary, out / "bench.png")
    scale = data.get("catalogue_scale")
    if scale and "sizes" in scale:
        plot_catalogue_scale(scale, out / "catalogue_scale.png",
                             f"{summary['machine'][:90]} — rev {summary['revision']}")
    rebuild = data.get("added_index_load")
    if rebuild and "p99_ms_by_second" in rebuild:
        plot_added_index_load(rebuild, out / "added_index_load.png",
                              f"{summary['machine'][:90]} — rev {summary['revision']}")
    return summary
