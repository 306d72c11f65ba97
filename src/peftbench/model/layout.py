"""Model layouts: everything that differs between a causal and an encoder-decoder (seq2seq) model, one class each.

A layout is chosen once, from the model's config, when the model (or its weight-less skeleton) loads, and travels
with it. It owns how examples become token ids, how a batch is laid out, where the loss and the new tokens are, and
which model class and peft task type go with the kind. No other module asks which kind a model is: a third kind
(say, a classification head) is one more class here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    GenerationConfig,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.modeling_outputs import CausalLMOutputWithPast

from peftbench.config.run_config import RunConfig
from peftbench.data.splits import Example
from peftbench.errors import ConfigError
from peftbench.task.presets import TASKS

IGNORE_INDEX = -100  # label positions the loss skips (prompt and padding)
# transformers renamed the KV cache's argument and output from past_key_values to cache during 5.x: this release's name.
_CACHE = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


@dataclass
class Encoded:
    """Token ids of one example: the prompt the model reads, and the target it must produce (ending in EOS)."""

    prompt: list[int]
    target: list[int]

    @property
    def length(self) -> int:
        return len(self.prompt) + len(self.target)


@dataclass(frozen=True)
class PromptOptions:
    """How a causal model is prompted: `plain` text (the source, then the task's cue), or the tokenizer's `chat`
    template (a user turn holding the instruction and the source, the target as the assistant's turn); `auto` is chat
    where the tokenizer has a template. task names the task (a model family may put a prefix before its sources)."""

    format: str = "auto"
    instruction: str = TASKS["summarization"].instruction
    cue: str = TASKS["summarization"].cue
    task: str = "summarization"

    @classmethod
    def from_config(cls, config: RunConfig) -> PromptOptions:
        return cls(config.prompt_format, config.instruction, TASKS[config.task].cue, config.task)


@dataclass(frozen=True)
class TokenLimits:
    """How long a source and a target may be, in tokens (the target's EOS included)."""

    source: int
    target: int


def _row_sums(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's summed cross-entropy (in fp32) of logits against labels, over the labels that count, and each
    row's count of them: per example, so that a validation figure can carry its uncertainty over examples."""
    losses = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
    return losses.sum(dim=1), (labels != IGNORE_INDEX).sum(dim=1)


def _pad(rows: list[list[int]], value: int, left: bool) -> torch.Tensor:
    width = max(len(row) for row in rows)
    padded = [([value] * (width - len(row)) + row) if left else (row + [value] * (width - len(row))) for row in rows]
    return torch.tensor(padded, dtype=torch.long)


class Layout:
    """The shared part: a tokenizer, the text put before every source, and greedy or beam generation."""

    kind: str  # recorded in metrics.json as model_kind
    model_class: type  # the transformers auto class that loads this kind
    task_type: str  # peft's task type
    prompt_format = "plain"  # how prompts are written (recorded in metrics.json)

    def __init__(self, tokenizer, prefix: str = ""):
        self.tokenizer, self.prefix = tokenizer, prefix

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def stop_ids(self) -> list[int]:
        """Tokens that end a generated answer."""
        return [self.eos_id]

    def encode(self, examples: list[Example], limits: TokenLimits) -> list[Encoded]:
        """Tokenise examples. The source is truncated to fit; the target keeps its EOS, capped at limits.target."""
        raise NotImplementedError

    def source_ids(self, examples: list[Example], budget: int) -> list[list[int]]:
        """Each example's prompt text (the prefix, then its template's segments) as at most budget token ids: where it
        is too long, the longest column texts are cut from their ends, never the template's own words."""
        texts = [text for ex in examples for text, _ in [(self.prefix, False), *ex.segments]]
        pieces = iter(self.tokenizer(texts, add_special_tokens=False).input_ids)
        ids = []
        for ex in examples:
            segments = [(next(pieces), column) for _, column in [(self.prefix, False), *ex.segments]]
            caps = _fit(
                [len(piece) for piece, column in segments if column],
                budget - sum(len(piece) for piece, column in segments if not column),
            )
            kept, columns = [], iter(caps)
            for piece, column in segments:
                kept += piece[: next(columns)] if column else piece
            ids.append(kept[:budget])  # the template's own words alone can exceed the budget
        return ids

    def answer_ids(self, text: str) -> list[int]:
        """An answer's token ids as they follow the prompt, without the end token (for scoring choices)."""
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def text_items(self, texts: list[str], budget: int) -> list[Encoded]:
        """Plain texts (no prompt format, no task prefix), each cut to budget tokens, as items whose target is the
        text the model predicts: the per-token loss on general text that forgetting compares."""
        raise NotImplementedError

    def choice_items(self, item: Encoded, choices: list[str]) -> list[Encoded]:
        """One item per choice: the example's prompt, with the choice as the target to score."""
        return [Encoded(item.prompt, self.answer_ids(choice)) for choice in choices]

    def _logits_and_labels(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits at the target positions of a collated batch and the labels they predict."""
        raise NotImplementedError

    def token_loss(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's summed cross-entropy over the target tokens of a collated batch, and each row's count of them."""
        return _row_sums(*self._logits_and_labels(model, batch))

    def prefill(self, model, prompts: dict[str, torch.Tensor]) -> dict[str, object]:
        """Read a generation batch's prompts once, for prefilled_loss and then generate to go on from: what generate
        takes to skip that reading (the prompts' KV cache, or the encoder's outputs); empty where there is none."""
        raise NotImplementedError

    def prefilled_loss(
        self, model, prompts: dict[str, torch.Tensor], targets: list[list[int]], prefilled: dict[str, object]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's summed cross-entropy over its target after its prompt that prefill read (prefilled: its
        non-empty state), and each row's count of target tokens: the same figures as token_loss on the collated
        items, without reading the prompts again. Leaves prefilled as generate needs it (emptied where it cannot be,
        which makes generate read the prompts itself)."""
        raise NotImplementedError

    def collate(self, items: list[Encoded], with_targets: bool = True) -> dict[str, torch.Tensor]:
        """Pad a batch to its own longest example; generation batches (with_targets=False) hold the prompt only."""
        raise NotImplementedError

    def row(self, item: Encoded) -> dict[str, list[int]]:
        """One example as unpadded model inputs with labels (what HF's DataCollatorForSeq2Seq pads)."""
        raise NotImplementedError

    def padded_positions(self, batch: dict[str, torch.Tensor]) -> int:
        """Every token slot the model processes for a padded training batch, padding included."""
        raise NotImplementedError

    def real_positions(self, batch: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
        """For a collated training batch, each sequence length a layer's inputs can have (batch x length) and which
        of those positions hold real tokens, not padding (what a layer sees of the data, for EVA's SVD)."""
        raise NotImplementedError

    def real_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """Non-padding tokens the model processes for a collated training batch."""
        raise NotImplementedError

    def logit_inputs(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """For comparing two models' logits on a collated batch: the inputs to call them with, and a mask of the
        logit positions that hold real tokens."""
        raise NotImplementedError

    def prompt_overhead(self) -> int:
        """Tokens every prompt carries besides the source (special tokens, prefix, separator)."""
        raise NotImplementedError

    def check_lengths(self, limits: TokenLimits, generated: dict[str, int], positions: int | None) -> None:
        """Raise ConfigError where the limits leave no room for a source, or exceed the model's positions.
        generated: each flag that sets a number of generated tokens, and its value."""
        raise NotImplementedError

    def _new_tokens_start(self, batch: dict[str, torch.Tensor]) -> int:
        raise NotImplementedError

    def generate(
        self,
        model,
        batch: dict[str, torch.Tensor],
        max_new_tokens: int,
        num_beams: int = 1,
        fixed_length: bool = False,
        prefilled: dict[str, object] | None = None,
        one_line: bool = False,
        watch: StoppingCriteria | None = None,
    ) -> list[list[int]]:
        """Greedy (or beam) generation from a prompt-only batch; returns only the new tokens of each row.

        fixed_length ignores EOS and always makes max_new_tokens tokens, so timings compare like with like.
        prefilled: prefill's state for this batch (greedy only: beam search would need it copied per beam).
        one_line: a row also stops at the first line break after its answer began (as lm-evaluation-harness
        generates short answers, until "\n"); the tokens after it are padding.
        watch: called as generate calls a stopping criterion, once per new token (a clock that times each token).
        """
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens if fixed_length else 0,
            num_beams=num_beams,
            do_sample=False,
            pad_token_id=self.pad_id,
            eos_token_id=self.stop_ids,
            decoder_start_token_id=getattr(model.config, "decoder_start_token_id", None),
        )
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
        start = self._new_tokens_start(batch)
        stop = StoppingCriteriaList([FirstLineDone(self.tokenizer, start)] if one_line else [])
        if watch is not None:
            stop.append(watch)
        output = model.generate(**inputs, **(prefilled or {}), generation_config=config, stopping_criteria=stop)
        return output[:, start:].tolist()


class FirstLineDone(StoppingCriteria):
    """Per row: whether the text generated since `start` holds a line break after something other than white space
    (a leading line break does not end an answer that has not begun)."""

    def __init__(self, tokenizer, start: int):
        self.tokenizer, self.start = tokenizer, start

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.start :], skip_special_tokens=True)
        return torch.tensor(["\n" in text.lstrip() for text in texts], dtype=torch.bool, device=input_ids.device)


class CausalLayout(Layout):
    """A decoder-only model reads prompt + target as one sequence, in one of two prompt formats:

    - plain: `source + cue + " " + target + EOS` (the task's cue: "\\nTL;DR:" for summarisation, none where the
      template ends in a cue of its own, such as "Answer:");
    - chat: the tokenizer's chat template, a user turn holding the instruction and the source, and the target as the
      assistant's turn; the labels cover the assistant's tokens and its end-of-turn token, and generation starts
      after the assistant header.

    The contract every method below relies on: batches are left-padded, so every row's target ends in the last
    column. The LM head then only runs on the last (longest target + 1) positions, and generated tokens start right
    after the (padded) prompt. Explicit position ids keep left padding exact. The one exception is prefilled_loss:
    there the targets come after the left-padded prompts' cache, right-padded, so that every target follows its
    prompt directly.
    """

    kind = "causal"
    model_class = AutoModelForCausalLM
    task_type = "CAUSAL_LM"
    _SLOT = "\x00peftbench-slot\x00"  # stands for the text in a rendered chat template, to cut it into pieces

    def __init__(self, tokenizer, prefix: str = "", prompt: PromptOptions = PromptOptions()):
        super().__init__(tokenizer, prefix)
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if prompt.format == "chat" and not has_template:
            raise ConfigError(
                "--prompt-format chat needs a tokenizer with a chat template, and this model's has "
                "none; use --prompt-format plain (or auto)"
            )
        chat = prompt.format == "chat" or (prompt.format == "auto" and has_template)
        self.prompt_format = "chat" if chat else "plain"
        if self.prompt_format == "chat":
            self._head, self._tail, self._end, self._lead = self._chat_pieces(prompt.instruction)
        else:
            self._head = self._ids("", special=True)  # BOS for tokenizers that add one
            self._tail, self._end, self._lead = self._ids(prompt.cue), [self.eos_id], " "

    def _ids(self, text: str, special: bool = False) -> list[int]:
        return self.tokenizer(text, add_special_tokens=special).input_ids

    def _chat_pieces(self, instruction: str) -> tuple[list[int], list[int], list[int], str]:
        """Token ids before and after the source in the user's turn (up to the assistant header), those that end
        the assistant's turn, and the text that starts it."""
        template = self.tokenizer.apply_chat_template
        asked = template([{"role": "user", "content": self._SLOT}], add_generation_prompt=True, tokenize=False)
        before, after = asked.split(self._SLOT)
        opened = template([{"role": "user", "content": ""}], add_generation_prompt=True, tokenize=False)
        answered = template(
            [{"role": "user", "content": ""}, {"role": "assistant", "content": self._SLOT}], tokenize=False
        )
        lead, end_text = answered.removeprefix(opened).split(self._SLOT)
        end = self._ids(end_text)
        special = set(self.tokenizer.all_special_ids)
        # The end-of-turn token and what precedes it; a newline the template puts after it is not the answer's.
        cut = next((i + 1 for i, token in enumerate(end) if token in special), len(end))
        return self._ids(before + instruction + "\n\n"), self._ids(after), end[:cut] or [self.eos_id], lead

    @property
    def stop_ids(self) -> list[int]:
        return list(dict.fromkeys([self.eos_id, self._end[-1]]))  # the end of the assistant's turn stops it too

    def encode(self, examples: list[Example], limits: TokenLimits) -> list[Encoded]:
        sources = self.source_ids(examples, limits.source)
        # A plain target follows the cue mid-text, so it is tokenised as a new word (leading space).
        targets = self.tokenizer([self._lead + ex.target for ex in examples], add_special_tokens=False).input_ids
        keep = max(limits.target - len(self._end), 1)
        return [
            Encoded(self._head + src + self._tail, tgt[:keep] + self._end)
            for src, tgt in zip(sources, targets, strict=True)
        ]

    def answer_ids(self, text: str) -> list[int]:
        return self.tokenizer(self._lead + text, add_special_tokens=False).input_ids

    def text_items(self, texts: list[str], budget: int) -> list[Encoded]:
        # Every token but the first is predicted (after BOS, for tokenizers that add one: then every token is).
        start = self._ids("", special=True)
        ids = [
            (start + text)[: budget + len(start)] for text in self.tokenizer(texts, add_special_tokens=False).input_ids
        ]
        return [Encoded(row[:1], row[1:]) for row in ids]

    def collate(self, items: list[Encoded], with_targets: bool = True) -> dict[str, torch.Tensor]:
        sequences = [it.prompt + it.target if with_targets else it.prompt for it in items]
        mask = _pad([[1] * len(seq) for seq in sequences], 0, left=True)
        batch = {"input_ids": _pad(sequences, self.pad_id, left=True), "attention_mask": mask}
        batch["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        if with_targets:
            labels = [[IGNORE_INDEX] * len(it.prompt) + it.target for it in items]
            batch["labels"] = _pad(labels, IGNORE_INDEX, left=True)
        return batch

    def row(self, item: Encoded) -> dict[str, list[int]]:
        ids, labels = item.prompt + item.target, [IGNORE_INDEX] * len(item.prompt) + item.target
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}

    def _logits_and_labels(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        labels = batch["labels"]
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        width = int((labels != IGNORE_INDEX).sum(-1).max())  # left padding: all targets in the last columns
        return model(**inputs, logits_to_keep=width + 1).logits[:, :-1], labels[:, -width:]

    def prefill(self, model, prompts: dict[str, torch.Tensor]) -> dict[str, object]:
        # generate refuses a cache of ours where the model's generation config names its own kind of cache.
        if prompts["input_ids"].shape[1] < 2 or getattr(model.generation_config, "cache_implementation", None):
            return {}
        # All but the last column: generate feeds that one itself, for the first new token's logits.
        head = {key: value[:, :-1] for key, value in prompts.items()}
        cache = getattr(model(**head, use_cache=True, logits_to_keep=1), _CACHE, None)
        return {} if cache is None else {_CACHE: cache}

    def prefilled_loss(
        self, model, prompts: dict[str, torch.Tensor], targets: list[list[int]], prefilled: dict[str, object]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cache, device = prefilled[_CACHE], prompts["input_ids"].device
        # The prompts' last column (left padding: a real token in every row), then each target but its last token,
        # right-padded: every target position sees its whole prompt, and no real position sees the padding.
        width = max(len(target) for target in targets)
        ids = torch.cat([prompts["input_ids"][:, -1:], _pad(targets, self.pad_id, left=False)[:, :-1].to(device)], 1)
        real = _pad([[1] * len(target) for target in targets], 0, left=False)[:, :-1].to(device)
        positions = prompts["position_ids"][:, -1:] + torch.arange(width, device=device)
        logits = model(
            input_ids=ids,
            attention_mask=torch.cat([prompts["attention_mask"], real], 1),
            position_ids=positions,
            use_cache=True,
            **{_CACHE: cache},
        ).logits
        try:
            cache.crop(-width)  # back to the prompts less their last column
        except (NotImplementedError, RuntimeError, ValueError):  # one that cannot, once it holds a sliding window
            prefilled.pop(_CACHE)
        return _row_sums(logits, _pad(targets, IGNORE_INDEX, left=False).to(device))

    def real_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["attention_mask"].sum())  # prompt and target are one sequence

    def padded_positions(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["input_ids"].numel()

    def real_positions(self, batch: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
        return {batch["input_ids"].shape[1]: batch["attention_mask"].bool()}  # every layer reads the one sequence

    def logit_inputs(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return {k: v for k, v in batch.items() if k != "labels"}, batch["attention_mask"].bool()

    def prompt_overhead(self) -> int:
        return len(self._head) + len(self._tail)

    def check_lengths(self, limits: TokenLimits, generated: dict[str, int], positions: int | None) -> None:
        if not positions:
            return
        extra = self.prompt_overhead()
        prompt = extra + limits.source
        for flag, value in (("--max-target-tokens", limits.target), *generated.items()):
            if prompt + value > positions:
                raise ConfigError(
                    f"--max-source-tokens {limits.source} + {extra} prompt tokens + {flag} {value} = "
                    f"{prompt + value} tokens, more than the {positions} positions of this model; lower them"
                )

    def _new_tokens_start(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["input_ids"].shape[1]  # the output repeats the left-padded prompt


class Seq2SeqLayout(Layout):
    """An encoder-decoder model reads `prefix + source + EOS` in its encoder (right-padded) and the target as labels
    (padded with IGNORE_INDEX); the decoder input is the labels shifted right."""

    kind = "seq2seq"
    model_class = AutoModelForSeq2SeqLM
    task_type = "SEQ_2_SEQ_LM"

    def encode(self, examples: list[Example], limits: TokenLimits) -> list[Encoded]:
        sources = self.source_ids(examples, limits.source - 1)
        targets = self.tokenizer([ex.target for ex in examples], add_special_tokens=False).input_ids
        eos = self.eos_id
        return [
            Encoded(src + [eos], tgt[: limits.target - 1] + [eos]) for src, tgt in zip(sources, targets, strict=True)
        ]

    def text_items(self, texts: list[str], budget: int) -> list[Encoded]:
        # The encoder reads a text's first half and the decoder predicts the rest: a prefix language model's reading
        # (an encoder-decoder model has no loss on text it only reads).
        ids = [row[:budget] for row in self.tokenizer(texts, add_special_tokens=False).input_ids]
        return [Encoded(row[: len(row) // 2] + [self.eos_id], row[len(row) // 2 :]) for row in ids]

    def collate(self, items: list[Encoded], with_targets: bool = True) -> dict[str, torch.Tensor]:
        batch = {"input_ids": _pad([it.prompt for it in items], self.pad_id, left=False)}
        batch["attention_mask"] = _pad([[1] * len(it.prompt) for it in items], 0, left=False)
        if with_targets:
            batch["labels"] = _pad([it.target for it in items], IGNORE_INDEX, left=False)
        return batch

    def row(self, item: Encoded) -> dict[str, list[int]]:
        return {"input_ids": item.prompt, "attention_mask": [1] * len(item.prompt), "labels": item.target}

    def _logits_and_labels(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        labels = batch["labels"]
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        # Decoder inputs from the labels ourselves: passing labels would make the model compute a loss we discard.
        owner = model.module if isinstance(model, DistributedDataParallel) else model  # DDP hides the helper
        decoder_input_ids = owner.prepare_decoder_input_ids_from_labels(labels=labels)
        return model(**inputs, decoder_input_ids=decoder_input_ids).logits, labels

    def prefill(self, model, prompts: dict[str, torch.Tensor]) -> dict[str, object]:
        return {
            "encoder_outputs": model.get_encoder()(
                input_ids=prompts["input_ids"], attention_mask=prompts["attention_mask"]
            )
        }

    def prefilled_loss(
        self, model, prompts: dict[str, torch.Tensor], targets: list[list[int]], prefilled: dict[str, object]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        labels = _pad(targets, IGNORE_INDEX, left=False).to(prompts["input_ids"].device)
        # With the encoder's outputs given, the model skips its encoder.
        return self.token_loss(model, prompts | {"labels": labels, "encoder_outputs": prefilled["encoder_outputs"]})

    def real_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["attention_mask"].sum()) + int((batch["labels"] != IGNORE_INDEX).sum())

    def padded_positions(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["input_ids"].numel() + batch["labels"].numel()  # encoder input and decoder positions

    def real_positions(self, batch: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
        # Encoder layers (and cross-attention's keys and values) read the source, the decoder's the shifted labels:
        # right padding, so the decoder's real positions are the labels' real ones. Where the two lengths coincide,
        # a position real in either counts (the few padding rows that lets in do not sway an SVD of thousands).
        source, decoder = batch["attention_mask"].bool(), batch["labels"] != IGNORE_INDEX
        if source.shape == decoder.shape:
            return {source.shape[1]: source | decoder}
        return {source.shape[1]: source, decoder.shape[1]: decoder}

    def logit_inputs(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return batch, batch["labels"] != IGNORE_INDEX  # the model builds its decoder input from the labels

    def prompt_overhead(self) -> int:
        return len(self.tokenizer(self.prefix, add_special_tokens=False).input_ids) + 1  # the prefix and EOS

    def check_lengths(self, limits: TokenLimits, generated: dict[str, int], positions: int | None) -> None:
        needed = self.prompt_overhead() + 1
        if limits.source < needed:
            raise ConfigError(
                f"--max-source-tokens {limits.source} leaves no room for the article: the task prefix "
                f"{self.prefix!r} takes {needed - 2} tokens and EOS one; use at least {needed}"
            )

    def _new_tokens_start(self, batch: dict[str, torch.Tensor]) -> int:
        return 1  # the output starts with the decoder start token


def _fit(lengths: list[int], budget: int) -> list[int]:
    """How many tokens each column keeps so that together they take at most budget: the longest ones are cut to one
    common length (the largest that fits), the shorter ones kept whole."""
    if sum(lengths) <= budget:
        return lengths
    if budget <= 0:
        return [0] * len(lengths)
    low, high = 0, max(lengths)
    while low < high:  # the largest cap whose columns fit
        middle = (low + high + 1) // 2
        low, high = (middle, high) if sum(min(n, middle) for n in lengths) <= budget else (low, middle - 1)
    caps = [min(n, low) for n in lengths]
    spare = budget - sum(caps)
    for index, n in enumerate(lengths):  # what the common cap leaves over goes to the cut ones, in order
        if spare and n > caps[index]:
            caps[index], spare = caps[index] + 1, spare - 1
    return caps


def layout_for(model_config, tokenizer, prefix: str = "", prompt: PromptOptions = PromptOptions()) -> Layout:
    """The layout of a model with this config: the one place that tells the kinds apart. Prompt formats are a causal
    model's (a seq2seq model's encoder reads the prefixed source)."""
    if model_config.is_encoder_decoder:
        return Seq2SeqLayout(tokenizer, prefix)
    return CausalLayout(tokenizer, prefix, prompt)
