"""`make data`: check the dataset the project carries and say what was read, kept, dropped.

    python -m interest_core.datacheck [--config FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from interest_core.config import load_settings
from interest_core.data import dataset_dir, load_sequences, side_size
from interest_core.text import clean_text


def summarise(config: Path | None) -> dict[str, object]:
    settings = load_settings(config, catalogue_limit=None)
    report: dict[str, object] = {}
    folders = set()
    for name, platform in settings.platforms.items():
        folder = dataset_dir(settings, platform)
        folders.add(folder)
        index = json.loads((folder / f"item_set_{platform.side}.json").read_text())
        texts = json.loads((folder / f"text_{platform.side}.json").read_text())
        raw = [texts.get(asin, "") for asin in index]
        cleaned = [clean_text(t) for t in raw]
        report[name] = {
            "items": len(index),
            "expected_items": side_size(folder, platform.side),
            "titles_changed_by_cleaning": sum(a != b for a, b in zip(raw, cleaned)),
            "items_without_title": sum(not t for t in cleaned),
        }
    for folder in folders:
        for filename in ("train_overlap.txt", "valid.txt", "test.txt", "train_A.txt", "train_B.txt"):
            users = load_sequences(folder, filename)
            report[f"{folder.name}/{filename}"] = {
                "users": len(users),
                "side_a_events": sum(len(u.items_a) for u in users),
                "side_b_events": sum(len(u.items_b) for u in users),
            }
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m interest_core.datacheck", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None)
    args = parser.parse_args(argv)
    report = summarise(args.config)
    ok = True
    for key, value in report.items():
        print(f"{key:40s} " + ", ".join(f"{k}={v}" for k, v in value.items()))  # type: ignore[attr-defined]
        expected = value.get("expected_items") if isinstance(value, dict) else None
        if expected is not None and value["items"] != expected:  # type: ignore[index]
            print(f"  !! {key}: {value['items']} items but num.txt says {expected}")  # type: ignore[index]
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
