"""The output folder: the one place that knows its layout, lists what it holds, and reads and writes its files.

    OUTPUT/                          one comparison (one seed), or several seeds:
      summary.md, report.md, report.html, report_files/, trackers/, .peftbench.lock
      results.csv, results.jsonl     every model x method x seed as one row (export.py)
      zero-shot/, lead-3/,           reference rows (MethodDir each): the base model before any method (also every
      majority-class/                method's epoch 0), each source's first three sentences (summarisation), the
                                     training split's most frequent label (classification)
      <method>/                      one method at one seed (MethodDir)
        metrics.json predictions.jsonl log.jsonl curves.png adapter/ (with README.md, the model card)
        fingerprint.json failed.json checkpoint/
        trials/<trial>/              with --search: one grid point each (TrialDir), e.g. lr-5e-04 or lr-5e-04_r-8:
          trial.json log.jsonl fingerprint.json failed.json checkpoint/     trained and validated, never tested
      seed-<s>/                      with several seeds: a one-seed comparison each, laid out as OUTPUT above

Every path handed out is checked to stay inside OUTPUT (no name holding a path, no symlink leading out), every file
and directory is written atomically, a write that fails on a full disk says so, and one run at a time holds OUTPUT.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from peftbench.config.typecheck import check_fields
from peftbench.errors import ConfigError, no_space
from peftbench.store.records import MethodResult
from peftbench.task.presets import LEAD_3, MAJORITY  # the trivial references' names, owned by the tasks

SUMMARY_FILE = "summary.md"
VERDICT_FILE = "verdict.json"  # the verdict as data, beside summary.md
TRACKERS_DIR = "trackers"
ZERO_SHOT = "zero-shot"  # the base model before any method: every method's epoch 0, and a reference on the test split
TRIVIAL = (LEAD_3, MAJORITY)  # references without a model: a method that does not beat them has learned nothing useful
REFERENCES = (ZERO_SHOT, *TRIVIAL)  # reference rows, which cost no training
REPORT_MARKDOWN, REPORT_HTML, REPORT_FILES = "report.md", "report.html", "report_files"
RESERVED = (*REFERENCES, TRACKERS_DIR, REPORT_FILES)  # directories of a comparison that are not methods
EXPORTS = {"csv": "results.csv", "json": "results.jsonl"}  # one row per model x method x seed
LOCK_FILE = ".peftbench.lock"
METRICS_FILE = "metrics.json"
FAILED_FILE = "failed.json"
PREDICTIONS_FILE = "predictions.jsonl"
RETENTION_TASK_FILE = "retention_task.jsonl"  # predictions.jsonl's rows for the retention task's test examples
FINGERPRINT_FILE = "fingerprint.json"
CHECKPOINT_DIR = "checkpoint"
ADAPTER_DIR = "adapter"
CURVES_FILE = "curves.png"
LOG_FILE = "log.jsonl"  # one line per optimizer step and per evaluation, as training goes
CARD_FILE = "README.md"  # the model card, in the adapter folder (where the Hub and peft look for it)
TRIALS_DIR = "trials"  # with --search: the method's trials, a directory each (TrialDir)
TRIAL_FILE = "trial.json"  # a trial's validation figures so far (it is never tested)
METHOD_FILES = (
    METRICS_FILE,
    FAILED_FILE,
    PREDICTIONS_FILE,
    RETENTION_TASK_FILE,
    FINGERPRINT_FILE,
    CHECKPOINT_DIR,
    ADAPTER_DIR,
    CURVES_FILE,
    LOG_FILE,
    TRIALS_DIR,
)
FOLDERS = (CHECKPOINT_DIR, ADAPTER_DIR, TRIALS_DIR)  # METHOD_FILES that are folders
# What makes a directory a method's results, finished or failed.
METHOD_MARKERS = (METRICS_FILE, FAILED_FILE, PREDICTIONS_FILE, ADAPTER_DIR)
CORRUPT_SUFFIX = ".corrupt"  # an unreadable file or checkpoint, set aside under its name plus this
# Files and directories being written (write_files, write_directory); never read, and what a killed write leaves is
# removed by the next run or report (sweep_temporaries).
STAGING_PREFIX = ".peftbench-tmp-"
FILES_KEY = "files"  # metrics.json's checksums of the files its result stands on (MethodDir.write_result)
# What reading a result file that is truncated, garbled or of another shape raises.
UNREADABLE = (OSError, ValueError, TypeError, KeyError, AttributeError)


# ---------------------------------------------------------------------------------------------- writing


def writing(path: Path) -> AbstractContextManager[None]:
    """Around a write into path: a full disk becomes errors.DiskFull naming path (every file here is written
    atomically, so what was finished before is whole)."""
    return no_space(path, "finished results are intact")


def write_files(files: dict[Path, str | bytes]) -> None:
    """Write each file atomically (readers see its old content or its new one, never half of it), and replace none
    until every one is written: a full disk leaves all the old files and no temporary one."""
    staged: list[tuple[str, Path]] = []
    try:
        for path, content in files.items():
            with writing(path):
                path.parent.mkdir(parents=True, exist_ok=True)
                handle, temp = tempfile.mkstemp(prefix=f"{STAGING_PREFIX}{path.name}.", dir=path.parent)
                staged.append((temp, path))
                with os.fdopen(handle, "wb") as stream:
                    stream.write(content.encode("utf-8") if isinstance(content, str) else content)
                    stream.flush()
                    os.fsync(stream.fileno())  # the rename below must not land before the data (power loss)
                os.chmod(temp, 0o644)  # mkstemp makes owner-only files; results are meant to be read and served
        for temp, path in staged:
            os.replace(temp, path)
    finally:
        for temp, _ in staged:
            if os.path.exists(temp):
                os.unlink(temp)


def write_atomic(path: Path, content: str | bytes) -> None:
    """Write a file so that readers see the old content or the new one, never half of it."""
    write_files({path: content})


def write_directory(path: Path, fill: Callable[[Path], None]) -> None:
    """Build a directory with fill(staging) in a temporary sibling, then rename it to path (replacing an older one):
    readers see a whole directory or none, and a failure (a full disk included) leaves no temporary behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{path.name}-", dir=path.parent))
    try:
        os.chmod(staging, 0o755)  # mkdtemp makes owner-only directories; an adapter is meant to be shared
        with writing(path):
            fill(staging)
        remove(path)
        staging.rename(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def remove(path: Path) -> None:
    """Delete a file or a directory tree (a symlink itself, never what it points to)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def set_aside(path: Path) -> Path:
    """Rename an unreadable file or directory to <name>.corrupt (replacing an older one), out of the way of readers
    and of the next write; returns its new path."""
    target = inside(path.parent, path.name + CORRUPT_SUFFIX, "set-aside copy")
    remove(target)
    path.rename(target)
    return target


# ---------------------------------------------------------------------------------------------- paths


def inside(parent: Path, name: str, what: str) -> Path:
    """parent/name, refused unless it resolves to a direct child of parent: no name holding a path, and no symlink
    leading elsewhere (parent itself was checked the same way, up to OUTPUT)."""
    path = parent / name
    if path.resolve().parent == parent.resolve():
        return path
    if path.is_symlink():
        raise ConfigError(
            f"{what} {str(path)!r} is a symlink leading out of {str(parent)!r}; peftbench writes only inside "
            "--output: remove the link, or use another --output"
        )
    raise ConfigError(f"{what} {str(path)!r} would lie outside {str(parent)!r}")


def no_links_out(root: Path, what: str) -> Path:
    """root, refused if a symlink anywhere under it leads out of it (for folders that libraries write into)."""
    top = root.resolve()
    for folder, names, files in os.walk(root):
        for name in names + files:
            link = Path(folder) / name
            if link.is_symlink() and not link.resolve().is_relative_to(top):
                raise ConfigError(
                    f"{what} {str(link)!r} is a symlink leading out of {str(root)!r}; peftbench writes only inside "
                    "--output: remove the link, or use another --output"
                )
    return root


# ---------------------------------------------------------------------------------------------- the lock


def _holder(handle: int) -> str:
    """Who holds the lock, as its lock file says (it writes its PID and start time right after taking it)."""
    for _ in range(20):
        try:
            holder = json.loads(os.pread(handle, 4096, 0))
            return f"PID {holder['pid']}, started {holder['started']}"
        except (ValueError, KeyError, TypeError):
            time.sleep(0.05)
    return "PID unknown"


@contextmanager
def locked(output: Path) -> Iterator[None]:
    """Hold OUTPUT for one run: a second run on it is refused (ConfigError naming the holder's PID and start time).

    The lock is the kernel's (flock) on OUTPUT/.peftbench.lock: it ends with the holding process however that ends,
    so a lock left by a killed run is never in the way. Reading (peftbench report) needs no lock.
    """
    path = output / LOCK_FILE
    try:
        with writing(path):
            handle = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            inside(output, LOCK_FILE, "lock file")
        raise ConfigError(f"cannot create the lock file {str(path)!r}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"--output {str(output)!r} is in use by another peftbench run ({_holder(handle)}); wait for it to "
                "end, or use another --output"
            ) from None
        started = datetime.now().astimezone().isoformat(sep=" ", timespec="seconds")
        with writing(path):
            os.ftruncate(handle, 0)
            os.pwrite(handle, json.dumps({"pid": os.getpid(), "started": started}).encode(), 0)
        sweep_temporaries(output)
        yield
    finally:
        os.close(handle)  # releases the lock


def sweep_temporaries(output: Path) -> list[Path]:
    """Remove what writes that were killed midway left under OUTPUT (STAGING_PREFIX files and folders), and return
    it. Only while holding OUTPUT: a live run's temporaries are in use."""
    left = []
    for folder, names, files in os.walk(output):  # never through a symlink
        left += [Path(folder) / name for name in names + files if name.startswith(STAGING_PREFIX)]
        names[:] = [name for name in names if not name.startswith(STAGING_PREFIX)]
    for path in left:
        remove(path)
    return left


def sweep_if_idle(output: Path) -> None:
    """sweep_temporaries where no run holds OUTPUT now (peftbench report, which needs no lock to read); nothing in a
    folder without peftbench's lock file."""
    path = output / LOCK_FILE
    if path.is_symlink() or not path.is_file():
        return
    handle = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        sweep_temporaries(output)
    except BlockingIOError:
        pass  # a run holds it, and sweeps when it starts
    finally:
        os.close(handle)


REPORT_NAMES = {VERDICT_FILE, REPORT_MARKDOWN, REPORT_HTML, REPORT_FILES, LOCK_FILE, *EXPORTS.values()}


def layout_names(seeds: list[int], methods: list[str]) -> set[str]:
    """The names a run of methods at seeds writes directly into OUTPUT (peftbench report: REPORT_NAMES)."""
    top = {SUMMARY_FILE, *REPORT_NAMES}
    if len(seeds) > 1:
        return top | {f"seed-{seed}" for seed in seeds}
    return top | {TRACKERS_DIR, *REFERENCES, *methods}


def check_owner(output: Path, names: set[str], others_allowed: bool) -> None:
    """Refuse (ConfigError) an OUTPUT holding files that peftbench did not write, where writing names (layout_names)
    could touch them: a folder that is not empty and holds nothing of peftbench's (its lock file, which every run
    and report leaves: claim), unless others_allowed; even then, one holding any of names (peftbench replaces and
    deletes only what it wrote)."""
    if not output.is_dir() or (output / LOCK_FILE).exists():
        return
    present = sorted(path.name for path in output.iterdir())
    if not present:
        return
    shown = ", ".join(present[:8]) + (f" and {len(present) - 8} more" if len(present) > 8 else "")
    if not others_allowed:
        raise ConfigError(
            f"--output {str(output)!r} is not empty and holds no peftbench run ({shown}); peftbench never writes "
            "among files it did not write: give a new or empty folder, or --allow-other-files to write beside them"
        )
    clash = sorted(set(present) & names)
    if clash:
        raise ConfigError(
            f"--output {str(output)!r} holds {', '.join(clash)}, which peftbench did not write and would write: "
            "with --allow-other-files it still replaces nothing of yours; move them, or use another --output"
        )


def claim(output: Path) -> None:
    """Mark OUTPUT as peftbench's (its lock file), as a run does by holding it: a report written into a folder of its
    own may be written there again."""
    with writing(output / LOCK_FILE):
        output.mkdir(parents=True, exist_ok=True)
        inside(output, LOCK_FILE, "lock file").touch()


def remove_if_unused(output: Path) -> None:
    """Remove OUTPUT if it holds nothing but its lock file (a run that failed before writing anything)."""
    if output.is_dir() and {path.name for path in output.iterdir()} <= {LOCK_FILE}:
        remove(output / LOCK_FILE)
        output.rmdir()


# ---------------------------------------------------------------------------------------------- methods


def _inside_method(name: str) -> property:
    """A path in the method's directory, as a read-only attribute (checked: never a symlink leading out of it)."""
    return property(lambda self: inside(self.path, name, f"{self.name}'s"), doc=f"the method's {name}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class MethodDir:
    """One method's directory at one seed, and the files in it."""

    path: Path
    RESULT_FILE: ClassVar[str] = METRICS_FILE  # the record whose presence means the work is finished
    OWN: ClassVar[tuple[str, ...]] = METHOD_FILES  # what peftbench writes here: all that --force may delete
    NAMED: ClassVar[bool] = True  # named after its result's method (a trial is named after its settings)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def comparison(self) -> Path:
        """The one-seed comparison directory it belongs to."""
        return self.path.parent

    metrics = _inside_method(METRICS_FILE)
    failed = _inside_method(FAILED_FILE)
    predictions = _inside_method(PREDICTIONS_FILE)
    retention_task = _inside_method(RETENTION_TASK_FILE)
    fingerprint = _inside_method(FINGERPRINT_FILE)
    checkpoints = _inside_method(CHECKPOINT_DIR)
    adapter = _inside_method(ADAPTER_DIR)
    curves = _inside_method(CURVES_FILE)
    log = _inside_method(LOG_FILE)
    trials = _inside_method(TRIALS_DIR)

    @property
    def card(self) -> Path:
        return self.adapter / CARD_FILE

    def check(self) -> None:
        """Refuse (ConfigError) a directory where a file or folder this method writes would lead out of it, or holds
        the other kind of thing."""
        for name in self.OWN:
            expect(inside(self.path, name, f"{self.name}'s"), folder=name in FOLDERS)

    def has_run(self) -> bool:
        """Whether a method ran here: it finished or failed (its results, failure, predictions or adapter are there)."""
        return any((self.path / marker).exists() for marker in METHOD_MARKERS)

    def finished(self) -> bool:
        """Whether the method's results are written (metrics.json is written last; damage says if they are whole)."""
        return self.metrics.exists()

    def finished_whole(self) -> bool:
        """Whether its results are written and whole (damage): a damaged result is work to do again."""
        return self.finished() and not self.damage()

    def holds_work(self) -> bool:
        """Whether it holds something a rerun could lose: finished results, a checkpoint or a search's trials."""
        return (self.path / self.RESULT_FILE).is_file() or self.checkpoints.is_dir() or self.trials.is_dir()

    def read_result(self) -> MethodResult:
        """metrics.json as its record, every value of its declared type (else one of UNREADABLE)."""
        return _typed(MethodResult.from_dict(json.loads(self.metrics.read_text())))

    def write_result(self, result: MethodResult) -> None:
        """metrics.json, with the checksums of the files the result stands on (checksums), which damage verifies."""
        data = result.to_dict() | {FILES_KEY: self.checksums()}
        write_atomic(self.metrics, json.dumps(data, indent=2) + "\n")

    def checksums(self) -> dict[str, str]:
        """The sha256 of each file a finished result stands on, by its path here: its predictions, its log and its
        adapter (the model card aside: every report rewrites it)."""
        paths = [self.predictions, self.retention_task, self.log]
        if self.adapter.is_dir():
            paths += sorted(path for path in self.adapter.rglob("*") if path != self.card)
        return {
            path.relative_to(self.path).as_posix(): _sha256(path)
            for path in paths
            if path.is_file() and not path.is_symlink()
        }

    def damage(self, files: tuple[str, ...] | None = None) -> dict[str, str]:
        """What of a finished result here cannot be used, by file, and why: its record (RESULT_FILE) where it does
        not read back as one, types included; each file the record's checksums name (of files, by their first path
        component; default all) that is gone or changed since. {} where the result is whole, or there is none."""
        record = self.path / self.RESULT_FILE
        if not record.exists():
            return {}
        try:
            data = json.loads(record.read_text())
            result = _typed(MethodResult.from_dict(data))
            recorded = data.get(FILES_KEY) or {}
            _typed_checksums(recorded)
        except UNREADABLE as exc:
            return {self.RESULT_FILE: f"unreadable ({type(exc).__name__}: {exc})"}
        if self.NAMED and result.method != self.name:
            return {self.RESULT_FILE: f"holds {result.method!r}'s result, not {self.name!r}'s"}
        damage = {}
        for name, digest in recorded.items():
            path = self.path / name
            if files is not None and Path(name).parts[0] not in files:
                continue
            if not path.resolve().is_relative_to(self.path.resolve()):
                damage[name] = f"leads out of {str(self.path)!r}"
            elif not path.is_file():
                damage[name] = "missing"
            elif _sha256(path) != digest:
                damage[name] = f"changed since it was written (its checksum in {self.RESULT_FILE} differs)"
        return damage

    def read_failure(self) -> dict[str, Any]:
        """What failed.json says ({} where there is none, or it cannot be read)."""
        try:
            failure = json.loads(self.failed.read_text())
        except UNREADABLE:
            return {}
        return failure if isinstance(failure, dict) else {}

    def write_failure(self, method: str, model: str, seed: int, error: str) -> None:
        """Leave failed.json, so that the summary and the report name the failure instead of skipping it."""
        failure = {"method": method, "model": model, "seed": seed, "error": error}
        write_atomic(self.failed, json.dumps(failure, indent=2) + "\n")

    def clear_failure(self) -> None:
        self.failed.unlink(missing_ok=True)

    def read_predictions(self, retention_task: bool = False) -> list[dict[str, Any]]:
        """The rows of predictions.jsonl (retention_task: of retention_task.jsonl) that read back whole: they
        illustrate the report, so a damaged line is left out rather than stopping it. Lines end at \\n only: a
        prediction may hold U+2028, which splitlines() splits."""
        path = self.retention_task if retention_task else self.predictions
        if not path.is_file():
            return []
        rows = []
        for line in path.read_text(encoding="utf-8", errors="replace").split("\n"):
            try:
                row = json.loads(line) if line.strip() else None
            except ValueError:
                continue
            if isinstance(row, dict) and {"id", "source", "reference", "prediction"} <= row.keys():
                rows.append(row)
        return rows

    def write_predictions(self, rows: list[dict[str, Any]], retention_task: bool = False) -> None:
        """One JSON object per test example (retention_task: per example of the retention task)."""
        path = self.retention_task if retention_task else self.predictions
        write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))

    def append_log(self, record: dict[str, Any]) -> None:
        """One line of log.jsonl (a step or an evaluation), written at once so that the log can be followed live."""
        self.path.mkdir(parents=True, exist_ok=True)
        with self.log.open("a", encoding="utf-8") as stream:
            stream.write(json.dumps(record) + "\n")

    def read_log(self) -> list[dict[str, Any]]:
        if not self.log.is_file():
            return []
        return [json.loads(line) for line in self.log.read_text(encoding="utf-8").splitlines() if line.strip()]

    def keep_log(self, lines: int, source: MethodDir | None = None) -> None:
        """Cut log.jsonl back to its first `lines` lines: what was logged up to a checkpoint, before a resumed run
        logs the rest again (0: a fresh start). source: the directory whose log those lines are taken from, where the
        checkpoint is another directory's (a search's selected trial); default this one."""
        log = (source or self).log
        kept = log.read_text(encoding="utf-8").splitlines(keepends=True)[:lines] if log.is_file() else []
        write_atomic(self.log, "".join(kept))

    def write_card(self, text: str) -> None:
        """The adapter's model card (README.md), replacing peft's placeholder."""
        write_atomic(self.card, text)

    def remove(self) -> None:
        """What an earlier run of this method wrote here (--force starts over): its own files (OWN) and unfinished
        writes, never a file of someone else's (nor a damaged one set aside for a look); the directory too, where
        nothing else is left."""
        if not self.path.is_dir() or self.path.is_symlink():
            return remove(self.path)
        for path in self.path.iterdir():
            if path.name in self.OWN or path.name.startswith(STAGING_PREFIX):
                remove(path)
        with contextlib.suppress(OSError):
            self.path.rmdir()  # only where empty

    def search_state(self) -> dict[str, bytes]:
        """What a search goes on from, by path in this directory: its trials' files (no checkpoints: the trials that
        can still win keep theirs where they ran) and metrics.json (the trial tested so far)."""
        files = {f"{TRIALS_DIR}/{name}": content for name, content in read_tree(self.trials).items()}
        return files | ({METRICS_FILE: self.metrics.read_bytes()} if self.metrics.is_file() else {})


def _typed(result: MethodResult) -> MethodResult:
    check_fields(result)
    return result


def _typed_checksums(recorded: Any) -> None:
    if not isinstance(recorded, dict) or not all(isinstance(v, str) for v in recorded.values()):
        raise TypeError(f"{FILES_KEY} is not a mapping of paths to checksums")


def read_tree(folder: Path) -> dict[str, bytes]:
    """Every file under folder, by its path relative to folder, but checkpoints (what a unit ships back from a Ray
    worker: its results, not its resume state)."""
    files = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and not path.is_symlink() and CHECKPOINT_DIR not in relative.parts[:-1]:
            files[relative.as_posix()] = path.read_bytes()
    return files


def write_tree(folder: Path, files: dict[str, bytes]) -> None:
    """Write files (as read_tree gives them) under folder, each atomically; a path that would land outside folder
    (absolute, .., a symlink away) is refused before anything is written."""
    root = folder.resolve()
    targets = {}
    for name, content in files.items():
        target = folder / name
        if Path(name).is_absolute() or ".." in Path(name).parts or not target.resolve().is_relative_to(root):
            raise ConfigError(f"shipped file {name!r} would lie outside {str(folder)!r}")
        targets[target] = content
    write_files(targets)


@dataclass(frozen=True)
class TrialDir(MethodDir):
    """One trial of a method's search: its directory holds what a method's does while it trains, and trial.json
    (its validation figures so far, no test) instead of metrics.json."""

    RESULT_FILE: ClassVar[str] = TRIAL_FILE
    OWN: ClassVar[tuple[str, ...]] = (*METHOD_FILES, TRIAL_FILE)
    NAMED: ClassVar[bool] = False
    record = _inside_method(TRIAL_FILE)

    @property
    def comparison(self) -> Path:
        return self.path.parents[2]  # <comparison>/<method>/trials/<trial>

    def read_record(self) -> MethodResult | None:
        """What the trial has trained and validated so far (None before its first stint ended, or unreadable)."""
        try:
            return _typed(MethodResult.from_dict(json.loads(self.record.read_text())))
        except UNREADABLE:
            return None

    def write_record(self, result: MethodResult) -> None:
        write_atomic(self.record, json.dumps(result.to_dict(), indent=2) + "\n")


def trial_dir(method: MethodDir, name: str) -> TrialDir:
    """A trial's directory in its method's directory (the name comes from search.py's trial names)."""
    return TrialDir(inside(method.trials, name, "trial directory"))


def seed_dir(output: Path, seed: int, several: bool) -> Path:
    """Where one seed's comparison goes: OUTPUT itself with one seed, OUTPUT/seed-<s> with several."""
    return inside(output, f"seed-{seed}", "seed directory") if several else output


def method_dir(comparison: Path, name: str) -> MethodDir:
    """A method's directory in one seed's comparison directory."""
    return MethodDir(inside(comparison, name, "method directory"))


def comparisons(output: Path) -> list[tuple[Path, int | None]]:
    """OUTPUT and its seed-<s> directories, each with its seed where the name gives it."""
    found: list[tuple[Path, int | None]] = [(output, None)]
    for path in sorted(output.glob("seed-*")):
        if path.is_dir() and path.name[5:].isdigit():
            found.append((path, int(path.name[5:])))
    return found


def method_dirs(comparison: Path) -> list[MethodDir]:
    """Every method's directory of one comparison directory, by name (callers ask what each holds)."""
    if not comparison.is_dir():
        return []
    paths = sorted(path for path in comparison.iterdir() if path.is_dir() and path.name not in RESERVED)
    return [MethodDir(path) for path in paths]


def reference_dir(comparison: Path, name: str) -> MethodDir:
    """Where one seed's reference row (REFERENCES) is kept."""
    return MethodDir(inside(comparison, name, "reference directory"))


def reference_dirs(comparison: Path) -> list[MethodDir]:
    return [reference_dir(comparison, name) for name in REFERENCES]


def export_path(output: Path, kind: str) -> Path:
    """Where the results table of kind ("csv" or "json") goes, beside summary.md."""
    return inside(output, EXPORTS[kind], "results table")


def summary_path(comparison: Path) -> Path:
    return inside(comparison, SUMMARY_FILE, "summary")


def verdict_path(comparison: Path) -> Path:
    return inside(comparison, VERDICT_FILE, "verdict")


def trackers_dir(comparison: Path) -> Path:
    """Where trackers keep their local files; the libraries write anywhere under it, so no symlink there leads out."""
    return no_links_out(inside(comparison, TRACKERS_DIR, "trackers folder"), "trackers folder")


def report_paths(destination: Path) -> tuple[Path, Path, Path]:
    """report.md, report.html and the figures folder beside them."""
    markdown, html, figures = (
        inside(destination, name, "report") for name in (REPORT_MARKDOWN, REPORT_HTML, REPORT_FILES)
    )
    return markdown, html, figures


def check_paths(output: Path, seeds: list[int], methods: list[str]) -> None:
    """Refuse, before any work, an OUTPUT where a path this run writes would lead out of it, or holds the other kind
    of thing (a folder where peftbench writes a file, or a file where it keeps a folder): ConfigError."""
    several = len(seeds) > 1
    for seed in seeds:
        comparison = seed_dir(output, seed, several)
        expect(comparison, folder=True)
        expect(summary_path(comparison), folder=False)
        expect(verdict_path(comparison), folder=False)
        expect(trackers_dir(comparison), folder=True)
        for directory in [*reference_dirs(comparison), *(method_dir(comparison, name) for name in methods)]:
            expect(directory.path, folder=True)
            directory.check()
    expect(summary_path(output), folder=False)
    expect(verdict_path(output), folder=False)
    markdown, html, figures = report_paths(output)
    for path in (markdown, html, *(export_path(output, kind) for kind in EXPORTS)):
        expect(path, folder=False)
    expect(figures, folder=True)


def expect(path: Path, folder: bool) -> Path:
    """path, refused (ConfigError) where it holds the other kind of thing than peftbench writes there (folder: a
    folder): that is not peftbench's to replace."""
    if path.exists() and path.is_dir() != folder:
        found, wanted = ("a folder", "a file") if path.is_dir() else ("a file", "a folder")
        raise ConfigError(
            f"{str(path)!r} is {found} where peftbench writes {wanted}; it is not peftbench's to replace: move it, "
            "or use another --output"
        )
    return path
