"""Completion logic: validation, token counting, the context limit, sampling
options, and turning engine outputs into OpenAI completion objects. No FastAPI.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field

from app.admission import Admission, Place
from app.config import Settings
from app.context import check_max_tokens, fit_prompt
from app.engine.protocol import (
    CompletionOutput,
    Engine,
    Logprob,
    PositionLogprobs,
    RequestOutput,
    SamplingOptions,
)
from app.errors import (
    EngineFailure,
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    RequestTimeout,
    Unavailable,
)
from app.metrics import Metrics, RequestTimer
from app.schemas import (
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    Usage,
)
from app.tokenizer import AsyncTokenizer

TRUNCATED_HEADER = "x-truncated-prompt-tokens"


@dataclass(slots=True)
class PreparedPrompt:
    token_ids: list[int]
    text: str | None  # the caller's text when it was sent whole, for echo
    dropped: int = 0


@dataclass(slots=True)
class PreparedCompletion:
    """A validated request: what to run and how to present it."""

    request_id: str
    created: int
    arrival: float  # time.monotonic() at arrival, for latency metrics
    deadline: float | None  # time.monotonic() by which it must end (request_timeout)
    model: str
    prompts: list[PreparedPrompt]
    options: SamplingOptions
    n: int  # choices returned per prompt
    echo: bool
    logprobs: int | None  # top-k the client asked for, None for no logprobs
    include_usage: bool
    tokens_as_ids: bool = False  # vLLM's return_tokens_as_token_ids: "token_id:<id>"

    @property
    def dropped_tokens(self) -> int:
        return sum(p.dropped for p in self.prompts)

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p.token_ids) for p in self.prompts)

    def headers(self) -> dict[str, str]:
        return {TRUNCATED_HEADER: str(self.dropped_tokens)}


@dataclass(slots=True)
class _ChoiceState:
    """Per-choice bookkeeping while outputs arrive."""

    text: list[str] = field(default_factory=list)
    tokens: int = 0
    finish_reason: str | None = None
    cumulative_logprob: float = 0.0
    logprobs: CompletionLogprobs | None = None
    offset: int = 0  # text_offset of the next token
    timer: RequestTimer | None = None


class CompletionService:
    def __init__(self, engine: Engine, settings: Settings, metrics: Metrics, admission: Admission):
        self.engine = engine
        self.settings = settings
        self.metrics = metrics
        self.admission = admission
        self.tokenizer = AsyncTokenizer(engine.tokenizer)
        self.model_name = settings.model_name
        self.truncation = settings.truncation
        self._active: set[str] = set()  # engine request ids in flight
        # The error events a stream can end with, exported at 0 from the start
        # so that rate() and the alert see the first one.
        for error in (EngineFailure, RequestTimeout, Unavailable):
            metrics.stream_errors.labels(metrics.model, error.type)

    async def abort_all(self) -> None:
        """Abort every engine request in flight (drain timeout)."""
        for request_id in list(self._active):
            await self.engine.abort(request_id)

    # -- validation and the context limit ---------------------------------

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise ModelNotFound(
                f"The model does not exist; this gateway serves '{self.model_name}'.",
                param="model",
            )

    async def prepare(self, req: CompletionRequest) -> PreparedCompletion:
        arrival = time.monotonic()
        self.check_model(req.model)
        if req.suffix is not None:
            raise InvalidRequest("suffix is not supported by this model.", param="suffix")
        max_tokens = 16 if req.max_tokens is None else req.max_tokens
        check_max_tokens(max_tokens, self.engine.max_model_len)
        best_of = req.best_of if req.best_of is not None else req.n
        if best_of < req.n:
            raise InvalidRequest("best_of must be greater than or equal to n.", param="best_of")
        if req.stream and best_of > req.n:
            raise InvalidRequest("best_of greater than n cannot be streamed.", param="best_of")
        if req.logprobs is not None and req.logprobs > self.engine.max_logprobs:
            raise InvalidRequest(
                f"logprobs must be at most {self.engine.max_logprobs}.", param="logprobs"
            )
        truncate_to = req.truncate_prompt_tokens
        if truncate_to == -1:
            truncate_to = None  # vLLM's "-1": the model's limit, which applies anyway.
        if truncate_to == 0:
            raise InvalidRequest(
                "truncate_prompt_tokens must be -1 or at least 1.", param="truncate_prompt_tokens"
            )
        stops = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
        if len(stops) > self.settings.max_stop:
            raise InvalidRequest(
                f"At most {self.settings.max_stop} stop sequences are allowed.", param="stop"
            )
        if any(len(s) > self.settings.max_stop_length for s in stops):
            raise InvalidRequest(
                f"Stop sequences are limited to {self.settings.max_stop_length} characters.",
                param="stop",
            )
        if (
            isinstance(req.prompt, list)
            and len(req.prompt) > self.settings.max_prompts
            and not isinstance(req.prompt[0], int)
        ):
            raise InvalidRequest(
                f"At most {self.settings.max_prompts} prompts are allowed per request.",
                param="prompt",
            )
        prompts = [
            self._fit(p, max_tokens, truncate_to) for p in await self._tokenize_prompts(req.prompt)
        ]
        # best_of > n ranks candidates by cumulative logprob, which vLLM only
        # computes when logprobs are requested.
        sample_logprobs = req.logprobs
        if best_of > req.n and sample_logprobs is None:
            sample_logprobs = 0
        options = SamplingOptions(
            max_tokens=max_tokens,
            n=best_of,
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            min_p=req.min_p,
            seed=req.seed,
            stop=stops or None,
            stop_token_ids=req.stop_token_ids,
            presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty,
            repetition_penalty=req.repetition_penalty,
            logit_bias=self._logit_bias(req.logit_bias),
            min_tokens=req.min_tokens,
            ignore_eos=req.ignore_eos,
            logprobs=sample_logprobs,
            prompt_logprobs=req.logprobs if req.echo else None,
            skip_special_tokens=req.skip_special_tokens,
        )
        prep = PreparedCompletion(
            request_id=f"cmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            arrival=arrival,
            deadline=self._deadline(arrival),
            model=self.model_name,
            prompts=prompts,
            options=options,
            n=req.n,
            echo=req.echo,
            logprobs=req.logprobs,
            include_usage=bool(req.stream_options and req.stream_options.include_usage),
            tokens_as_ids=req.return_tokens_as_token_ids,
        )
        if prep.dropped_tokens:
            self.metrics.truncated_requests.inc()
            self.metrics.truncated_tokens.inc(prep.dropped_tokens)
        return prep

    def _deadline(self, arrival: float) -> float | None:
        timeout = self.settings.request_timeout
        return None if timeout is None else arrival + timeout

    async def _tokenize_prompts(
        self, prompt: str | list[str] | list[int] | list[list[int]]
    ) -> list[PreparedPrompt]:
        if isinstance(prompt, str):
            prompt = [prompt]
        if not prompt:
            raise InvalidRequest("prompt must not be empty.", param="prompt")
        items: list[str] | list[list[int]] | list[list[int] | str]
        items = [prompt] if isinstance(prompt[0], int) else prompt
        encoded = iter(await self.tokenizer.encode_all([i for i in items if isinstance(i, str)]))
        out = []
        for item in items:
            if isinstance(item, str):
                out.append(PreparedPrompt(token_ids=next(encoded), text=item))
                continue
            ids = list(item)
            if not ids:
                raise InvalidRequest("A token-id prompt must not be empty.", param="prompt")
            if max(ids) >= self.engine.vocab_size:
                raise InvalidRequest(
                    f"Token ids must be below the vocabulary size {self.engine.vocab_size}.",
                    param="prompt",
                )
            out.append(PreparedPrompt(token_ids=ids, text=None))
        return out

    def _fit(
        self, prompt: PreparedPrompt, max_tokens: int, truncate_to: int | None
    ) -> PreparedPrompt:
        """Apply truncate_prompt_tokens and the context limit to one prompt."""
        kept = fit_prompt(
            prompt.token_ids,
            max_tokens,
            self.engine.max_model_len,
            policy=self.truncation,
            truncate_to=truncate_to,
            bos=self.engine.bos_token_id,
        )
        if kept is prompt.token_ids:
            return prompt
        return PreparedPrompt(token_ids=kept, text=None, dropped=len(prompt.token_ids) - len(kept))

    def _logit_bias(self, bias: dict[str, float] | None) -> dict[int, float] | None:
        if not bias:
            return None
        out: dict[int, float] = {}
        for key, value in bias.items():
            try:
                token = int(key)
            except ValueError:
                raise InvalidRequest(
                    "logit_bias keys must be token ids.", param="logit_bias"
                ) from None
            if not 0 <= token < self.engine.vocab_size:
                raise InvalidRequest(
                    f"logit_bias token ids must be in [0, {self.engine.vocab_size}).",
                    param="logit_bias",
                )
            out[token] = value
        return out

    # -- running ----------------------------------------------------------

    async def _run_prompt(
        self, prompt: PreparedPrompt, options: SamplingOptions, request_id: str
    ) -> AsyncGenerator[RequestOutput, None]:
        """One engine request, tracked for drain and counted once it is accepted."""
        self._active.add(request_id)
        try:
            counted = False
            async for out in self.engine.generate(prompt.token_ids, options, request_id):
                if not counted:
                    self.metrics.prompt_tokens.inc(len(prompt.token_ids))
                    counted = True
                yield out
        finally:
            self._active.discard(request_id)

    async def _outputs(
        self, prep: PreparedCompletion
    ) -> AsyncGenerator[tuple[int, RequestOutput], None]:
        """Engine outputs of every prompt, tagged with the prompt's index, as they come."""
        if len(prep.prompts) == 1:
            async for out in self._run_prompt(prep.prompts[0], prep.options, prep.request_id):
                yield 0, out
            return
        queue: asyncio.Queue[tuple[int, RequestOutput] | Exception | None] = asyncio.Queue()

        async def pump(i: int, prompt: PreparedPrompt) -> None:
            try:
                async for out in self._run_prompt(prompt, prep.options, f"{prep.request_id}-{i}"):
                    queue.put_nowait((i, out))
            except Exception as exc:
                queue.put_nowait(exc)
            finally:
                queue.put_nowait(None)

        tasks = [asyncio.create_task(pump(i, p)) for i, p in enumerate(prep.prompts)]
        try:
            running = len(tasks)
            while running:
                item = await queue.get()
                if item is None:
                    running -= 1
                elif isinstance(item, Exception):
                    raise item
                else:
                    yield item
        finally:
            # Cancelling a pump cancels its engine.generate, which aborts the request.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _timed_out(self, prep: PreparedCompletion) -> RequestTimeout:
        self.metrics.timeouts.inc()
        return RequestTimeout(
            f"The request did not finish within {self.settings.request_timeout:g} seconds "
            "(GATEWAY_REQUEST_TIMEOUT); its generation was stopped."
        )

    async def complete(self, prep: PreparedCompletion) -> Completion:
        place = self.admission.enter(prep.prompt_tokens)
        try:
            async with asyncio.timeout_at(prep.deadline):
                await place.wait()
                return await self._complete(prep)
        except TimeoutError:
            raise self._timed_out(prep) from None
        finally:
            place.release()

    async def _complete(self, prep: PreparedCompletion) -> Completion:
        states: dict[tuple[int, int], _ChoiceState] = {}
        # Per prompt, from its first output that has them: vLLM's later
        # outputs carry an empty list, and with n > 1 a sample may start in
        # one of those.
        prompt_logprobs: dict[int, Sequence[PositionLogprobs | None]] = {}
        try:
            async for i, out in self._outputs(prep):
                if out.prompt_logprobs:
                    prompt_logprobs.setdefault(i, out.prompt_logprobs)
                for o in out.outputs:
                    state = states.get((i, o.index))
                    if state is None:
                        state = states[(i, o.index)] = self._start_choice(prep, i, prompt_logprobs)
                    self._advance(prep, state, o)
                    state.text.append(o.text)
                    if o.cumulative_logprob is not None:
                        state.cumulative_logprob = o.cumulative_logprob
        except asyncio.CancelledError:
            # The route cancels us when the client leaves; the deadline does too.
            if prep.deadline is None or time.monotonic() < prep.deadline:
                self.metrics.client_aborts.inc()
            raise
        choices: list[CompletionChoice] = []
        completion_tokens = 0
        for i in range(len(prep.prompts)):
            candidates = [states[k] for k in sorted(states) if k[0] == i]
            completion_tokens += sum(s.tokens for s in candidates)
            if len(candidates) > prep.n:  # best_of: keep the n most likely.
                candidates.sort(key=lambda s: s.cumulative_logprob, reverse=True)
                candidates = candidates[: prep.n]
            for j, state in enumerate(candidates):
                choices.append(
                    {
                        "index": i * prep.n + j,
                        "text": "".join(state.text),
                        "logprobs": state.logprobs if prep.logprobs is not None else None,
                        "finish_reason": state.finish_reason,
                    }
                )
        return {
            "id": prep.request_id,
            "object": "text_completion",
            "created": prep.created,
            "model": prep.model,
            "choices": choices,
            "usage": self._usage(prep, completion_tokens),
        }

    async def open_stream(self, prep: PreparedCompletion) -> CompletionStream:
        """Admit the request now (503 when full). With a running place, start
        it and wait for its first output, so that errors the engine raises on
        admission still become a proper HTTP status. A queued request returns
        at once: it waits inside the stream, whose keep-alive comments tell
        the client and proxies that it is alive."""
        stream = CompletionStream(self, prep, self.admission.enter(prep.prompt_tokens))
        if stream.place.queued:
            return stream
        try:
            await stream.start()
        except BaseException:
            await stream.close()
            raise
        return stream

    async def _chunks(self, stream: CompletionStream) -> AsyncIterator[str]:
        prep = stream.prep
        deadline = prep.deadline
        states: dict[tuple[int, int], _ChoiceState] = {}
        prompt_logprobs: dict[int, Sequence[PositionLogprobs | None]] = {}
        completion_tokens = 0
        base = {
            "id": prep.request_id,
            "object": "text_completion",
            "created": prep.created,
            "model": prep.model,
        }
        usage_field = {"usage": None} if prep.include_usage else {}

        # The primed first output, then the rest, without another generator
        # layer on this per-token path.
        try:
            if stream.outputs is None:
                await stream.start()  # it was queued
            outputs = stream.outputs
            assert outputs is not None
            pending, stream.first = stream.first, None
            while True:
                if pending is not None:
                    (i, out), pending = pending, None
                else:
                    try:
                        async with asyncio.timeout_at(deadline):
                            i, out = await anext(outputs)
                    except StopAsyncIteration:
                        break
                if out.prompt_logprobs:
                    prompt_logprobs.setdefault(i, out.prompt_logprobs)
                for o in out.outputs:
                    key = (i, o.index)
                    state = states.get(key)
                    before = 0  # where this chunk's logprobs start
                    if state is None:
                        state = states[key] = self._start_choice(prep, i, prompt_logprobs)
                    elif state.logprobs is not None:
                        before = len(state.logprobs["tokens"])
                    prefix = "".join(state.text)  # the echoed prompt, first time only
                    state.text.clear()
                    self._advance(prep, state, o)
                    completion_tokens += len(o.token_ids)
                    text = prefix + o.text
                    new_logprobs = (
                        state.logprobs is not None and len(state.logprobs["tokens"]) > before
                    )
                    if not text and o.finish_reason is None and not new_logprobs:
                        continue  # nothing new to tell (e.g. bytes held back by the detokenizer)
                    logprobs: CompletionLogprobs | None = None
                    if state.logprobs is not None:
                        lp = state.logprobs
                        logprobs = {
                            "tokens": lp["tokens"][before:],
                            "token_logprobs": lp["token_logprobs"][before:],
                            "top_logprobs": lp["top_logprobs"][before:],
                            "text_offset": lp["text_offset"][before:],
                        }
                    chunk = {
                        **base,
                        "choices": [
                            {
                                "index": i * prep.n + o.index,
                                "text": text,
                                "logprobs": logprobs,
                                "finish_reason": o.finish_reason,
                            }
                        ],
                        **usage_field,
                    }
                    yield json.dumps(chunk, ensure_ascii=False)
        except (asyncio.CancelledError, GeneratorExit):
            self.metrics.client_aborts.inc()  # the client went away mid-stream
            raise
        except TimeoutError:
            raise self._timed_out(prep) from None
        finally:
            await stream.close()  # aborts the engine request now if unfinished
        if prep.include_usage:
            yield json.dumps({**base, "choices": [], "usage": self._usage(prep, completion_tokens)})

    def _start_choice(
        self,
        prep: PreparedCompletion,
        prompt_index: int,
        prompt_logprobs: dict[int, Sequence[PositionLogprobs | None]],
    ) -> _ChoiceState:
        state = _ChoiceState(timer=RequestTimer(prep.arrival))
        if prep.logprobs is not None:
            state.logprobs = {
                "tokens": [],
                "token_logprobs": [],
                "top_logprobs": [],
                "text_offset": [],
            }
        if prep.echo:
            prompt = prep.prompts[prompt_index]
            text = prompt.text
            if text is None:
                text = self.tokenizer.sync.decode(prompt.token_ids, skip_special_tokens=True)
            state.text.append(text)
            if state.logprobs is not None:
                self._add_logprobs(
                    state, prompt.token_ids, prompt_logprobs.get(prompt_index), prep.tokens_as_ids
                )
        return state

    def _advance(self, prep: PreparedCompletion, state: _ChoiceState, o: CompletionOutput) -> None:
        n = len(o.token_ids)
        state.tokens += n
        metrics = self.metrics
        if n:
            metrics.generation_tokens.inc(n)
            if state.timer is not None:
                state.timer.tokens_out(metrics, n)
        if o.finish_reason is not None:
            state.finish_reason = o.finish_reason
            metrics.finished.labels(metrics.model, o.finish_reason).inc()
            if state.timer is not None:
                state.timer.finish(metrics)
        if state.logprobs is not None and o.logprobs is not None:
            self._add_logprobs(state, o.token_ids, o.logprobs, prep.tokens_as_ids)

    def _token_name(self, as_ids: bool, token_id: int, entry: Logprob | None) -> str:
        if as_ids:
            return f"token_id:{token_id}"
        if entry is not None and entry.decoded_token is not None:
            return entry.decoded_token
        return self.tokenizer.sync.decode([token_id], skip_special_tokens=False)

    def _add_logprobs(
        self,
        state: _ChoiceState,
        token_ids: Sequence[int],
        positions: Sequence[PositionLogprobs | None] | None,
        as_ids: bool,
    ) -> None:
        lp = state.logprobs
        assert lp is not None
        for pos, token_id in enumerate(token_ids):
            step = positions[pos] if positions is not None and pos < len(positions) else None
            chosen = step.get(token_id) if step is not None else None
            token = self._token_name(as_ids, token_id, chosen)
            lp["tokens"].append(token)
            lp["token_logprobs"].append(chosen.logprob if chosen is not None else None)
            lp["top_logprobs"].append(
                None
                if step is None
                else {self._token_name(as_ids, t, e): e.logprob for t, e in step.items()}
            )
            lp["text_offset"].append(state.offset)
            state.offset += len(token)

    def _usage(self, prep: PreparedCompletion, completion_tokens: int) -> Usage:
        prompt_tokens = prep.prompt_tokens
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }


class CompletionStream:
    """A streaming request's resources: its admission place and its engine
    outputs. Iterating it yields the JSON chunks; `close()` aborts what is
    unfinished and gives the place back. The HTTP layer calls `close()` when
    the response ends however it ends (even if iteration never started), so
    nothing is held after the client has gone."""

    def __init__(self, service: CompletionService, prep: PreparedCompletion, place: Place):
        self.service = service
        self.prep = prep
        self.place = place
        self.outputs: AsyncGenerator[tuple[int, RequestOutput], None] | None = None
        self.first: tuple[int, RequestOutput] | None = None
        self._closed = False

    async def start(self) -> None:
        """Wait for a running place, submit, and wait for the first output."""
        try:
            async with asyncio.timeout_at(self.prep.deadline):
                await self.place.wait()
                self.outputs = self.service._outputs(self.prep)
                try:
                    self.first = await anext(self.outputs)
                except StopAsyncIteration:
                    self.first = None
        except TimeoutError:
            raise self.service._timed_out(self.prep) from None

    def __aiter__(self) -> AsyncIterator[str]:
        return self.service._chunks(self)

    def failed(self, error: GatewayError) -> None:
        metrics = self.service.metrics
        metrics.stream_errors.labels(metrics.model, error.type).inc()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self.outputs is not None:
                await self.outputs.aclose()
        finally:
            self.place.release()
