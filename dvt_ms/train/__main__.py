"""Command line: ``python -m dvt_ms.train CONFIG.yaml [key=value ...]``.

One process trains on one device; under ``msrun`` every worker runs this same command and they
train data-parallel (see scripts/run_train.sh). ``--list_keys`` prints every config key.
"""
import logging
import os
import sys

from .. import cli
from .interrupts import watch_stop_signals


def _parse_args(argv):
    parser = cli.argument_parser("dvt_ms.train", __doc__)
    parser.add_argument("config", nargs="?", help="YAML config (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override any config key")
    parser.add_argument("--list_keys", action="store_true", help="print every config key as a Markdown table")
    args = parser.parse_args(argv)
    # A first argument with "=" is an override, not a config file.
    if args.config and "=" in args.config and not os.path.exists(args.config):
        args.overrides.insert(0, args.config)
        args.config = None
    return args


def main(argv=None):
    args = _parse_args(argv)
    if argv is None:
        # A real command line: before MindSpore (imported with the config) starts threads, route
        # SIGINT/SIGTERM to a thread that stops training gracefully (interrupts.py).
        watch_stop_signals()
    from ..config import schema_markdown
    if args.list_keys:
        sys.stdout.write(schema_markdown())
        return 0
    # Rank 0 reports progress; the others only warnings and errors (msrun keeps a log per worker).
    rank = int(os.environ.get("RANK_ID", "0"))
    cli.setup_logging(level=logging.INFO if rank == 0 else logging.WARNING)

    def train():
        from .run_folder import start_config
        from .trainer import train as run_training   # MindSpore loads slowly: only when training
        # A resume continues the run as its folder recorded it, with only the command line's changes.
        run_training(start_config(args.config, cli.parse_overrides(args.overrides)))

    return cli.run(train)


if __name__ == "__main__":
    sys.exit(main())
