"""`python -m experiments.random_checkpoint --shape llama2-7b --tokenizer DIR --out DIR`: a checkpoint folder of
a paper model's decoder shape with random weights, and a real tokenizer whose vocabulary sizes the embeddings.

What a user's run reads is a folder (config, safetensors shards, tokenizer): a model too large to carry to a
machine is made there instead, at its real shape, so that loading, calibration, evaluation and export run the
paths they run on the real checkpoint. Weights are drawn by the model's own initialisation on `--device` (fast
on a GPU) from `--seed`.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

from dlp.storage.models import DTYPES

from .bench.shapes import SHAPES


def write_random_checkpoint(shape: str, tokenizer_dir: Path, out: Path, dtype: str = "bfloat16",
                            device: str = "cpu", seed: int = 0) -> dict:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    fields = {**SHAPES[shape], "vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
              "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
              "tie_word_embeddings": False}
    config = AutoConfig.for_model(**fields)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype])
    model.save_pretrained(out, max_shard_size="5GB")
    tokenizer.save_pretrained(out)
    return {"shape": shape, "parameters": sum(p.numel() for p in model.parameters()), "dtype": dtype,
            "vocab_size": len(tokenizer), "seed": seed,
            "bytes": sum(p.stat().st_size for p in Path(out).glob("*.safetensors"))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", required=True, choices=sorted(SHAPES))
    parser.add_argument("--tokenizer", required=True, type=Path, help="a folder holding a tokenizer")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not (args.tokenizer / "tokenizer_config.json").exists():
        print(f"error: {args.tokenizer} holds no tokenizer (tokenizer_config.json)", file=sys.stderr)
        return 2
    t = time.perf_counter()
    info = write_random_checkpoint(args.shape, args.tokenizer, args.out, args.dtype, args.device, args.seed)
    print(f"{args.out}: {info['shape']} shape, {info['parameters'] / 1e9:.2f}B parameters, "
          f"{info['bytes'] / 2**30:.1f} GiB in {time.perf_counter() - t:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
