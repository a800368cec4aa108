from __future__ import annotations

from fastapi import APIRouter, Response

from app.deps import ServiceDep
from app.errors import InvalidRequest
from app.schemas import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse
from app.utils import json_response

router = APIRouter()


@router.post("/tokenize", response_model=None)
async def tokenize(body: TokenizeRequest, service: ServiceDep) -> Response:
    """Count and list the tokens of a prompt (vLLM's shape)."""
    service.check_model(body.model)
    tokenizer = service.tokenizer
    tokens = await tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens)
    result: TokenizeResponse = {
        "count": len(tokens),
        "max_model_len": service.engine.max_model_len,
        "tokens": tokens,
    }
    if body.return_token_strs:
        result["token_strs"] = await tokenizer.token_strs(tokens)
    return json_response(result)


@router.post("/detokenize", response_model=None)
async def detokenize(body: DetokenizeRequest, service: ServiceDep) -> Response:
    """Turn token ids back into text (vLLM's shape)."""
    service.check_model(body.model)
    if body.tokens and max(body.tokens) >= service.engine.vocab_size:
        raise InvalidRequest(
            f"Token ids must be below the vocabulary size {service.engine.vocab_size}.",
            param="tokens",
        )
    result: DetokenizeResponse = {
        "prompt": await service.tokenizer.decode(body.tokens, skip_special_tokens=False)
    }
    return json_response(result)
