"""`python -m orchestrator.generate CHECKPOINT --prompt TEXT | --prompts FILE`: sample text from a checkpoint.

Loads any checkpoint this project writes (a checkpoint directory, `best_checkpoint`,
or a run directory for its latest one) as a plain model, without Ray or DeepSpeed's
engine, and continues every prompt in one batch with the KV cache. Each prompt
starts a new document (it follows an end-of-document token, as documents do in
training), and generation stops at the end of the document or the model's context.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from orchestrator.config.parser import run_cli
from orchestrator.model_tools.generation import fit_prompts, read_prompts
from workloads.checkpoints.loading import load_checkpoint
from workloads.errors import UserInputError
from workloads.generation import Sampling, context_room, generate


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.generate", description=__doc__.splitlines()[0])
    parser.add_argument(
        "checkpoint", help="checkpoint directory, <run>/best_checkpoint, or a run directory (its latest checkpoint)"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="one prompt")
    source.add_argument(
        "--prompts",
        type=Path,
        help="a file of prompts: .jsonl with a 'prompt' field per line, else one prompt per line",
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=128, help="new tokens per prompt (capped to fit the context)"
    )
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens; 0 = off")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling; 1 = off")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument(
        "--truncate-prompts",
        action="store_true",
        help="cut prompts longer than the context to their last tokens (else they are refused)",
    )
    parser.add_argument(
        "--no-cache", action="store_true", help="recompute the whole sequence every step (slow; for comparison)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.max_new_tokens < 1:
        raise UserInputError(f"--max-new-tokens: must be >= 1, got {args.max_new_tokens}")
    sampling = Sampling(args.temperature, args.top_k, args.top_p)
    try:
        sampling.validate()
    except ValueError as e:
        raise UserInputError(f"--{str(e).split()[0].replace('_', '-')}: {e}") from None
    texts = read_prompts(args.prompt, args.prompts)
    loaded = load_checkpoint(args.checkpoint, args.device)
    tokenizer, context = loaded.tokenizer, loaded.config.max_seq_len
    # A prompt opens a new document: in training every document follows an end-of-document token.
    prompts = fit_prompts(
        [[tokenizer.eos_id, *tokenizer.encode(t)] for t in texts], context, args.max_new_tokens, args.truncate_prompts
    )
    room = context_room(loaded.model, [len(p) for p in prompts])
    max_new = min(args.max_new_tokens, room)
    if max_new < args.max_new_tokens:
        print(
            f"generate: --max-new-tokens capped at {max_new}: the longest prompt has {max(map(len, prompts))} tokens "
            f"and the context is {context}",
            file=sys.stderr,
        )
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    out = generate(
        loaded.model,
        prompts,
        max_new,
        sampling,
        eos_id=tokenizer.eos_id,
        generator=generator,
        use_cache=not args.no_cache,
    )
    completions = [tokenizer.decode(ids) for ids in out.tokens]
    summary = (
        f"{out.new_tokens} new tokens for {len(prompts)} prompt(s) in {out.seconds:.2f} s "
        f"({out.tokens_per_s:,.0f} tok/s, {'no cache' if args.no_cache else 'KV cache'}, {args.device}) "
        f"from {loaded.checkpoint} (step {loaded.step})"
    )
    if args.json:
        print(
            json.dumps(
                {
                    "checkpoint": str(loaded.checkpoint),
                    "step": loaded.step,
                    "completions": [
                        {"prompt": p, "completion": c, "new_tokens": len(ids), "stopped_at_end_of_document": s}
                        for p, c, ids, s in zip(texts, completions, out.tokens, out.stopped)
                    ],
                    "new_tokens": out.new_tokens,
                    "seconds": out.seconds,
                    "tokens_per_s": out.tokens_per_s,
                },
                indent=2,
            )
        )
        return
    for number, (prompt, completion) in enumerate(zip(texts, completions), start=1):
        print(f"=== {number} ===\n{prompt}{completion}")
    print(f"generate: {summary}")


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
