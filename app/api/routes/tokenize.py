from __future__ import annotations

from fastapi import APIRouter, Response

from app.api.deps import CatalogDep, TenantDep, TokenizerDep
from app.api.responses import json_response
from app.completion.schemas import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)

router = APIRouter()


@router.post("/tokenize", response_model=None)
async def tokenize(
    body: TokenizeRequest, catalog: CatalogDep, tenant: TenantDep, tokenizer: TokenizerDep
) -> Response:
    """Count and list the tokens of a prompt (vLLM's shape)."""
    catalog.resolve(body.model, tenant)  # an adapter shares the model's tokenizer
    model = catalog.model
    tokens = await tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens)
    result: TokenizeResponse = {
        "count": len(tokens),
        "max_model_len": model.max_model_len,
        "tokens": tokens,
    }
    if body.return_token_strs:
        result["token_strs"] = await tokenizer.token_strs(tokens)
    return json_response(result)


@router.post("/detokenize", response_model=None)
async def detokenize(
    body: DetokenizeRequest, catalog: CatalogDep, tenant: TenantDep, tokenizer: TokenizerDep
) -> Response:
    """Turn token ids back into text (vLLM's shape)."""
    catalog.resolve(body.model, tenant)
    model = catalog.model
    model.check_tokens(body.tokens, "tokens")
    result: DetokenizeResponse = {
        "prompt": await tokenizer.decode(body.tokens, skip_special_tokens=False)
    }
    return json_response(result)
