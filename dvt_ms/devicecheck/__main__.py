"""Command line: ``python -m dvt_ms.devicecheck [--device_target X] [--quick] [--out DIR]``.

Checks golden parity, training of every preset, export and the early-exit engine, and the most
expensive kernels on this machine's device; writes device_check.md and device_check.json to
attach to a report. Exit code 1 when a part failed.
"""
import argparse
import logging
import sys

from .. import cli


def main(argv=None):
    from ..models.presets import PRESETS
    parser = argparse.ArgumentParser(prog="python -m dvt_ms.devicecheck", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device_target", default="auto", choices=["auto", "Ascend", "GPU", "CPU"])
    parser.add_argument("--quick", action="store_true", help="reduced-width training only (no full presets)")
    parser.add_argument("--presets", nargs="+", choices=sorted(PRESETS), help="default: every preset")
    parser.add_argument("--steps", type=int, default=2, help="training steps per check (default 2)")
    parser.add_argument("--out", default=".", help="folder for device_check.md/.json (default: here)")
    args = parser.parse_args(argv)
    cli.setup_logging(logging.INFO)
    logging.getLogger("dvt_ms.train").setLevel(logging.WARNING)   # the check's own lines say enough

    def check():
        from . import run_device_check, write_report
        report = run_device_check(args.device_target, quick=args.quick, presets=args.presets, steps=args.steps)
        md_path, json_path = write_report(report, args.out)
        print(f"device check {'passed' if report['passed'] else 'FAILED'}: {md_path}, {json_path}")
        return 0 if report["passed"] else 1

    return cli.run(check)


if __name__ == "__main__":
    sys.exit(main())
