r"""``gradnoise study``: run a study (or all, and rewrite the README's results block).

::

    gradnoise study --list
    gradnoise study no-single-winner --out-dir out/nsw            # full size
    gradnoise study iwae-snr --out-dir out/snr --quick            # reduced, for tests
    gradnoise study all --out-dir out --update-readme README.md   # every study + README block
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path

from ..cluster import add_cluster_arguments, check_cluster_arguments, client_from_args
from .base import Config, Outcome, get_study, run_study, study_names, study_outputs

README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def results_block(outcomes: list[Outcome], figure_dir: str) -> str:
    """Markdown for the README's results block: per study the claim, verdict, numbers, figures."""
    lines = [
        "Produced by `gradnoise study all --out-dir DIR --update-readme README.md`; details, methods",
        "and every number's interval in each study's `study.md` (see [docs/studies.md](docs/studies.md)).",
        "Intervals are 95%.",
        "",
    ]
    for o in outcomes:
        lines += [
            f"### {o.title}",
            "",
            f"*Claim:* {o.claim} **Verdict: {o.verdict_text}** "
            f"(`gradnoise study {o.name}`{', quick mode' if o.quick else ''}, {o.wall_seconds:.0f} s).",
            "",
            *[f"- {line}" for line in o.headline],
            "",
            *[f"![{o.name}: {f}]({figure_dir}/{o.name}-{f})" for f in o.figures],
            "",
        ]
    return "\n".join(lines).rstrip() + "\n"


README_BLOCK = re.compile(re.escape(README_START) + r".*?" + re.escape(README_END), re.S)


def readme_outputs(readme: str | os.PathLike, names: list[str]):
    """Before running any study: ``readme`` can be read and holds the results block (the only
    part of it rewritten), and the figures ``docs/results/<study>-*.png`` beside it that would be
    replaced are gradnoise's (:func:`gradnoise.io.claim_outputs`, returned); one line otherwise."""
    from gradnoise.io import Figure, claim_outputs

    readme = Path(readme)
    try:
        text = readme.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read the README {str(readme)!r}: {getattr(err, 'strerror', None) or err}") from None
    if not README_BLOCK.search(text):
        raise ValueError(f"{readme} has no {README_START} ... {README_END} block to rewrite; add the two "
                         "markers where the results go (nothing else in the file is changed)")
    return claim_outputs("gradnoise study --update-readme", readme.parent / "docs" / "results",
                         {f"{name}-*.png": Figure() for name in names})


def update_readme(readme: str | os.PathLike, outcomes: list[Outcome], out_dir: Path) -> None:
    """Replace the text between the results markers; copy the figures to ``docs/results/``
    (:func:`readme_outputs` checked first: a README without the block, or a figure there that
    gradnoise did not write, is refused with one line, the files intact)."""
    from gradnoise.io import atomic_write_text

    readme = Path(readme)
    claim = readme_outputs(readme, [o.name for o in outcomes])
    text = readme.read_text(encoding="utf-8")
    figure_dir = readme.parent / "docs" / "results"
    figure_dir.mkdir(parents=True, exist_ok=True)
    for o in outcomes:
        for f in o.figures:
            shutil.copyfile(out_dir / o.name / f, figure_dir / f"{o.name}-{f}")
    claim.record()
    block = f"{README_START}\n{results_block(outcomes, 'docs/results')}{README_END}"
    atomic_write_text(readme, README_BLOCK.sub(lambda _: block, text, count=1))


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def run_command(args: argparse.Namespace) -> int:
    if args.list:
        for s in (get_study(n) for n in study_names()):
            source = "" if s.origin.kind == "built in" else f"  [{s.origin}]"
            print(f"  {s.name:<20} {s.summary}{source}")
        print(f"  {'all':<20} every study above, each into OUT_DIR/NAME")
        return 0
    if not args.name:
        raise ValueError("name a study (see `gradnoise study --list`) or pass --list")
    if args.out_dir is None:
        raise ValueError("--out-dir is required")
    if args.update_readme and args.name != "all":
        raise ValueError("--update-readme needs `gradnoise study all` (the block shows every study)")
    check_cluster_arguments(args)
    # the README's block shows the package's own studies; plugins' studies run with `all` otherwise
    names = (study_names(built_in=bool(args.update_readme)) if args.name == "all"
             else [get_study(args.name).name])
    out = Path(args.out_dir)
    for name in names:                           # every folder checked before the first study runs
        study_outputs(name, out / name if args.name == "all" else out)
    if args.update_readme:
        readme_outputs(args.update_readme, names)
    outcomes = []
    with client_from_args(args) as client:
        config = Config(quick=args.quick, seed=args.seed, threads=args.threads, client=client)
        for name in names:
            target = out / name if args.name == "all" else out
            print(f"study {name}{' (quick)' if args.quick else ''} -> {target}", file=sys.stderr)
            o = run_study(name, target, config)
            print(f"{name}: claim {o.verdict_text} ({o.wall_seconds:.1f} s)")
            for line in o.headline:
                print(f"  - {line}")
            outcomes.append(o)
    if args.update_readme:
        update_readme(args.update_readme, outcomes, out)
        print(f"updated the results block of {args.update_readme}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study", help="run a study of a published claim (tables, fits, figures, study.md)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Reproduce a published claim about gradient estimators: measure, fit, plot, and\n"
        "write study.md with the claim, the numbers (95% intervals) and whether it held.",
        epilog="examples:\n"
        "  gradnoise study --list\n"
        "  gradnoise study no-single-winner --out-dir out/no-single-winner\n"
        "  gradnoise study iwae-snr --out-dir /tmp/snr --quick\n"
        "  gradnoise study all --out-dir out --update-readme README.md",
    )
    p.add_argument("name", nargs="?", metavar="NAME", help="study name, or 'all'")
    p.add_argument("--list", action="store_true", help="list the studies")
    p.add_argument("--out-dir", metavar="DIR", help="output folder (for 'all': one sub-folder per study)")
    p.add_argument("--quick", action="store_true", help="reduced sizes (seconds; numbers indicative only)")
    p.add_argument("--seed", type=int, default=0, help="master seed (default: %(default)s)")
    add_cluster_arguments(p)
    p.add_argument("--update-readme", metavar="README", help="with 'all': rewrite the README's results block "
                   "and copy the figures to docs/results/ beside it")
    p.set_defaults(func=run_command)
