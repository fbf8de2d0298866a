"""The synthetic demo dataset: determinism, layout, reuse, difficulty."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from dvt_ms.demo import dataset as demo_data
from dvt_ms.demo.dataset import CLASS_NAMES, DatasetMismatchError, generate_image, write_dataset
from dvt_ms.errors import ConfigError

SMALL = dict(num_classes=3, train_per_class=4, val_per_class=2, image_size=32)


def _image_bytes(root):
    """Relative path -> file bytes of every PNG under ``root``."""
    return {str(path.relative_to(root)): path.read_bytes() for path in root.rglob("*.png")}


def test_class_names_are_sorted_so_folder_order_is_index_order():
    assert list(CLASS_NAMES) == sorted(CLASS_NAMES)
    assert len(set(CLASS_NAMES)) == len(CLASS_NAMES) >= 6


def test_same_seed_gives_identical_images_and_different_seed_different():
    def render(seed):
        return generate_image(2, 0.5, np.random.default_rng(seed), 48).tobytes()

    assert render(7) == render(7)
    assert render(7) != render(8)
    image = generate_image(0, 0.0, np.random.default_rng(0), 48)
    assert image.mode == "RGB" and image.size == (48, 48)


def test_invalid_arguments_are_rejected():
    with pytest.raises(ValueError):
        generate_image(len(CLASS_NAMES), 0.5, np.random.default_rng(0), 32)
    with pytest.raises(ValueError):
        generate_image(0, 1.5, np.random.default_rng(0), 32)


def test_layout_counts_and_difficulty_file(tmp_path):
    root = tmp_path / "demo"
    manifest = write_dataset(root, seed=3, **SMALL)

    assert manifest["class_names"] == list(CLASS_NAMES[:3])
    for split, per_class in (("train", 4), ("val", 2)):
        assert sorted(p.name for p in (root / split).iterdir()) == list(CLASS_NAMES[:3])
        for class_name in CLASS_NAMES[:3]:
            files = sorted((root / split / class_name).glob("*.png"))
            assert len(files) == per_class
            with Image.open(files[0]) as image:
                assert image.size == (32, 32) and image.mode == "RGB"

    difficulties = json.loads((root / "difficulty.json").read_text())
    assert set(difficulties) == set(_image_bytes(root))
    assert all(0.0 <= value <= 1.0 for value in difficulties.values())
    assert json.loads((root / "dataset.json").read_text()) == manifest
    assert os.listdir(tmp_path) == ["demo"]  # the staging directory is gone


def test_dataset_is_deterministic_by_seed(tmp_path):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        write_dataset(tmp_path / name, seed=seed, **SMALL)
    first, again, other = (_image_bytes(tmp_path / name) for name in "abc")
    assert first == again
    assert first.keys() == other.keys() and first != other


def test_existing_dataset_is_reused_and_mismatch_names_the_root(tmp_path):
    root = tmp_path / "demo"
    manifest = write_dataset(root, seed=0, **SMALL)
    marker = root / "train" / CLASS_NAMES[0] / f"{CLASS_NAMES[0]}_00000.png"
    written_at = marker.stat().st_mtime_ns

    assert write_dataset(root, seed=0, **SMALL) == manifest
    assert marker.stat().st_mtime_ns == written_at  # reused, not regenerated

    with pytest.raises(DatasetMismatchError, match=str(root)) as error:
        write_dataset(root, seed=1, **SMALL)
    assert "seed" in str(error.value)


def test_foreign_directory_is_refused_and_empty_one_is_filled(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DatasetMismatchError, match=str(foreign)):
        write_dataset(foreign, **SMALL)
    assert (foreign / "notes.txt").read_text() == "mine"

    empty = tmp_path / "empty"
    empty.mkdir()
    write_dataset(empty, **SMALL)
    assert (empty / "dataset.json").is_file()


def test_interrupted_run_leaves_no_dataset_behind(tmp_path, monkeypatch):
    calls = []

    def failing_generate(*args):
        calls.append(args)
        if len(calls) > 5:
            raise KeyboardInterrupt
        return generate_image(*args)

    monkeypatch.setattr(demo_data, "generate_image", failing_generate)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(tmp_path / "demo", **SMALL)
    assert os.listdir(tmp_path) == []


def test_cli_reports_a_mismatch_with_exit_code_2(tmp_path, capsys):
    root = str(tmp_path / "demo")
    args = [root, "--train_per_class", "1", "--val_per_class", "1", "--image_size", "16"]
    assert demo_data.main(args) == 0
    assert (tmp_path / "demo" / "dataset.json").is_file()
    assert demo_data.main(args + ["--seed", "5"]) == 2
    assert root in capsys.readouterr().err


def _statistics(difficulty, samples_per_class=6, size=48):
    """Mean visible object area fraction and mean background roughness at one difficulty."""
    areas, roughness = [], []
    for class_index in range(len(CLASS_NAMES)):
        for sample in range(samples_per_class):
            rng = np.random.default_rng([class_index, sample])
            image, mask = demo_data.generate_sample(class_index, difficulty, rng, size)
            pixels = np.asarray(image, dtype=np.float32)
            areas.append(mask.mean())
            # Neighbouring-pixel differences outside the object: noise plus clutter.
            step = np.abs(np.diff(pixels, axis=1)).mean(axis=2)
            outside = (mask[:, 1:] == 0) & (mask[:, :-1] == 0)
            roughness.append(step[outside].mean())
    return np.mean(areas), np.mean(roughness)


def test_difficulty_shrinks_the_object_and_roughens_the_background():
    easy_area, easy_roughness = _statistics(0.0)
    hard_area, hard_roughness = _statistics(1.0)
    assert easy_area > 2.5 * hard_area
    assert hard_roughness > 3 * easy_roughness


def test_object_mask_marks_where_the_object_was_drawn():
    image, mask = demo_data.generate_sample(0, 0.0, np.random.default_rng(0), 64)
    pixels = np.asarray(image, dtype=np.float32)
    assert mask.shape == (64, 64) and 0.0 <= mask.min() and mask.max() <= 1.0
    inside, outside = pixels[mask == 1].mean(axis=0), pixels[mask == 0].mean(axis=0)
    assert np.abs(inside - outside).max() > 40  # an easy image has a high-contrast object


def test_a_custom_profile_is_deterministic_and_differs_from_the_default():
    harder = demo_data.DifficultyProfile(radius=(0.30, 0.15), noise=(4.0, 20.0))

    def render(profile, seed):
        return generate_image(3, 0.6, np.random.default_rng(seed), 48, profile).tobytes()

    assert render(harder, 5) == render(harder, 5)
    assert render(harder, 5) != render(demo_data.DEFAULT_PROFILE, 5)


def test_profile_is_part_of_the_manifest_and_another_profile_is_a_mismatch(tmp_path):
    root = tmp_path / "demo"
    manifest = write_dataset(root, **SMALL)
    assert manifest["difficulty_profile"] == demo_data.DEFAULT_PROFILE.as_dict()
    assert json.loads((root / "dataset.json").read_text()) == manifest  # pairs survive JSON as lists
    with pytest.raises(DatasetMismatchError, match="difficulty_profile"):
        write_dataset(root, profile=demo_data.DifficultyProfile(clutter=9.0), **SMALL)


def test_difficulty_is_drawn_from_the_profiles_beta_distribution():
    for a, b in ((1.0, 2.5), (2.0, 2.0)):
        profile = demo_data.DifficultyProfile(difficulty_beta=(a, b))
        draws = [demo_data._draw_difficulty(profile, np.random.default_rng([7, i])) for i in range(4000)]
        assert np.mean(draws) == pytest.approx(a / (a + b), abs=0.01)
        assert np.var(draws) == pytest.approx(a * b / ((a + b) ** 2 * (a + b + 1)), rel=0.1)


def test_visible_object_shrinks_steadily_with_difficulty():
    areas = [_statistics(d, samples_per_class=4)[0] for d in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert all(earlier > later for earlier, later in zip(areas, areas[1:])), areas


def _visible_area(profile, difficulty, count=24, size=48):
    return np.mean([demo_data.generate_sample(i % len(CLASS_NAMES), difficulty, np.random.default_rng([3, i]),
                                              size, profile)[1].mean() for i in range(count)])


def test_smaller_hard_radius_and_more_occlusion_make_hard_images_harder():
    default = demo_data.DEFAULT_PROFILE
    smaller = demo_data.DifficultyProfile(radius=(default.radius[0], default.radius[1] * 0.7))
    occluded = demo_data.DifficultyProfile(occlusion=1.0)
    assert _visible_area(smaller, 1.0) < 0.6 * _visible_area(default, 1.0)
    assert _visible_area(occluded, 1.0) < _visible_area(default, 1.0)
    # At difficulty 0 only the easy end counts: the hard-end change leaves the images alone.
    assert _visible_area(smaller, 0.0) == _visible_area(default, 0.0)


def test_pixel_noise_follows_the_profile_from_easy_to_hard():
    """With the same seed, an image differs from its noise-free twin by exactly the added noise."""
    noisy = demo_data.DifficultyProfile(noise=(3.0, 12.0))
    clean = demo_data.DifficultyProfile(noise=(0.0, 0.0))
    for difficulty in (0.0, 0.5, 1.0):
        residuals = []
        for i in range(6):
            images = [np.asarray(generate_image(i, difficulty, np.random.default_rng([9, i]), 48, p), np.float32)
                      for p in (noisy, clean)]
            residual = images[0] - images[1]
            unclipped = (images[1] > 40) & (images[1] < 215)  # far from 0 and 255, clipping is rare
            residuals.append(residual[unclipped])
        expected = 3.0 + (12.0 - 3.0) * difficulty
        assert np.std(np.concatenate(residuals)) == pytest.approx(expected, rel=0.08)


def _mean_offset_from_centre(profile, difficulty, count=24, size=48):
    """Mean distance (pixels) of the visible object's centroid from the image centre."""
    offsets = []
    for i in range(count):
        _, mask = demo_data.generate_sample(i % len(CLASS_NAMES), difficulty, np.random.default_rng([4, i]),
                                            size, profile)
        ys, xs = np.indices(mask.shape) + 0.5
        centroid = np.array([(xs * mask).sum(), (ys * mask).sum()]) / mask.sum()
        offsets.append(np.linalg.norm(centroid - size / 2))
    return np.mean(offsets)


def test_lower_placement_exponent_moves_objects_off_centre_sooner():
    early = demo_data.DifficultyProfile(placement_exponent=0.5, occlusion=0.0)
    linear = demo_data.DifficultyProfile(placement_exponent=1.0, occlusion=0.0)
    assert _mean_offset_from_centre(early, 0.25) > 1.3 * _mean_offset_from_centre(linear, 0.25)
    # both reach the whole frame at difficulty 1
    assert _mean_offset_from_centre(early, 1.0) == pytest.approx(_mean_offset_from_centre(linear, 1.0))


def test_bad_dataset_parameters_are_all_named_at_once_with_the_nearest_name(tmp_path):
    with pytest.raises(ConfigError) as raised:
        write_dataset(tmp_path / "demo", num_classes=0, image_size=4, train_per_class=-1, val_per_clas=3)
    message = str(raised.value)
    for expected in ("num_classes must be >= 1, got 0", "image_size must be >= 8, got 4",
                     "train_per_class must be >= 0, got -1", "unknown key 'val_per_clas'; did you mean 'val_per_class'?"):
        assert expected in message
    assert not (tmp_path / "demo").exists()
