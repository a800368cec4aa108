"""A completion request, checked and made ready to run: model, limits, stop
sequences, logit_bias, prompts tokenised and fitted to the context. No
engine calls, no FastAPI."""

from __future__ import annotations

import hashlib
import hmac
import os
import time

from app.completion.catalog import Catalog, Target
from app.completion.constraints import request_constraint
from app.completion.context_limit import check_max_tokens, fit_prompt
from app.completion.prepared import PreparedCompletion, PreparedPrompt, ServedModel
from app.completion.schemas import ChatCompletionRequest, CompletionRequest, Prompt
from app.completion.tokenizer import AsyncTokenizer
from app.config import Settings
from app.engine.protocol import Engine, SamplingOptions, StructuredOutput
from app.errors import InvalidRequest
from app.ids import new_id
from app.observability.metrics import Metrics
from app.tenancy.tenants import Tenant


class Preparer:
    def __init__(
        self, engine: Engine, settings: Settings, tokenizer: AsyncTokenizer, metrics: Metrics
    ):
        self.engine = engine
        self.settings = settings
        self.tokenizer = tokenizer
        self.metrics = metrics
        first, *aliases = settings.model_names
        self.model = ServedModel(first, engine.max_model_len, engine.vocab_size, tuple(aliases))
        self.catalog = Catalog(self.model)  # its adapters: set by app.completion.assembly
        # Per process: salts are only compared within this engine's cache.
        self._salt_key = os.urandom(32)

    def cache_salt(self, client_salt: str | None, tenant: bytes | None) -> str | None:
        """The engine's cache partition. With API keys, a keyed hash of the
        caller's key (never the key), so one key's cached prefixes never
        shorten another's prefill; a client's own salt only partitions within
        its key. Without keys the cache is shared, and a client salt is
        vLLM's as is."""
        if tenant is None:
            return client_salt
        mac = hmac.new(self._salt_key, tenant, hashlib.sha256)
        if client_salt is not None:
            mac.update(b"\0" + client_salt.encode())
        return mac.hexdigest()

    async def prepare(
        self, req: CompletionRequest, tenant: Tenant | None = None
    ) -> PreparedCompletion:
        arrival = time.monotonic()
        target = self.catalog.resolve(req.model, tenant)  # 404 before any work
        if req.suffix is not None:
            raise InvalidRequest("suffix is not supported by this model.", param="suffix")
        max_tokens = 16 if req.max_tokens is None else req.max_tokens
        # Scoring (lm-eval's loglikelihood): the prompt and its logprobs back, nothing
        # generated; the engine's one step (as vLLM's server runs) is left out.
        echo_only = max_tokens == 0
        if echo_only and not req.echo:
            raise InvalidRequest(
                "max_tokens must be at least 1 (0 only with echo: true, to score the prompt).",
                param="max_tokens",
            )
        if echo_only and req.stream:
            raise InvalidRequest(
                "max_tokens 0 (scoring the prompt) cannot be streamed.", param="max_tokens"
            )
        max_tokens = max(max_tokens, 1)
        check_max_tokens(max_tokens, self.engine.max_model_len)
        best_of = req.best_of if req.best_of is not None else req.n
        if best_of < req.n:
            raise InvalidRequest("best_of must be greater than or equal to n.", param="best_of")
        if req.stream and best_of > req.n:
            raise InvalidRequest("best_of greater than n cannot be streamed.", param="best_of")
        self.check_logprobs(req.logprobs, "logprobs")
        truncate_to = req.truncate_prompt_tokens
        if truncate_to == -1:
            truncate_to = None  # vLLM's "-1": the model's limit, which applies anyway.
        if truncate_to == 0:
            raise InvalidRequest(
                "truncate_prompt_tokens must be -1 or at least 1.", param="truncate_prompt_tokens"
            )
        self.stops(req.stop)
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
            self.fit(p, max_tokens, truncate_to) for p in await self._tokenize_prompts(req.prompt)
        ]
        # best_of > n ranks candidates by cumulative logprob, which vLLM only
        # computes when logprobs are requested.
        sample_logprobs = req.logprobs
        if best_of > req.n and sample_logprobs is None:
            sample_logprobs = 0
        options = self.options(
            req,
            max_tokens=max_tokens,
            n=best_of,
            logprobs=sample_logprobs,
            structured=await self.constraint(req),
            prompt_logprobs=req.logprobs if req.echo else None,
        )
        return self.build(
            req,
            arrival,
            prompts,
            options,
            echo=req.echo,
            logprobs=req.logprobs,
            tenant=tenant,
            target=target,
            tokens_as_ids=req.return_tokens_as_token_ids,
            echo_only=echo_only,
        )

    def build(
        self,
        req: CompletionRequest | ChatCompletionRequest,
        arrival: float,
        prompts: list[PreparedPrompt],
        options: SamplingOptions,
        *,
        echo: bool,
        logprobs: int | None,
        tenant: Tenant | None,
        target: Target,
        tokens_as_ids: bool = False,
        dropped_messages: int | None = None,
        echo_only: bool = False,
    ) -> PreparedCompletion:
        """The one builder of a prepared completion, for text and chat
        (`dropped_messages` is chat's); truncation is counted here."""
        chat = dropped_messages is not None
        model, adapter = target
        prep = PreparedCompletion(
            request_id=f"{'chatcmpl' if chat else 'cmpl'}-{new_id()}",
            created=int(time.time()),
            arrival=arrival,
            deadline=self._deadline(arrival),
            model=model,
            adapter=adapter,
            prompts=prompts,
            options=options,
            n=req.n,
            echo=echo,
            logprobs=logprobs,
            include_usage=bool(req.stream_options and req.stream_options.include_usage),
            tokens_as_ids=tokens_as_ids,
            chat=chat,
            dropped_messages=dropped_messages or 0,
            cache_salt=self.cache_salt(req.cache_salt, tenant.identity if tenant else None),
            stream_interval=req.stream_interval or self.settings.stream_interval,
            echo_only=echo_only,
        )
        if tenant is not None:
            prep.priority = tenant.priority(req.priority)
            # Plain API keys share one flow (first-come within it).
            prep.flow = tenant.identity if tenant.named else None
            prep.weight, prep.share = tenant.weight, tenant.share
        else:  # anonymous: never above the floor (the reserve is not for them)
            floor = self.settings.priority_floor
            prep.priority = max(floor, req.priority if req.priority is not None else floor)
        if options.structured is not None:
            self.metrics.structured_requests.labels(
                self.metrics.model, options.structured.kind
            ).inc()
        if prep.dropped_tokens:
            self.metrics.truncated_requests.inc()
            self.metrics.truncated_tokens.inc(prep.dropped_tokens)
        return prep

    def options(
        self,
        req: CompletionRequest | ChatCompletionRequest,
        *,
        max_tokens: int,
        n: int,
        logprobs: int | None,
        structured: StructuredOutput | None,
        prompt_logprobs: int | None = None,
    ) -> SamplingOptions:
        """The sampling options both endpoints share, checked."""
        return SamplingOptions(
            max_tokens=max_tokens,
            n=n,
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            min_p=req.min_p,
            seed=req.seed,
            stop=self.stops(req.stop) or None,
            stop_token_ids=req.stop_token_ids,
            presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty,
            repetition_penalty=req.repetition_penalty,
            logit_bias=self.logit_bias(req.logit_bias),
            min_tokens=req.min_tokens,
            ignore_eos=req.ignore_eos,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            skip_special_tokens=req.skip_special_tokens,
            structured=structured,
        )

    async def constraint(
        self, req: CompletionRequest | ChatCompletionRequest
    ) -> StructuredOutput | None:
        """The request's output constraint, checked (app.completion.constraints)."""
        return await request_constraint(req, self.settings.max_schema_bytes, self.tokenizer.run)

    def _deadline(self, arrival: float) -> float | None:
        timeout = self.settings.request_timeout
        return None if timeout is None else arrival + timeout

    def check_logprobs(self, k: int | None, param: str) -> None:
        """400 for more alternatives per token than the engine returns."""
        if k is not None and k > self.engine.max_logprobs:
            limit = self.engine.max_logprobs
            raise InvalidRequest(f"{param} must be at most {limit}.", param=param)

    def stops(self, stop: str | list[str] | None) -> list[str]:
        stops = [stop] if isinstance(stop, str) else (stop or [])
        if len(stops) > self.settings.max_stop:
            raise InvalidRequest(
                f"At most {self.settings.max_stop} stop sequences are allowed.", param="stop"
            )
        if any(len(s) > self.settings.max_stop_length for s in stops):
            raise InvalidRequest(
                f"Stop sequences are limited to {self.settings.max_stop_length} characters.",
                param="stop",
            )
        return stops

    async def _tokenize_prompts(self, prompt: Prompt) -> list[PreparedPrompt]:
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
            self.model.check_tokens(ids, "prompt")
            out.append(PreparedPrompt(token_ids=ids, text=None))
        return out

    def fit(
        self, prompt: PreparedPrompt, max_tokens: int, truncate_to: int | None
    ) -> PreparedPrompt:
        """Apply truncate_prompt_tokens and the context limit to one prompt."""
        kept = fit_prompt(
            prompt.token_ids,
            max_tokens,
            self.engine.max_model_len,
            policy=self.settings.truncation,
            truncate_to=truncate_to,
            bos=self.engine.bos_token_id,
        )
        if kept is prompt.token_ids:
            return prompt
        return PreparedPrompt(token_ids=kept, text=None, dropped=len(prompt.token_ids) - len(kept))

    def logit_bias(self, bias: dict[str, float] | None) -> dict[int, float] | None:
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
            out[token] = value
        self.model.check_tokens(list(out), "logit_bias")
        return out
