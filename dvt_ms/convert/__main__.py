"""Command line: convert one of the authors' published checkpoints for MindSpore.

    python -m dvt_ms.convert SRC.pth.tar DST.ckpt --model NAME [key=value ...]

Writes DST.ckpt and, beside it, DST.published.yaml with the checkpoint's published results.
key=value pairs override the preset's architecture (e.g. num_classes=10).
"""
import sys

from .. import cli
from ..models.presets import list_presets
from .published import convert_checkpoint


def main(argv=None):
    parser = cli.argument_parser("dvt_ms.convert", __doc__)
    parser.add_argument("src", help="published checkpoint (*.pth.tar)")
    parser.add_argument("dst", help="MindSpore checkpoint to write (*.ckpt)")
    parser.add_argument("--model", required=True, choices=list_presets(published=True),
                        help="published preset the checkpoint belongs to")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="architecture override, e.g. num_classes=10")
    args = parser.parse_intermixed_args(argv)
    cli.setup_logging(timestamps=False)

    def convert():
        convert_checkpoint(args.src, args.dst, args.model, cli.parse_overrides(args.overrides))

    return cli.run(convert)


if __name__ == "__main__":
    sys.exit(main())
