"""Early exit under drifting inputs: fixed thresholds vs the budget controller, and the deadline.

    python benchmarks/budget_drift.py --mindir OUT/mindir [--budget G] [--window 4096] [--windows 12]
                                      [--more_streams N] [--plot docs/budget_drift.png]

``OUT`` is a demo run (``bash scripts/run_demo.sh OUT``): its exported model carries the calibrated
budget table. The stream is rendered by the demo's own generator (``dvt_ms.demo.dataset``), whose
images each have a difficulty: a pool of ``--pool`` images with difficulties spread evenly over
[0, 1] (each rendered from its own seed, written as PNG), from which the stream draws image by image
(with replacement, the nearest difficulties) with difficulty ~ Beta(1, b): b = 2.5 (the demo's
calibration distribution) for the first ``--calm`` windows, then falling linearly to
``--hardest_beta``: the inputs get harder and harder.

Two kinds of figures, labelled as such in the output:

* **replay** (most of it): every exit's logits of every pool image are computed once by the exported
  model (``EarlyExitEngine.every_exit``); the stream is then replayed through the real
  ``EarlyExitRun`` with a ``ReplayEngine`` (deploy/replay.py), whose "graphs" look the logits up.
  Exit decisions are a pure function of the exits' logits, so the exits, costs and accuracies are
  those the engine gives, without running the model per experiment. Not timed.
  - fixed thresholds (the row ``--budget G`` picks) vs ``--hold_budget G``: cost per window and its
    error against the target, accuracy per window beside the table's calibration accuracy of the
    row in use and the last exit alone's accuracy on the same window (what the drift itself costs);
  - the same controller on a stream without drift: its switches (there should be none);
  - with ``--more_streams N``, the same two on N more streams drawn from the same pool: one line each.
* **end to end** (MindIR engine on the PNG files, ``run_inference`` as ``run_infer.sh`` calls it):
  - ``--hold_budget G`` on the first ``--end_to_end_windows`` windows of the stream: window costs, and
    how many images got the same exit as in the replay;
  - ``--deadline_ms D`` at batch size 1 on ``--deadline_images`` images of the stream's hard end:
    shares answered by confidence / the deadline, p50/p95/p99 latency (model part) against D.
    D defaults to the warm-up p99 times of exits 1..K-1 plus half of exit K's: the deadline bites
    between the last two exits.

The plot (``--plot``): cost per window, fixed vs controlled, with the target and the +/-5 % band.
"""
import argparse
import logging
import os
import tempfile
import time

import numpy as np

from dvt_ms.demo.dataset import CLASS_NAMES, generate_image
from dvt_ms.deploy.controller import BudgetController
from dvt_ms.deploy.deadline import DeadlinePolicy, measure_exit_seconds
from dvt_ms.deploy.engine import EarlyExitEngine
from dvt_ms.deploy.infer import run_inference
from dvt_ms.contract.thresholds import select_row
from dvt_ms.deploy.preprocess import Preprocessor
from dvt_ms.deploy.replay import ReplayEngine, replay_images
from dvt_ms.plots import plot_budget_curve

LOGGER = logging.getLogger("budget_drift")
CALIBRATION_BETA = 2.5      # the demo's difficulty distribution: Beta(1, 2.5)


def render_pool(directory, count, seed, size):
    """``count`` images, difficulties evenly over [0, 1], random classes: (paths, labels, difficulties)."""
    difficulties = (np.arange(count) + 0.5) / count
    rng = np.random.default_rng([seed, 1])
    labels = rng.integers(0, len(CLASS_NAMES), count)
    paths = []
    for index, (label, difficulty) in enumerate(zip(labels, difficulties)):
        path = os.path.join(directory, f"{index:06d}.png")
        generate_image(int(label), float(difficulty), np.random.default_rng([seed, 2, index]), size).save(
            path, compress_level=1)
        paths.append(path)
    return paths, labels, difficulties


def stream_indices(pool_difficulties, windows, window, calm, hardest_beta, seed, drift=True):
    """Pool indices of the stream: difficulty ~ Beta(1, b), b = 2.5 for ``calm`` windows, then
    linearly down to ``hardest_beta`` (or 2.5 throughout without ``drift``)."""
    rng = np.random.default_rng([seed, 3, int(drift)])
    count = windows * window
    progress = np.clip((np.arange(count) / window - calm) / max(windows - calm, 1), 0.0, 1.0)
    beta = CALIBRATION_BETA - (CALIBRATION_BETA - hardest_beta) * progress if drift else np.full(count, 2.5)
    wanted = rng.beta(1.0, beta)
    nearest = np.searchsorted(pool_difficulties, wanted)
    # spread the draws over the neighbours, so one image is not drawn every time
    jitter = rng.integers(-4, 5, count)
    return np.clip(nearest + jitter, 0, len(pool_difficulties) - 1), wanted


def replay(logits, exit_gflops, thresholds, policy=None, batch_size=256):
    engine = ReplayEngine(logits, exit_gflops, max_batch=batch_size)
    run = engine.run(thresholds, batch_size, policy)
    for start in range(0, logits.shape[1], batch_size):
        run.push(replay_images(np.arange(start, min(start + batch_size, logits.shape[1]))))
    run.finish()
    return run.results()


def per_window(values, window):
    return np.array([np.mean(values[start:start + window]) for start in range(0, len(values), window)])


def _replay_stream(pool_logits, difficulties, gflops, document, budget, start, args, seed, drift=True):
    """One stream drawn from the pool (stream seed ``seed``), replayed with the thresholds ``--budget``
    picks and with the controller: (pool indices, fixed (exits, predictions), held (exits,
    predictions), controller)."""
    indices, _ = stream_indices(difficulties, args.windows, args.window, args.calm, args.hardest_beta, seed, drift)
    controller = BudgetController.from_document(document, gflops, budget, args.mindir, window=args.window)
    fixed = replay(pool_logits[:, indices], gflops, start)[:2]
    held = replay(pool_logits[:, indices], gflops, start, controller)[:2]
    return indices, fixed, held, controller


def _other_stream(pool_logits, difficulties, gflops, document, budget, start, args, seed):
    """One line on another stream drawn from the same pool (stream seed ``seed``), with and without drift."""
    line = [f"stream seed {seed}:"]
    for drift in (True, False):
        _, (fixed_exits, _), _, controller = _replay_stream(pool_logits, difficulties, gflops, document, budget,
                                                            start, args, seed, drift)
        errors = np.array([w["error"] for w in controller.summary()["windows"]])
        fixed_errors = per_window(np.asarray(gflops)[fixed_exits], args.window) / controller.target - 1
        line.append(f"{'drift' if drift else 'no drift'}: fixed {100 * fixed_errors.max():+.1f}% at most, controller "
                    f"{int((np.abs(errors) <= 0.05).sum())}/{len(errors)} windows within +/-5% (largest "
                    f"{100 * np.abs(errors).max():.1f}%), {len(controller.switches)} switches;")
    return " ".join(line)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mindir", required=True, help="an exported demo model (with its thresholds)")
    parser.add_argument("--budget", type=float, help="GFLOPs per image (default: 35%% of the last exit's)")
    parser.add_argument("--window", type=int, default=4096, help="the controller's window (BudgetController)")
    parser.add_argument("--windows", type=int, default=12)
    parser.add_argument("--calm", type=int, default=2, help="windows before the drift starts")
    parser.add_argument("--hardest_beta", type=float, default=1.0, help="Beta(1, b) at the stream's end")
    parser.add_argument("--pool", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--more_streams", type=int, default=0,
                        help="replay this many more streams of the same pool (stream seeds after --seed): one line each")
    parser.add_argument("--end_to_end_windows", type=int, default=2, help="windows run end to end (the first decides)")
    parser.add_argument("--deadline_ms", type=float)
    parser.add_argument("--deadline_images", type=int, default=500)
    parser.add_argument("--plot", help="PNG: cost per window, fixed vs controlled")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("dvt_ms").setLevel(logging.WARNING)

    import mindspore as ms
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    engine = EarlyExitEngine(args.mindir, max_batch=256)
    engine.warm_up()
    manifest, gflops = engine.manifest, engine.cumulative_gflops
    document = manifest["thresholds"]
    budget = args.budget or 0.35 * gflops[-1]
    start = select_row(document["budgets"], budget, source=args.mindir)["exit_thresholds"]

    with tempfile.TemporaryDirectory() as work:
        begin = time.perf_counter()
        paths, labels, difficulties = render_pool(work, args.pool, args.seed, manifest["preprocess"]["img_size"])
        preprocess = Preprocessor(manifest["preprocess"])
        pool_logits = engine.every_exit(np.stack([preprocess(p) for p in paths]))
        print(f"pool: {args.pool} demo images rendered and scored at every exit in {time.perf_counter() - begin:.0f} s")

        indices, (fixed_exits, fixed_pred), (held_exits, held_pred), controller = _replay_stream(
            pool_logits, difficulties, gflops, document, budget, start, args, args.seed)
        logits, stream_labels = pool_logits[:, indices], labels[indices]
        target = controller.target
        last_right = logits[-1].argmax(axis=1) == stream_labels
        fixed_cost = per_window(np.asarray(gflops)[fixed_exits], args.window)
        held = controller.summary(correct=held_pred == stream_labels)
        fixed_accuracy = per_window(fixed_pred == stream_labels, args.window) * 100
        last_accuracy = per_window(last_right, args.window) * 100
        mean_difficulty = per_window(difficulties[indices], args.window)

        print(f"\n[replay of recorded exit logits through EarlyExitRun] budget {budget:.4g} GFLOPs: the row "
              f"--budget picks has calibration cost {target:.4g} GFLOPs (the target) and calibration accuracy "
              f"{controller.rows[controller.start_row]['calibration_accuracy']:.2f}%; "
              f"{args.windows} windows of {args.window} images, drift from window {args.calm + 1}")
        print("| window | mean difficulty | fixed: GFLOPs (vs target) | controlled: GFLOPs (vs target) | row | "
              "accuracy: controlled / table for the row / fixed / last exit alone |")
        print("|---|---|---|---|---|---|")
        for w, entry in enumerate(held["windows"]):
            print(f"| {w + 1} | {mean_difficulty[w]:.3f} | {fixed_cost[w]:.4g} ({100 * (fixed_cost[w] / target - 1):+.1f}%) | "
                  f"{entry['gflops']:.4g} ({100 * entry['error']:+.1f}%) | {entry['row']} | {entry['accuracy']:.2f} / "
                  f"{entry['row_calibration_accuracy']:.2f} / {fixed_accuracy[w]:.2f} / {last_accuracy[w]:.2f} |")
        errors = np.array([w["error"] for w in held["windows"]])
        fixed_errors = fixed_cost / target - 1
        print(f"fixed thresholds: largest overshoot {100 * fixed_errors.max():+.1f}% (last window "
              f"{100 * fixed_errors[-1]:+.1f}%); controller: windows within +/-5%: "
              f"{int((np.abs(errors) <= 0.05).sum())}/{len(errors)}, largest error {100 * np.abs(errors).max():.1f}%, "
              f"{len(held['switches'])} switches")
        calm_gap = [w["accuracy"] - w["row_calibration_accuracy"] for w in held["windows"][:args.calm]]
        print(f"accuracy vs the table's prediction for the row in use: before the drift "
              + ", ".join(f"{gap:+.2f}" for gap in calm_gap) + " points; under drift every setting loses accuracy "
              "(the last exit alone too: see its column)")
        # What the table can predict under drift: the accuracy a move along it costs, against the fixed
        # row's on the same images (both lose what the drift costs).
        start_accuracy = controller.rows[controller.start_row]["calibration_accuracy"]
        move_gap = [(w["accuracy"] - fixed_accuracy[i]) - (w["row_calibration_accuracy"] - start_accuracy)
                    for i, w in enumerate(held["windows"])]
        print("accuracy the controller's moves cost (controlled - fixed) minus what the table predicts for them "
              "(row in use - start row), per window: " + ", ".join(f"{gap:+.2f}" for gap in move_gap)
              + f" points; largest {max(abs(g) for g in move_gap):.2f}")

        *_, calm = _replay_stream(pool_logits, difficulties, gflops, document, budget, start, args, args.seed,
                                  drift=False)
        calm_summary = calm.summary()
        calm_errors = [w["error"] for w in calm_summary["windows"]]
        print(f"no drift (Beta(1, 2.5) throughout, same length): {len(calm_summary['switches'])} switches; window "
              f"cost errors {min(calm_errors) * 100:+.1f}% .. {max(calm_errors) * 100:+.1f}%")

        for seed in range(args.seed + 1, args.seed + 1 + args.more_streams):
            print(_other_stream(pool_logits, difficulties, gflops, document, budget, start, args, seed))

        if args.plot:
            windows = np.arange(1, len(fixed_cost) + 1)
            plot_budget_curve(args.plot, {
                "fixed thresholds (--budget)": (windows, fixed_cost),
                "budget controller (--hold_budget)": (windows, [w["gflops"] for w in held["windows"]]),
                "target": (windows, np.full(len(windows), target)),
                "target +5%": (windows, np.full(len(windows), 1.05 * target)),
                "target -5%": (windows, np.full(len(windows), 0.95 * target))}, {},
                f"Demo DVT, inputs harder and harder: cost per window of {args.window} images",
                xlabel="window (time)", ylabel="GFLOPs per image")
            print(f"plot: {args.plot}")

        count = min(args.end_to_end_windows * args.window, len(indices))
        stream_paths = [paths[i] for i in indices[:count]]
        e2e = BudgetController.from_document(document, gflops, budget, args.mindir, window=args.window)
        records, summary = run_inference(engine, stream_paths, stream_labels[:count], start, batch_size=256,
                                         compare_all_exits=False, policy=e2e)
        e2e_exits = np.array([r["exit"] - 1 for r in records])
        same = np.mean(e2e_exits == held_exits[:count])
        print(f"\n[end to end: MindIR engine on the PNG files, --hold_budget {budget:.4g}, batch 256] {count} images: "
              f"window costs " + ", ".join(f"{100 * w['error']:+.1f}%" for w in summary["policy"]["windows"])
              + f" vs target; {len(summary['policy']['switches'])} switches; the same exit as the replay for "
              f"{100 * same:.2f}% of the images; {summary['images_per_second']:.0f} images/s (model part)")

        stream_engine = EarlyExitEngine(args.mindir, max_batch=1)
        stream_engine.warm_up()
        seconds = measure_exit_seconds(stream_engine)
        slow = [1000 * float(np.quantile(s, 0.99, method="higher")) for s in seconds]
        ends = np.cumsum([1000 * np.median(s) for s in seconds])
        deadline = args.deadline_ms or float(sum(slow[:-1]) + slow[-1] / 2)
        policy = DeadlinePolicy(deadline, start, seconds)
        hard = [paths[i] for i in indices[-args.deadline_images:]]
        _, summary = run_inference(stream_engine, hard, labels[indices[-args.deadline_images:]], start, batch_size=1,
                                   compare_all_exits=False, policy=policy)
        result = summary["policy"]
        print(f"\n[end to end: --deadline_ms {deadline:.2f}, batch 1] {len(hard)} images of the hardest window; "
              f"exits end at {', '.join(f'{e:.2f}' for e in ends)} ms (warm-up medians, cumulative); "
              f"each exit's warm-up p99: {', '.join(f'{t:.2f}' for t in slow)} ms")
        print(f"answered early by confidence {100 * result['answered_by_confidence']:.1f}%, by the deadline "
              f"{100 * result['answered_by_deadline']:.1f}%, at the last exit {100 * result['answered_at_last_exit']:.1f}%; "
              f"latency p50 {result['latency_ms']['p50']:.2f} / p95 {result['latency_ms']['p95']:.2f} / p99 "
              f"{result['latency_ms']['p99']:.2f} ms (p99 - D = {result['p99_over_deadline_ms']:+.2f} ms, "
              f"{100 * result['over_deadline_share']:.1f}% over D); accuracy {summary['accuracy']:.2f}%; exits answering "
              f"{', '.join(f'{100 * share:.1f}%' for share in result['exit_shares'])}; exit time forecasts at the end "
              f"{', '.join(f'{ms:.2f}' for ms in result['exit_ms_forecast_at_end'])} ms")


if __name__ == "__main__":
    main()
