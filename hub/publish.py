#!/usr/bin/env python
"""Publish a finished run as a verified Hub repo, or regenerate cards (logic: wnzoo.publish).

    python hub/publish.py RUN_DIR [--repo-id wnzoo/<arch>.<tag>] [--data DIR] [--push] [--dry-run]
    python hub/publish.py --refresh <arch>.<tag> [...] [--push]
    python hub/publish.py --model-card

Without --push the variant is pinned to a deterministic local commit of its folder and served from the
release copy hub/<arch>.<tag>/; --push uploads it to HF_ENDPOINT (needs a write token: HF_TOKEN or
`hf auth login`; checked, with the endpoint, before anything is built) and pins the Hub's commit. A published
variant is replaced only with --replace. Recording a variant is one transaction: a publish interrupted (Ctrl-C,
a kill) is finished or undone by the next publish or load of pretrained weights, and the old variant loads
until the new one is recorded. A publish regenerates the twin's card too (it names the variant's accuracy);
--refresh regenerates a published variant's card and curves from its release copy and pins them again
(with --push as a new Hub commit: a variant on the Hub changes only so).

"""
from __future__ import annotations

import argparse
import json
import signal
import sys

if __name__ == "__main__":  # from the first line, a scheduler's stop is a Ctrl-C (wnzoo._cli.run takes over
    for _signum in (signal.SIGTERM, signal.SIGHUP):  # after the imports; one while they load ends quietly)
        signal.signal(_signum, signal.default_int_handler)
try:
    from wnzoo._cli import EXIT_CODES, leave, run
    from wnzoo._datasets import TAG_DATASET
    from wnzoo.published import PUBLISHED_JSON, load
    from wnzoo.publish import publish, refresh, write_zoo_card
except KeyboardInterrupt:
    print("\ninterrupted", file=sys.stderr)
    sys.exit(130)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n", 2)[2] + EXIT_CODES,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", nargs="?", help="finished run folder (runs/<recipe>)")
    ap.add_argument("--repo-id", help=f"Hub repo id, wnzoo/<arch>.<tag> (tag {' or '.join(TAG_DATASET)}; default: "
                    f"the run's model and dataset)")
    ap.add_argument("--data", help="dataset folder for the test-set evaluation (default: the run's data)")
    ap.add_argument("--recipe", help="recipe the card cites (default: the run's own, else configs/<run folder>.yaml)")
    ap.add_argument("--push", action="store_true", help="upload to the Hub (HF_ENDPOINT) and pin its commit")
    ap.add_argument("--dry-run", action="store_true", help="build and verify the folder only (see --out)")
    ap.add_argument("--out", help="where --dry-run builds the folder (default: a new temporary folder)")
    ap.add_argument("--replace", action="store_true", help="replace the variant if it is already published")
    ap.add_argument("--refresh", nargs="+", metavar="VARIANT", help="regenerate the card and curves of published "
                    "variants (arch.tag) from their release copies, and pin them again")
    ap.add_argument("--model-card", action="store_true", help="regenerate MODEL_CARD.md from wnzoo/published.json")
    args = ap.parse_args(argv)
    if not (args.model_card or args.refresh or args.run_dir):
        ap.error("RUN_DIR is required (or --refresh VARIANT, or --model-card)")
    if args.model_card and (args.run_dir or args.refresh or args.dry_run or args.out or args.push or args.replace):
        ap.error("--model-card only regenerates MODEL_CARD.md; give it alone")
    if args.refresh and (args.run_dir or args.repo_id or args.data or args.recipe or args.dry_run or args.out
                         or args.replace):
        ap.error("--refresh regenerates published variants from their release copies; it takes --push only")
    if args.dry_run and (args.push or args.replace):
        ap.error("--dry-run builds and verifies the folder only: it neither pushes nor replaces; drop --push/--replace")
    if args.out and not args.dry_run:
        ap.error("--out is where --dry-run builds the folder; a publish keeps its release copy in hub/")
    return run(lambda: _publish(args), _after)


def _after(e: BaseException) -> str | None:
    if isinstance(e, KeyboardInterrupt):
        return ("a publish cut short is finished or undone by the next publish or load of pretrained weights; run "
                "the same command again to publish")
    return None


def _publish(args: argparse.Namespace) -> int:
    if args.model_card:
        print(f"wrote {write_zoo_card()}")
        return 0
    for name in args.refresh or ():
        before = load(PUBLISHED_JSON).get(name)
        rec = refresh(name, push=args.push)
        what = "already what the code writes" if rec == before else "card and curves regenerated"
        print(f"{rec.repo_id}: {what}, pinned to {rec.revision}"
              + (f" ({rec.hub_tag} on the Hub)" if rec.pushed else ""))
    if args.refresh:
        return 0
    rec, folder = publish(args.run_dir, args.repo_id, data=args.data, recipe=args.recipe, push=args.push,
                          dry_run=args.dry_run, out=args.out, replace=args.replace)
    print(json.dumps(rec.to_dict(), indent=2))
    what = "built and verified (dry run)" if args.dry_run else ("pushed" if rec.pushed else "published locally")
    print(f"{rec.repo_id}: {what}, top-1 {rec.top1:.2f} %, folder {folder}")
    return 0


if __name__ == "__main__":
    leave(main())
