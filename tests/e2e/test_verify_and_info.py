"""make verify (the card's accuracy checks), token ids in logprobs, /v1/gateway/info."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx

from tests.support.gateway import ROOT, Gateway

REFERENCE = ROOT / "bench" / "reference" / "tiny-mobilellama-cpu-bf16.json"


def verify(gw: Gateway, *args: str) -> subprocess.CompletedProcess[str]:
    """`make verify`, exactly as a user runs it against a gateway."""
    return subprocess.run(
        ["make", "--no-print-directory", "-s", "verify", f"URL={gw.url}", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


def test_verify_passes_determinism_and_the_stored_cpu_reference(gateway: Gateway) -> None:
    r = verify(gateway, f"REFERENCE={REFERENCE}")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    report = json.loads(r.stdout)
    assert report["determinism"] == "480/480 tokens identical"
    reference = report["reference"]
    agree, total = map(int, reference["tokens_agreeing"].split("/"))
    assert agree == total and not reference["disagreements"]
    # Every token up to a near-tie matched (the stored reference comes from an
    # AVX-512 machine; other kernels may break a tie the other way).
    assert total + 32 * len(reference["tie_divergences"]) >= 160
    assert total >= 80, reference
    assert reference["max_logprob_diff"] <= 0.05


def test_verify_fails_against_a_different_reference(gateway: Gateway, tmp_path: Path) -> None:
    ref = json.loads(REFERENCE.read_text())
    first = next(iter(ref))
    ref[first]["logprobs"][0] -= 1.0
    bad = tmp_path / "ref.json"
    bad.write_text(json.dumps(ref))
    r = verify(gateway, f"REFERENCE={bad}")
    assert r.returncode != 0  # make exits 2 when tools.verify fails
    assert json.loads(r.stdout)["reference"]["max_logprob_diff"] >= 1.0


def test_tokens_as_token_ids(http: httpx.Client, tokenizer) -> None:  # type: ignore[no-untyped-def]
    r = http.post(
        "/v1/completions",
        json={
            "prompt": "The capital of France is",
            "max_tokens": 3,
            "echo": True,
            "logprobs": 1,
            "temperature": 0,
            "return_tokens_as_token_ids": True,
        },
    )
    lp = r.json()["choices"][0]["logprobs"]
    ids = [int(t.removeprefix("token_id:")) for t in lp["tokens"]]
    assert ids[:6] == [1, 450, 7483, 310, 3444, 338]
    assert all(k.startswith("token_id:") for top in lp["top_logprobs"][1:] for k in top)
    assert r.json()["choices"][0]["text"] == tokenizer.decode(ids, skip_special_tokens=True)


def test_gateway_info_shows_the_effective_engine(http: httpx.Client) -> None:
    info = http.get("/v1/gateway/info").json()
    engine = info["engine"]
    assert engine["device"] == "cpu"
    assert engine["engine_args"]["dtype"] == "bfloat16"  # the cpu profile
    assert engine["engine_args"]["enforce_eager"] is True
    assert engine["max_model_len"] == 2048 and engine["max_num_seqs"] == 64
    assert engine["versions"]["vllm"] and engine["versions"]["torch"]
    assert engine["versions"]["torch_npu"] is None
    assert isinstance(engine["graph"]["capture_sizes"], list)
    assert info["lifecycle"]["phase"] == "ready"
    # make test-compat runs this suite on vLLM 0.18 and says so.
    expected = os.environ.get("EXPECT_VLLM_VERSION")
    if expected:
        assert engine["versions"]["vllm"] == expected
