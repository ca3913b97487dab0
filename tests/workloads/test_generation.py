"""KV-cache generation: prompts, padding, the cache against recomputation, sampling settings, the context."""

import pytest
import torch

from tests.workloads.tiny_models import VOCAB, tiny_model, tokens
from workloads.generation import Sampling, generate
from workloads.model import (
    ATTENTION_MASKS,
    POSITION_KINDS,
    KVCache,
)


def assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def greedy(model, prompt: torch.Tensor, n: int, **kwargs) -> torch.Tensor:
    """prompt (B, T) + n greedy tokens, (B, T + n)."""
    out = generate(model, prompt.tolist(), n, Sampling(temperature=0), **kwargs)
    return torch.cat((prompt, torch.tensor(out.tokens)), dim=1)


def sample(model, prompt: torch.Tensor, n: int, seed: int = 0, **sampling) -> torch.Tensor:
    out = generate(model, prompt.tolist(), n, Sampling(**sampling), generator=torch.Generator().manual_seed(seed))
    return torch.cat((prompt, torch.tensor(out.tokens)), dim=1)


def test_generate_appends_tokens_after_the_prompt():
    model, prompt = tiny_model(), tokens((2, 5))
    out = sample(model, prompt, 7)
    assert out.shape == (2, 12) and out.dtype == torch.long
    assert torch.equal(out[:, :5], prompt)
    assert ((out >= 0) & (out < VOCAB)).all()


def test_greedy_is_deterministic_and_takes_the_argmax():
    model, prompt = tiny_model(), tokens((2, 5))
    out = greedy(model, prompt, 6)
    assert torch.equal(out, greedy(model, prompt, 6))
    for t in range(5, 11):
        assert torch.equal(out[:, t], model(out[:, :t])[:, -1].argmax(-1))


@pytest.mark.parametrize("n_kv_heads", [0, 2])
@pytest.mark.parametrize("position", POSITION_KINDS)
def test_kv_cache_gives_the_no_cache_tokens_and_logits(position, n_kv_heads):
    model, prompt = tiny_model(position=position, n_kv_heads=n_kv_heads), tokens((2, 5)).tolist()
    cached = generate(model, prompt, 12, Sampling(temperature=0), use_cache=True, keep_logits=True)
    recomputed = generate(model, prompt, 12, Sampling(temperature=0), use_cache=False, keep_logits=True)
    assert cached.tokens == recomputed.tokens
    assert_same(cached.logits, recomputed.logits)


@pytest.mark.parametrize("position", POSITION_KINDS)
def test_decoding_through_the_cache_matches_the_training_forward(position):
    model, x = tiny_model(position=position, n_kv_heads=2), tokens((2, 20))
    cache = KVCache(model.cfg, 2, 20, "cpu")
    pieces = [model.decode(x[:, :7], cache)] + [model.decode(x[:, t : t + 1], cache) for t in range(7, 20)]
    assert_same(torch.cat(pieces, dim=1), model(x))


@pytest.mark.parametrize("attention_mask", ATTENTION_MASKS)
@pytest.mark.parametrize("position", POSITION_KINDS)
def test_each_prompt_of_a_padded_batch_gives_what_it_gives_alone(position, attention_mask):
    model = tiny_model(position=position, attention_mask=attention_mask)
    prompts = [tokens((1, n), seed=n)[0].tolist() for n in (3, 9, 1, 6)]
    batched = generate(model, prompts, 8, Sampling(temperature=0), keep_logits=True)
    for row, prompt in enumerate(prompts):
        alone = generate(model, [prompt], 8, Sampling(temperature=0), keep_logits=True)
        assert batched.tokens[row] == alone.tokens[0]
        assert_same(batched.logits[row], alone.logits[0])
        # And alone equals the plain forward over the whole text: padding shifted no position.
        text = torch.tensor([prompt + alone.tokens[0]])
        assert torch.equal(model(text[:, :-1])[0, len(prompt) - 1 :].argmax(-1), text[0, len(prompt) :])


def test_generation_stops_each_row_at_end_of_document():
    model, prompt = tiny_model(), tokens((2, 5))
    free = generate(model, prompt.tolist(), 10, Sampling(temperature=0))
    eos = free.tokens[0][3]  # make one of row 0's greedy tokens the end-of-document token

    def until_eos(row: list[int]) -> list[int]:
        return row[: row.index(eos)] if eos in row else row

    stopped = generate(model, prompt.tolist(), 10, Sampling(temperature=0), eos_id=eos)
    assert stopped.tokens == [until_eos(row) for row in free.tokens]
    assert stopped.stopped[0] and len(stopped.tokens[0]) <= 3


def test_sampling_is_reproducible_with_a_generator():
    model, prompt = tiny_model(), tokens((2, 5))
    assert torch.equal(sample(model, prompt, 8, seed=5), sample(model, prompt, 8, seed=5))


@pytest.mark.parametrize("filtering", [dict(top_k=1), dict(top_p=1e-6), dict(top_k=3, top_p=1e-6)])
def test_top_k_1_and_tiny_top_p_equal_greedy(filtering):
    model, prompt = tiny_model(), tokens((2, 5))
    assert torch.equal(sample(model, prompt, 8, temperature=1.0, **filtering), greedy(model, prompt, 8))


def test_top_k_and_top_p_restrict_samples_to_the_likely_tokens():
    model = tiny_model()
    prompt = tokens((1, 5)).repeat(300, 1)
    probs = model(prompt[:1])[0, -1].softmax(-1)
    ranked = probs.argsort(descending=True)

    top_k = sample(model, prompt, 1, top_k=3)[:, -1]
    assert set(top_k.tolist()) <= set(ranked[:3].tolist())

    nucleus_size = int((probs[ranked].cumsum(0) < 0.5).sum()) + 1  # fewest tokens reaching 0.5
    top_p = sample(model, prompt, 1, seed=1, top_p=0.5)[:, -1]
    assert set(top_p.tolist()) <= set(ranked[:nucleus_size].tolist())
    assert len(set(top_p.tolist())) > 1 or nucleus_size == 1


def test_generation_stays_inside_the_context():
    model = tiny_model(position="learned", max_seq_len=8)
    assert greedy(model, tokens((2, 6)), 2).shape == (2, 8)
    with pytest.raises(ValueError, match="at most 2 new tokens fit"):
        greedy(model, tokens((2, 6)), 3)


def test_generate_refuses_bad_sampling_settings():
    model, prompt = tiny_model(), tokens((1, 3)).tolist()
    with pytest.raises(ValueError, match="temperature"):
        generate(model, prompt, 1, Sampling(temperature=-1.0))
    with pytest.raises(ValueError, match="top_p"):
        generate(model, prompt, 1, Sampling(top_p=0.0))
