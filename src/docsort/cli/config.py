"""``docsort config show|list``: the config a stage would use, and the presets to choose from."""

from __future__ import annotations

import argparse
import sys

from docsort.cli.args import add_command, add_overrides


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``config show`` and ``config list`` to the ``docsort`` parser."""
    p = add_command(
        sub, "config", "Show the resolved config for some overrides, or list the config presets."
    )
    cs = p.add_subparsers(dest="action", required=True, metavar="ACTION",
                          help="run `docsort config ACTION --help` for its arguments")  # fmt: skip
    text = "Print the resolved config (YAML) the stages would use with these overrides."
    c = cs.add_parser("show", help=text, description=text)
    add_overrides(c, "experiment=cpu_fast model=convnext_nano train.lr=0.01")
    c.add_argument(
        "--section",
        default=None,
        metavar="NAME",
        help="print only this section of the config (train, model, data, aug, tta, ...)",
    )
    c.set_defaults(func=_show)
    text = "List the config groups under docsort/conf, their presets and each group's default."
    c = cs.add_parser("list", help=text, description=text)
    c.set_defaults(func=_list)


def _show(args: argparse.Namespace) -> int:
    from docsort.core.config import config_text

    sys.stdout.write(config_text(args.overrides, section=args.section))
    return 0


def _list(args: argparse.Namespace) -> int:
    from docsort.core.config import config_groups

    groups = config_groups()
    width = max(len(o) for g in groups for o in g.options)
    for i, g in enumerate(groups):
        default = g.default if g.default is not None else "none"
        print(("\n" if i else "") + f"{g.name} (default: {default}; choose with {g.chosen_by})")
        for option in g.options:
            mark = "*" if option == g.default else " "
            print(f"  {mark} {option:<{width}}  {g.descriptions[option]}".rstrip())
    print("\n* marks the default; e.g. `docsort config show experiment=cpu_fast`")
    return 0
