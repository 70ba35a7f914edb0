"""Tokenize a corpus once into packed, pre-tokenized webdataset shards plus a manifest.json.

Each --source is KIND:PATH[#key=value,...] (PATH: a file, a directory or a glob):

  wikipedia     official XML dump *.xml.bz2, or a directory of split parts *.xml-p1p41242.bz2
                (markup stripped)                               #language=xx,index=...-multistream-index.txt.bz2
  wikipedia-hf  wikimedia/wikipedia-style HF dataset or dir      #config=20231101.fr,split=train
  bookcorpus    directory of *.txt books, or the HF row layout    #language=en
  cc100         xx.txt / xx.txt.xz files (language from name)
  text          *.txt(.xz/.bz2/.gz)                             #language=xx,doc=blank|line|file
  jsonl         *.jsonl                                         #column=text,language=xx,language_column=lang
  parquet       *.parquet                                       #column=text,language=xx,language_column=lang
  hf            any datasets.load_dataset name or local dir     #config=..,split=..,column=..,language=..

The sources are cut into units of work (files, groups of small files, ranges of a multistream dump
given its index, shards of a streamed dataset) that --workers processes read in parallel. Each unit's
documents are tokenized with the teacher's fast tokenizer, packed contiguously into [CLS] ... [SEP]
sequences of --max-length tokens ([SEP] between documents; RoBERTa FULL-SENTENCES packing, never
mixing languages), shuffled within each shard (--seed) and written as DIR/<lang>-<unit>-<k>.tar
shards of uint16 (int32 for vocabularies over 65536) arrays. The result is a pure function of the
inputs and settings, whatever --workers is. An interrupted run resumes when run again with the same
arguments: finished units are skipped without reading them, the rest are prepared.

--validation-fraction F holds out about F of the documents (a seeded draw per document, and at least
the first document, so that a small corpus still gets a held-out split) and --validation-source adds
whole corpora to the held-out set: those go to DIR/validation/ (a shard directory of its own, with its
manifest), never into the training shards. `train` evaluates on it (train.eval_every) and `search`
takes it as its validation data.

Examples:
  pretrain-distill prepare --source wikipedia:enwiki-latest-pages-articles.xml.bz2 --out runs/shards/wiki
  pretrain-distill prepare --source wikipedia:data/enwiki-split/ --source bookcorpus:data/books/ \\
      --out runs/shards/wikibooks --max-length 256 --workers 16 --validation-fraction 0.001
  pretrain-distill prepare --source 'cc100:data/cc100/*.txt.xz' --out runs/shards/cc100 \\
      --tokenizer xlm-roberta-base
"""

from __future__ import annotations

import argparse
import logging

from pretrain_distill.data.prepare import available_cpus, prepare_shards


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        action="append",
        required=True,
        metavar="KIND:PATH[#k=v,...]",
        help="a corpus to read (repeatable; see above)",
    )
    parser.add_argument("--out", required=True, help="output directory for the shards and manifest.json")
    parser.add_argument(
        "--tokenizer",
        default="minilm",
        help="fast tokenizer: a HF directory / name, or 'minilm' (the teacher's; default)",
    )
    parser.add_argument("--max-length", type=int, default=256, help="tokens per sequence (default 256)")
    parser.add_argument(
        "--workers",
        type=int,
        default=available_cpus(),
        help="processes (default: the CPUs this job may use: SLURM_CPUS_PER_TASK or the CPU affinity)",
    )
    parser.add_argument(
        "--shard-chars",
        type=int,
        default=32_000_000,
        help="input characters per shard, and input bytes per unit of work (default 32M: ~7M tokens, ~14 MB)",
    )
    parser.add_argument(
        "--validation-fraction",
        type=float,
        default=0.0,
        help="hold out about this fraction of the documents (at least one) in DIR/validation/ (default 0)",
    )
    parser.add_argument(
        "--validation-source",
        action="append",
        default=[],
        metavar="KIND:PATH[#k=v,...]",
        help="a corpus held out entirely in DIR/validation/ (repeatable)",
    )
    parser.add_argument(
        "--skip-bad-input",
        action="store_true",
        help="skip a corrupt .bz2 member / .xz stream (counted in the manifest) instead of stopping",
    )
    parser.add_argument("--block-size", type=int, default=256, help="sequences per tar member (default 256)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the in-shard sequence shuffle (default 0)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    manifest = prepare_shards(  # a DataError ends as one line from the CLI, exit 2
        args.source,
        args.out,
        args.tokenizer,
        args.max_length,
        args.workers,
        args.shard_chars,
        args.block_size,
        args.seed,
        progress=not args.no_progress,
        validation_fraction=args.validation_fraction,
        validation_sources=args.validation_source,
        skip_bad_input=args.skip_bad_input,
    )
    totals = manifest["totals"]
    print(
        f"{args.out}: {len(manifest['shards'])} shards, {totals['sequences']} sequences, {totals['tokens']} tokens, "
        f"languages {sorted(manifest['languages'])}, {manifest['last_run']['seconds']:.1f} s"
        + (
            f", {manifest['validation']['sequences']} validation sequences"
            if "validation" in manifest
            else ""
        )
    )
    return 0
