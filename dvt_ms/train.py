"""Command line: ``python -m dvt_ms.train CONFIG.yaml [key=value ...]``.

One process trains on one device; under ``msrun`` every worker runs this same command and they
train data-parallel (see scripts/run_train.sh). ``--list-keys`` prints every config key.
"""
import argparse
import logging
import os
import sys

from .cli_utils import parse_overrides
from .config import ConfigError, load_config, schema_markdown

_logger = logging.getLogger("dvt_ms.train")


def _parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m dvt_ms.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="YAML config (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override any config key")
    parser.add_argument("--list-keys", action="store_true", help="print every config key as a Markdown table")
    args = parser.parse_args(argv)
    # A first argument with "=" is an override, not a config file.
    if args.config and "=" in args.config and not os.path.exists(args.config):
        args.overrides.insert(0, args.config)
        args.config = None
    return args


def _setup_logging():
    # Rank 0 reports progress; the others only warnings and errors (msrun keeps a log per worker).
    rank = int(os.environ.get("RANK_ID", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S",
                        stream=sys.stdout)


def main(argv=None):
    args = _parse_args(argv)
    if args.list_keys:
        sys.stdout.write(schema_markdown())
        return 0
    _setup_logging()
    # MindSpore loads slowly: imported only when training, so --list-keys and usage errors are instant.
    from .checkpoints import CheckpointError
    from .data import DataError
    from .training import NonFiniteLossError, train

    try:
        try:
            overrides = parse_overrides(args.overrides)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        train(load_config(args.config, overrides))
    except (ConfigError, DataError, CheckpointError, NonFiniteLossError) as error:
        _logger.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
