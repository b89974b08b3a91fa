"""`make data`: load every configured dataset (or one) and say what was read, kept and dropped.

    python -m interest_model.datacheck [--config FILE] [--dataset NAME] [--json]

Exit status: 0 when all is consistent, 1 when an adapter found a consistency error (e.g. a
catalogue size that disagrees with num.txt), 2 when a dataset cannot be loaded at all.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from interest_core.config import load_settings
from interest_model.datasets import SPLITS, InteractionData, load_dataset

ROWS = (("events read", "read"), ("kept", "kept"))
TAIL = (("titles changed by cleaning", "cleaned_texts"), ("catalogue items", "catalogue_items"),
        ("items without title", "untitled_items"))


def summarise(data: InteractionData) -> dict[str, Any]:
    """Per platform counts (report + catalogue size) and users per split, JSON-ready."""
    report = data.report.as_dict()
    platforms: dict[str, Any] = {}
    for p in (*data.platforms, *(p for p in report if p not in data.platforms)):
        row = report.get(p) or {"read": 0, "kept": 0, "cleaned_texts": 0, "untitled_items": 0,
                                "dropped": {}, "warnings": {}}
        cat = data.catalogues.get(p)
        platforms[p] = {**row, "catalogue_items": len(cat) if cat is not None else 0}
    splits = {
        s: {"users": len(users), "overlap_users": sum(len(u.items) >= 2 for u in users)}
        for s in SPLITS for users in [data.split(s)]
    }
    return {"platforms": platforms, "splits": splits, "errors": list(data.report.errors)}


def render(name: str, where: str, summary: dict[str, Any]) -> str:
    """Aligned text tables: one column per platform, then users per split."""
    plats: dict[str, Any] = summary["platforms"]
    rows = list(plats.values())
    reasons = sorted({r for row in rows for r in row["dropped"]})
    warnings = sorted({w for row in rows for w in row["warnings"]})
    lines: list[tuple[str, list[int]]] = [(label, [row[key] for row in rows]) for label, key in ROWS]
    lines.append(("dropped", [sum(row["dropped"].values()) for row in rows]))
    lines += [(f"  {r}", [row["dropped"].get(r, 0) for row in rows]) for r in reasons]
    lines += [(label, [row[key] for row in rows]) for label, key in TAIL]
    lines += [(f"warning: {w}", [row["warnings"].get(w, 0) for row in rows]) for w in warnings]
    width = max(len(label) for label, _ in lines) + 2
    cols = [max(11, len(p) + 2) for p in plats]
    out = [f"{name}  ({where})", " " * width + "".join(f"{p:>{c}}" for p, c in zip(plats, cols))]
    out += [f"{label:<{width}}" + "".join(f"{v:>{c},}" for v, c in zip(vals, cols)) for label, vals in lines]
    out.append("")
    out.append(f"{'split':<{width}}{'users':>11}{'on 2+ platforms':>17}")
    for split, row in summary["splits"].items():
        out.append(f"{split:<{width}}{row['users']:>11,}{row['overlap_users']:>17,}")
    out += [f"!! {err}" for err in summary["errors"]]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m interest_model.datacheck", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML config (default: $INTEREST_CONFIG or config/default.yaml)")
    parser.add_argument("--dataset", default=None, help="check only this dataset of `datasets:`")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    names = [args.dataset] if args.dataset else list(settings.datasets)
    results: dict[str, Any] = {}
    texts: list[str] = []
    for name in names:
        try:
            data = load_dataset(settings, name)
        except (FileNotFoundError, ValueError) as err:
            print(f"make data: {err}", file=sys.stderr)
            return 2
        config = settings.datasets[name]
        where = f"adapter {config.adapter}, {config.folder(settings.data_dir)}"
        results[name] = {"adapter": config.adapter, "path": str(config.folder(settings.data_dir)),
                         **summarise(data)}
        texts.append(render(name, where, results[name]))
    print(json.dumps(results, indent=2) if args.json else "\n\n".join(texts))
    return 1 if any(r["errors"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
