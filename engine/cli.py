"""The command line that every config-driven tool shares: CONFIG and key=value overrides."""
from __future__ import annotations

import argparse


def config_argument_parser(description: str | None, *,
                           resume: bool = False) -> argparse.ArgumentParser:
    """A parser with the positional CONFIG and `key=value` overrides (and `--resume` for the
    training tools); tools add their options and call `parse_intermixed_args`, so options may
    come before or after the overrides."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="YAML config (may inherit with _base_)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    if resume:
        parser.add_argument("--resume", action="store_true",
                            help="continue from OUTPUT_DIR/last_checkpoint if there is one")
    return parser
