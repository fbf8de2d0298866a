"""How close ten training steps land to the authors' (tests/golden/*_trajectory.npz), per exit.

    python benchmarks/recipe_trajectory.py [--family deit t2t]

Runs the trajectory of tests/test_recipe.py with the published optimizer and with the one the
configs had before (mindcv's norm_and_bias filter, eps 1e-10), and prints the relative L2 difference
of each exit's parameter change from the authors' (entries whose exact gradient is zero apart, and
all entries) and the largest per-tensor difference.
"""
import argparse
import pathlib
import sys
import tempfile

import mindspore as ms

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from test_recipe import trajectory_errors  # noqa: E402

OPTIMIZERS = {
    "published (ndim1_and_bias, eps 1e-8)": {},
    "before (norm_and_bias, eps 1e-10)": {"weight_decay_filter": "norm_and_bias", "opt_eps": 1e-10},
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", nargs="+", default=["deit", "t2t"], choices=["deit", "t2t"])
    args = parser.parse_args()
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    golden = ROOT / "tests" / "golden"
    print("| family | optimizer | per exit | per exit, all entries | worst tensor |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as work:
        for family in args.family:
            for label, overrides in OPTIMIZERS.items():
                errors = trajectory_errors(golden, family, pathlib.Path(work), **overrides)
                worst = max(errors["per_tensor"], key=errors["per_tensor"].get)
                print(f"| {family} | {label} | {' / '.join(f'{e:.1e}' for e in errors['per_exit'])} | "
                      f"{' / '.join(f'{e:.1e}' for e in errors['per_exit_all'])} | "
                      f"{worst} {errors['per_tensor'][worst]:.1e} |", flush=True)


if __name__ == "__main__":
    main()
