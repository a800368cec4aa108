"""The choices of one completion, accumulated from engine outputs.

`Choices.feed` takes each engine output (deltas, as vLLM sends them) and
yields what is new per choice: the stream sends each `Delta` as a chunk, the
non-streamed answer ignores them and asks `final()` at the end. Echo,
logprobs (prompt logprobs included), n, best_of, finish reasons and the
per-choice latency metrics are handled here, once, for both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from app.completion.prepared import PreparedCompletion
from app.completion.schemas import CompletionChoice, CompletionLogprobs, Usage
from app.engine.protocol import Logprob, PositionLogprobs, RequestOutput, Tokenizer
from app.observability.metrics import Metrics
from app.observability.timers import RequestTimer


class Choice:
    """One sample of one prompt: everything it has produced so far."""

    __slots__ = (
        "cumulative_logprob",
        "finish_reason",
        "index",
        "logprobs",
        "offset",
        "parts",
        "timer",
    )

    def __init__(self, index: int, timer: RequestTimer, logprobs: bool):
        self.index = index  # in the response: prompt index * n + sample index
        self.parts: list[str] = []  # its text (the echoed prompt first)
        self.finish_reason: str | None = None
        self.cumulative_logprob = 0.0
        self.logprobs: CompletionLogprobs | None = (
            {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
            if logprobs
            else None
        )
        self.offset = 0  # text_offset of the next token
        self.timer = timer

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def logprobs_from(self, start: int) -> CompletionLogprobs | None:
        lp = self.logprobs
        if lp is None:
            return None
        return {
            "tokens": lp["tokens"][start:],
            "token_logprobs": lp["token_logprobs"][start:],
            "top_logprobs": lp["top_logprobs"][start:],
            "text_offset": lp["text_offset"][start:],
        }


@dataclass(slots=True)
class Delta:
    """What one engine output added to one choice."""

    choice: Choice
    text: str
    logprobs_start: int  # its new logprob entries start here (Choice.logprobs_from)
    finish_reason: str | None
    tokens: int  # output tokens it carries
    first: bool  # the choice's first delta


class Choices:
    def __init__(self, prep: PreparedCompletion, tokenizer: Tokenizer, metrics: Metrics):
        self.prep = prep
        self.tokenizer = tokenizer
        self.metrics = metrics
        self.completion_tokens = 0
        self._choices: dict[tuple[int, int], Choice] = {}
        # Per prompt, from its first output that has them: vLLM's later
        # outputs carry an empty list, and with n > 1 a sample may start in
        # one of those.
        self._prompt_logprobs: dict[int, Sequence[PositionLogprobs | None]] = {}

    def feed(self, prompt_index: int, out: RequestOutput) -> list[Delta]:
        """Take one engine output; each choice's news (nothing when a choice
        has none, e.g. bytes the detokenizer holds back). A list, not a
        generator: this runs for every output of every stream."""
        deltas: list[Delta] = []
        if out.prompt_logprobs:
            self._prompt_logprobs.setdefault(prompt_index, out.prompt_logprobs)
        metrics, echo_only = self.metrics, self.prep.echo_only
        for o in out.outputs:
            key = (prompt_index, o.index)
            choice = self._choices.get(key)
            if choice is None:
                # The echoed prompt (text and logprobs) goes out with the first delta.
                choice = self._choices[key] = self._start(prompt_index, o.index)
                prefix, lp_start, first = choice.text, 0, True
            else:
                prefix, first = "", False
                lp_start = len(choice.logprobs["tokens"]) if choice.logprobs is not None else 0
            # Scoring (echo, max_tokens 0): the one step the engine ran is left out.
            n = 0 if echo_only else len(o.token_ids)
            if n:
                self.completion_tokens += n
                metrics.generation_tokens.inc(n)
                choice.timer.tokens_out(metrics, n)
            if o.finish_reason is not None:
                choice.finish_reason = o.finish_reason
                metrics.finished.labels(metrics.model, o.finish_reason).inc()
                choice.timer.finish(metrics)
            if o.cumulative_logprob is not None:
                choice.cumulative_logprob = o.cumulative_logprob
            if choice.logprobs is not None and o.logprobs is not None and not echo_only:
                self._add_logprobs(choice, o.token_ids, o.logprobs)
            text = "" if echo_only else o.text
            if text:
                choice.parts.append(text)
            if prefix:
                text = prefix + text
            new_logprobs = choice.logprobs is not None and len(choice.logprobs["tokens"]) > lp_start
            if text or o.finish_reason is not None or new_logprobs:
                deltas.append(Delta(choice, text, lp_start, o.finish_reason, n, first))
        return deltas

    def final(self) -> list[CompletionChoice]:
        """The answer's choices: per prompt, its n samples (the n most likely
        of best_of), numbered in order."""
        prep = self.prep
        out: list[CompletionChoice] = []
        for i in range(len(prep.prompts)):
            candidates = [self._choices[k] for k in sorted(self._choices) if k[0] == i]
            if len(candidates) > prep.n:  # best_of: keep the n most likely.
                candidates.sort(key=lambda c: c.cumulative_logprob, reverse=True)
                candidates = candidates[: prep.n]
            for j, choice in enumerate(candidates):
                out.append(
                    {
                        "index": i * prep.n + j,
                        "text": choice.text,
                        "logprobs": choice.logprobs,
                        "finish_reason": choice.finish_reason,
                    }
                )
        return out

    def finish_reasons(self) -> list[str | None]:
        """Each choice's finish reason so far, in order (None: unfinished)."""
        return [self._choices[k].finish_reason for k in sorted(self._choices)]

    def ttft(self) -> float | None:
        """Seconds from arrival to the first output token of any choice."""
        firsts = [c.timer.first for c in self._choices.values() if c.timer.tokens]
        return min(firsts) - self.prep.arrival if firsts else None

    def last_token_at(self) -> float | None:
        """When the last output token of any choice arrived (monotonic)."""
        lasts = [c.timer.last for c in self._choices.values() if c.timer.tokens]
        return max(lasts) if lasts else None

    def texts(self) -> list[str]:
        """Each choice's text so far, in order (traced content only)."""
        return [self._choices[k].text for k in sorted(self._choices)]

    def usage(self, cached_tokens: int) -> Usage:
        prompt_tokens = self.prep.prompt_tokens
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens},
        }

    # -- one choice -----------------------------------------------------------

    def _start(self, prompt_index: int, sample: int) -> Choice:
        prep = self.prep
        choice = Choice(
            prompt_index * prep.n + sample,
            RequestTimer(prep.arrival, prep.record.exemplar if prep.record else None),
            logprobs=prep.logprobs is not None,
        )
        if prep.echo:
            prompt = prep.prompts[prompt_index]
            text = prompt.text
            if text is None:
                text = self.tokenizer.decode(prompt.token_ids, skip_special_tokens=True)
            choice.parts.append(text)
            if choice.logprobs is not None:
                positions = self._prompt_logprobs.get(prompt_index)
                self._add_logprobs(choice, prompt.token_ids, positions)
        return choice

    def _token_name(self, token_id: int, entry: Logprob | None) -> str:
        if self.prep.tokens_as_ids:
            return f"token_id:{token_id}"
        if entry is not None and entry.decoded_token is not None:
            return entry.decoded_token
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def _add_logprobs(
        self,
        choice: Choice,
        token_ids: Sequence[int],
        positions: Sequence[PositionLogprobs | None] | None,
    ) -> None:
        lp = choice.logprobs
        assert lp is not None
        name = self._token_name
        for pos, token_id in enumerate(token_ids):
            step = positions[pos] if positions is not None and pos < len(positions) else None
            chosen = step.get(token_id) if step is not None else None
            token = name(token_id, chosen)
            lp["tokens"].append(token)
            lp["token_logprobs"].append(chosen.logprob if chosen is not None else None)
            lp["top_logprobs"].append(
                None if step is None else {name(t, e): e.logprob for t, e in step.items()}
            )
            lp["text_offset"].append(choice.offset)
            choice.offset += len(token)
