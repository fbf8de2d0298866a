"""A run folder belongs to one training run: a new run never overwrites, deletes or mixes with another.

``output_dir`` holds one run: its checkpoints (``step_*.ckpt``, ``best.ckpt``), ``config.yaml``,
``log.jsonl`` and ``run.json`` (the run's id, when it was created and every start since).

- A fresh run (no ``resume``) into a folder holding a run refuses to start and names the choices:
  ``resume=auto`` continues that run, another ``output_dir`` keeps both, ``overwrite=true`` moves
  the old run aside to ``<output_dir>.old-<time>`` first (nothing is ever deleted).
- ``resume=auto`` continues from the folder's newest ``step_*.ckpt`` that can be read (the trainer
  falls back past damaged ones, naming each); with none it starts fresh (a run stopped before its
  first checkpoint), unless a ``best.ckpt`` would be overwritten.
- ``resume=PATH`` inside the folder must be its newest readable checkpoint (continuing an older one
  would overwrite the later ones); from elsewhere it starts this folder, which must not hold a run.
- Damaged checkpoints passed over by a resume are kept, renamed ``<name>.unreadable``.
- A resume continues the run as recorded in its ``config.yaml`` (``resume_changes`` says which keys
  may change, docs/training.md).
- A run that stops before training its first step leaves no run behind: a fresh start's records
  are withdrawn, so the folder does not count as holding a run.
- While it trains, a run holds a lock on its folder, so a second run cannot start in it.

``inspect_run_folder`` decides, reading only (every rank, before any data or model work);
``RunFolder.claim`` acts, on rank 0 when training starts: lock, move an old run aside, remove
temporaries that killed writers left, write ``run.json`` and ``config.yaml``.
"""
import dataclasses
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import uuid
from typing import Optional

import yaml

from ..checkpoint.store import UnreadableCheckpointError, read_checkpoint
from ..config import OPTIONS, SCHEMA, load_config
from ..errors import ConfigError, OutputPathError
from ..fileio import atomic_write_text, check_output_dir, remove_stale_temporaries
from ..runrecord import RUN_CONFIG_NAME, RUN_RECORD_NAME
from ..shipped_configs import config_path
from .checkpoints import BEST_NAME, CheckpointManager, step_of

__all__ = ["RUN_FILE_NAMES", "RunFolder", "inspect_run_folder", "resume_changes", "start_config"]

_logger = logging.getLogger(__name__)

RUN_NAME = RUN_RECORD_NAME
CONFIG_NAME = RUN_CONFIG_NAME
LOG_NAME = "log.jsonl"
RUN_FILE_NAMES = (BEST_NAME, CONFIG_NAME, LOG_NAME, RUN_NAME)   # besides step_*.ckpt
_LOCK_NAME = ".dvt-run.lock"


def _now():
    return datetime.datetime.now().astimezone()


@dataclasses.dataclass
class RunFolder:
    """What starting a run in ``path`` means (decided by ``inspect_run_folder``)."""

    path: str
    resume_path: Optional[str]   # checkpoint to continue from; None = start fresh
    move_aside: bool             # the folder's old run goes to <path>.old-<time> first
    contents: tuple              # run files found there (checkpoints first)
    resume: Optional[str] = None
    overwrite: bool = False
    unreadable: tuple = ()       # damaged checkpoints the resume passes over: renamed aside by ``claim``
    _lock_fd: Optional[int] = None
    _created: bool = False       # this start created the run's records (``withdraw`` may remove them)

    def _same_decision(self, other):
        return (self.resume_path, self.move_aside, self.contents) == \
            (other.resume_path, other.move_aside, other.contents)

    def claim(self, config_values, start_record):
        """Rank 0, as training starts: lock the folder, check nothing changed since the inspection,
        move an old run aside, remove stale temporaries, record the start in run.json and write
        config.yaml. Returns the run id."""
        if os.path.isdir(self.path):
            self._lock()
            now = inspect_run_folder(self.path, self.resume, self.overwrite)
            if not self._same_decision(now):
                self.release()
                raise OutputPathError(f"{self.path} changed while this run was starting (another run wrote "
                                      "to it); start again")
        if self.move_aside:
            self.release()
            aside = _aside_name(self.path)
            os.replace(self.path, aside)
            _logger.warning("moved the previous run in %s to %s (overwrite=true)", self.path, aside)
        os.makedirs(self.path, exist_ok=True)
        if self._lock_fd is None:
            self._lock()
        remove_stale_temporaries(self.path)
        for path in self.unreadable:
            os.replace(path, path + ".unreadable")
            _logger.warning("kept the unreadable checkpoint %s as %s.unreadable", path, os.path.basename(path))
        self._created = not os.path.isfile(os.path.join(self.path, RUN_NAME))
        run_id = self._record_start(start_record)
        values = {key: list(value) if isinstance(value, tuple) else value for key, value in config_values.items()}
        atomic_write_text(os.path.join(self.path, CONFIG_NAME), yaml.safe_dump(values, sort_keys=False))
        return run_id

    def _record_start(self, start_record):
        path = os.path.join(self.path, RUN_NAME)
        record = None
        if os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as handle:
                    record = json.load(handle)
            except (OSError, ValueError):
                _logger.warning("%s is unreadable; recording this run anew", path)
        if not isinstance(record, dict) or "run_id" not in record:
            record = {"run_id": uuid.uuid4().hex[:12], "created": _now().isoformat(timespec="seconds"), "starts": []}
        record.setdefault("starts", []).append({"time": _now().isoformat(timespec="seconds"),
                                                "host": socket.gethostname(), **start_record})
        atomic_write_text(path, json.dumps(record, indent=1))
        return record["run_id"]

    def _lock(self):
        lock_path = os.path.join(self.path, _LOCK_NAME)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise OutputPathError(f"{self.path} is in use by another training run ({owner}); wait for it to "
                                  "end or choose another output_dir") from None
        except OSError as error:
            if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                os.close(fd)
                raise
            _logger.warning("cannot lock %s (%s): make sure no other run uses this folder", self.path,
                            error.strerror)
            os.close(fd)
            return
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {_now():%Y-%m-%d %H:%M}\n".encode())
        self._lock_fd = fd

    def release(self):
        if self._lock_fd is not None:
            os.close(self._lock_fd)   # closing drops the lock
            self._lock_fd = None

    def withdraw(self, extra_names=()):
        """After a start that trained no step: remove the records this start created (run.json,
        config.yaml, log.jsonl and ``extra_names``), so the folder does not hold a run nobody
        trained. A folder that held a run before this start, or holds a checkpoint, is left as it is."""
        contents, _ = _run_contents(self.path)
        if not self._created or any(name.endswith(".ckpt") for name in contents):
            return
        for name in (RUN_NAME, CONFIG_NAME, LOG_NAME, *extra_names):
            path = os.path.join(self.path, name)
            if os.path.isfile(path):
                os.remove(path)
        self._created = False
        _logger.info("no step was trained: %s does not keep this run's records", self.path)

    def recorded_config(self):
        """The config values the run in this folder recorded (``config.yaml``), or None."""
        return _read_yaml(os.path.join(self.path, CONFIG_NAME))

    def last_start(self):
        """The latest start recorded in ``run.json`` (a dict), or None."""
        try:
            with open(os.path.join(self.path, RUN_NAME), encoding="utf-8") as handle:
                starts = json.load(handle).get("starts") or []
        except (OSError, ValueError, AttributeError):
            return None
        return starts[-1] if starts and isinstance(starts[-1], dict) else None


def _read_yaml(path):
    try:
        with open(path, encoding="utf-8") as handle:
            values = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError):
        return None
    return values if isinstance(values, dict) else None


def _aside_name(path):
    base = f"{os.path.abspath(path).rstrip(os.sep)}.old-{_now():%Y%m%d-%H%M%S}"
    candidate, index = base, 1
    while os.path.lexists(candidate):
        index += 1
        candidate = f"{base}-{index}"
    return candidate


def _run_contents(path):
    """The run files in ``path``: periodic checkpoints (oldest first), then the other run files."""
    checkpoints = CheckpointManager(path, keep=1).periodic_checkpoints()
    others = [name for name in RUN_FILE_NAMES if os.path.isfile(os.path.join(path, name))]
    return tuple(os.path.basename(p) for p in checkpoints) + tuple(others), checkpoints


def _describe(contents):
    checkpoints = [name for name in contents if name.startswith("step_")]
    parts = []
    if checkpoints:
        more = f" and {len(checkpoints) - 1} earlier checkpoint(s)" if len(checkpoints) > 1 else ""
        parts.append(checkpoints[-1] + more)
    parts += [name for name in contents if not name.startswith("step_")]
    return ", ".join(parts)


def _choices(path):
    return (f"continue that run with resume=auto, start this one in another output_dir, or pass overwrite=true "
            f"to move the old run to {os.path.abspath(path).rstrip(os.sep)}.old-<date>-<time> first")


def _unreadable_because(path):
    """Why the checkpoint at ``path`` cannot be read, or None if it can."""
    try:
        read_checkpoint(path)
    except UnreadableCheckpointError as error:
        return str(error)
    return None


# What a resume may change (docs/training.md), by the config schema's sections: keys that decide
# which samples each step sees or what the checkpoints hold are refused; the recipe (augmentation,
# optimisation, schedule, drop rates) may change and every change is recorded (run.json, log.jsonl);
# where and how the run executes and reports is free.
_FIXED_ON_RESUME = tuple(option.name for option in SCHEMA if option.section == "model"
                         and option.name not in ("pretrained", "drop_rate", "drop_path_rate")) + (
    "dataset", "train_split", "class_names", "holdout_per_class", "batch_size", "seed", "opt", "ema")
_RECORDED_ON_RESUME = ("drop_rate", "drop_path_rate") + tuple(
    option.name for option in SCHEMA if option.section in ("augmentation", "optimisation", "schedule")
    and option.name not in _FIXED_ON_RESUME)


def _comparable(value):
    return list(value) if isinstance(value, tuple) else value


def resume_changes(recorded, config):
    """The recipe values a resume changes, ``{key: [recorded, now]}``, to be recorded; a change to a key
    that decides the sample order or the checkpoint's contents is a ``ConfigError`` naming each."""
    if not recorded:
        return {}
    values = config.as_dict()
    changed = {key: [recorded[key], _comparable(values[key])] for key in _FIXED_ON_RESUME + _RECORDED_ON_RESUME
               if key in recorded and recorded[key] != _comparable(values[key])}
    refused = [key for key in _FIXED_ON_RESUME if key in changed]
    if refused:
        listed = ", ".join(f"{key} {changed[key][0]!r} -> {changed[key][1]!r}" for key in refused)
        raise ConfigError(f"resume: {listed} would change the run recorded in "
                          f"{os.path.join(config.output_dir, CONFIG_NAME)} (the samples each step sees, or what "
                          "its checkpoints hold); keep the recorded values, or start a new run from its weights "
                          "with pretrained=<checkpoint> in another output_dir")
    return changed


# Keys that belong to one start, not to the run: a resume takes them from its own command line.
_PER_START = ("resume", "overwrite", "max_steps", "output_dir")


def start_config(config_file, command_line):
    """The ``TrainConfig`` of a start from the command line: ``config_file`` (or None) with the
    ``command_line`` overrides; but a resume into a folder holding a recorded run continues that run
    as recorded (its ``config.yaml``) with only the command line's values changed, the per-start keys
    (resume, overwrite, max_steps, output_dir) taken from the file and the command line as usual."""
    in_file = _read_yaml(config_path(config_file)) if config_file else None
    in_file = in_file or {}

    def given(key):
        return command_line.get(key, in_file.get(key, OPTIONS[key].default))

    recorded_path = os.path.join(str(given("output_dir")), CONFIG_NAME)
    if not given("resume") or _read_yaml(recorded_path) is None:
        return load_config(config_file, command_line)
    resumed = load_config(recorded_path, {**{key: given(key) for key in _PER_START}, **command_line})
    values = resumed.as_dict()
    unused = sorted(key for key, value in in_file.items() if key in values and key not in command_line
                    and key not in _PER_START and _comparable(values[key]) != value)
    _logger.info("resume: continuing the run recorded in %s, changing only %s%s", recorded_path,
                 ", ".join(f"{key}={value}" for key, value in command_line.items() if key not in _PER_START)
                 or "nothing", f" ({config_file}'s other values of {', '.join(unused)} are not used)" if unused else "")
    return resumed


def inspect_run_folder(path, resume, overwrite):
    """Decide what starting in ``path`` means, or raise ``OutputPathError`` saying why not and what
    to do instead. Reads only."""
    check_output_dir(path)
    contents, checkpoints = _run_contents(path) if os.path.isdir(path) else ((), [])
    folder = dict(path=path, contents=contents, resume=resume, overwrite=bool(overwrite))
    if resume == "auto":
        if checkpoints:
            return RunFolder(resume_path=checkpoints[-1], move_aside=False, **folder)
        if BEST_NAME in contents and not overwrite:
            raise OutputPathError(f"resume=auto: {path} has {BEST_NAME} but no step_*.ckpt to continue from, and "
                                  f"a fresh run would overwrite {BEST_NAME}; start in another output_dir, or pass "
                                  f"overwrite=true to move the old run to {path}.old-<date>-<time> first")
        # A run stopped before its first checkpoint: start it again here (the log continues).
        return RunFolder(resume_path=None, move_aside=BEST_NAME in contents, **folder)
    if resume is not None:
        inside = os.path.dirname(os.path.abspath(resume)) == os.path.abspath(path)
        if inside:
            problems = {p: _unreadable_because(p) for p in checkpoints if step_of(p) > step_of(resume)}
            readable = [p for p, problem in problems.items() if problem is None]
            if readable:
                raise OutputPathError(
                    f"resume={resume}: {path} has later checkpoints ({os.path.basename(readable[-1])}) that "
                    f"continuing from {os.path.basename(resume)} here would overwrite; continue the newest with "
                    "resume=auto, or continue this one into another output_dir")
            for damaged, problem in problems.items():
                _logger.warning("resume: passing over the later checkpoint %s: %s", damaged, problem)
            return RunFolder(resume_path=resume, move_aside=False, unreadable=tuple(problems), **folder)
    if contents and not overwrite:
        raise OutputPathError(f"output_dir {path} holds another run ({_describe(contents)}); a new run would "
                              f"overwrite or mix with it: {_choices(path)}")
    return RunFolder(resume_path=resume, move_aside=bool(contents), **folder)
