"""The completion pipeline, put together in one place from settings, the
engine, metrics and the ledger (app.tenancy): admission, the runner,
preparation (text and chat), and the service over them. app.main hands this
to the supervisor, which calls it once the engine is built."""

from __future__ import annotations

from typing import get_args

from app.adapters.assembly import build_adapters
from app.completion.admission import Admission
from app.completion.chat import ChatPreparer
from app.completion.chat_template import ChatTemplate, load_source
from app.completion.generation import Runner
from app.completion.prepare import Preparer
from app.completion.service import CompletionService
from app.completion.tokenizer import AsyncTokenizer
from app.config import Settings
from app.engine.protocol import Engine, StructuredKind
from app.errors import EngineFailure, EngineStalled, RequestTimeout, Unavailable
from app.observability.metrics import Metrics
from app.tenancy.ledger import Ledger


def build_service(
    settings: Settings, engine: Engine, metrics: Metrics, ledger: Ledger | None = None
) -> CompletionService:
    places = settings.max_inflight
    if settings.tenants_file is not None:
        # The backlog waits in our queue, where priority and fair shares
        # order it, not in the engine's first-come one.
        places = min(places, engine.max_num_seqs)
    admission = Admission(
        places,
        settings.max_queue,
        settings.max_queued_tokens,
        reserve=settings.priority_reserve,
        reserve_priority=settings.reserve_priority,
        engine_slots=engine.max_num_seqs,
    )
    metrics.watch_admission(lambda: admission.running, lambda: admission.queued)
    tokenizer = AsyncTokenizer(engine.tokenizer)
    preparer = Preparer(engine, settings, tokenizer, metrics)
    preparer.catalog.adapters = build_adapters(settings, engine, metrics.registry)
    tok = engine.tokenizer
    template = ChatTemplate(
        load_source(settings.chat_template, tok),
        bos=str(getattr(tok, "bos_token", None) or ""),
        eos=str(getattr(tok, "eos_token", None) or ""),
    )
    chat = ChatPreparer(preparer, template)
    runner = Runner(engine, admission, metrics, settings.request_timeout)
    # The error events a stream can end with and the constraint kinds,
    # exported at 0 from the start so that rate() and alerts see the first.
    for error in (EngineFailure, EngineStalled, RequestTimeout, Unavailable):
        metrics.stream_errors.labels(metrics.model, error.type)
    for kind in get_args(StructuredKind):
        metrics.structured_requests.labels(metrics.model, kind)
    return CompletionService(preparer, chat, runner, metrics, ledger)
