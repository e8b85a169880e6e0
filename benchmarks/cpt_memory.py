"""Peak resident memory of retain's continual-pretraining data path and trainer as the corpus grows 10x: tokenizing
(``tokenize_source``) and training (``train_stages`` for a fixed number of updates), each in a fresh process.

    python benchmarks/cpt_memory.py [--quick] [--mb 8] [--factor 10] [--steps 30] [--seq-len 128] [--batch 8]

The corpus of size N is the synthetic biographies (``write_corpus``) repeated to ``--mb`` MB of text, one document per
paragraph; the corpus of size ``factor * N`` is that file repeated ``factor`` times. One byte-level BPE tokenizer
(``train_tokenizer`` on the biographies) serves both. Each measurement runs in its own ``python`` process (this
script with ``--child``) and reads the kernel's high-water mark ``VmHWM`` of ``/proc/self/status`` at the end, next to
``VmRSS`` once its imports are done ("start"). Not ``getrusage(RUSAGE_SELF).ru_maxrss``: in a child started by
``subprocess`` (vfork + exec) Linux reports the parent's peak there when that is higher (the parent's mm's high-water
mark is folded into the child's at exec), so a large parent would inflate every reading.

Goal: peak RSS grows at most 1.1x when the corpus grows 10x. The table shows both phases' peaks, their ratio, and
"grows" = (peak at 10N - peak at N) / (9 x N's text), the MB of memory per MB of corpus: 0 for memory that does not
depend on the corpus, about 2 for a corpus held in memory as a Python ``str`` plus a list of its lines.

Training uses ``TrainConfig``'s defaults apart from the shape, so ``precision=auto``: bf16 autocast on a CPU with native
bf16 (avx512_bf16/amx_bf16), fp32 elsewhere; the header line says which ran.

Findings (default run: 7.5 and 75 MiB of text, AMD EPYC with avx512_bf16, so training ran bf16): both phases are
flat. Tokenizing: peak 255 -> 256 MiB, ratio 1.001, +7 MiB over the start at both sizes (0.00 MiB per MiB of text):
text sources are streamed line by line (``_lines`` in data.py), where reading each file whole and keeping a list of
its lines grew the peak 1.52x (+2.1 MiB per MiB of text, +173 MiB at 75 MiB). Training: peak 513 -> 514 MiB, ratio
1.002 (0.02 MiB per MiB): ``TokenDataset.read`` reads each window with ``os.pread`` from shard files kept open (no
map whose pages stay resident), and the validation batches are capped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def child(args) -> dict:
    """One measurement in this (fresh) process: the RSS after imports and setup, and the peak at the end."""
    import torch
    from transformers import PreTrainedTokenizerFast

    from pretrain.cpt.data import TokenDataset, tokenize_source
    from pretrain.cpt.model import ModelConfig, load_model
    from pretrain.cpt.trainer import CptEvalConfig, StageConfig, TrainConfig, train_stages, use_bf16
    from retain.tracking import Tracker

    torch.set_num_threads(1)
    precision = None
    tokenizer = PreTrainedTokenizerFast.from_pretrained(args.tokenizer)
    if args.child == "tokenize":
        start = _status_kb("VmRSS")
        t0 = time.perf_counter()
        tokenize_source(args.corpus, tokenizer, args.tokens, val_fraction=0.01)
        seconds = time.perf_counter() - t0
    else:
        dataset = TokenDataset(args.tokens)
        model = load_model(ModelConfig(), tokenizer, seed=0)  # the default small random-init Llama
        train = TrainConfig(seq_len=args.seq_len, batch_size=args.batch)  # precision=auto: bf16 on native-bf16 CPUs
        precision = "bf16" if use_bf16(train.precision, torch.device("cpu")) else "fp32"
        stage = StageConfig(name="corpus", tokens=args.steps * args.seq_len * args.batch, mix={"corpus": 1.0})
        start = _status_kb("VmRSS")
        t0 = time.perf_counter()
        with Tracker(args.run_dir) as tracker:
            train_stages(model, {"corpus": dataset}, [stage], train, CptEvalConfig(), args.run_dir, tracker)
        seconds = time.perf_counter() - t0
    peak = _status_kb("VmHWM")
    return {"start_mb": start / 1024, "peak_mb": peak / 1024, "seconds": seconds, "precision": precision}


def measure(phase: str, corpus: Path, tokens: Path, tmp: Path, args) -> dict:
    """Run one measurement in a fresh interpreter and return what it printed."""
    run_dir = tmp / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    command = [sys.executable, __file__, "--child", phase, "--corpus", str(corpus), "--tokens", str(tokens)]
    command += ["--tokenizer", str(tmp / "tokenizer"), "--run-dir", str(run_dir)]
    command += ["--steps", str(args.steps), "--seq-len", str(args.seq_len), "--batch", str(args.batch)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{phase} child failed:\n{done.stderr[-3000:]}")
    shutil.rmtree(run_dir, ignore_errors=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_corpora(tmp: Path, args) -> tuple[Path, Path]:
    """N MB of biographies (repeated), and that file repeated ``factor`` times."""
    from pretrain.cpt.corpora import write_corpus
    from pretrain.cpt.model import train_tokenizer

    bios = write_corpus(tmp / "bios", n_people=500, paraphrases=4, seed=0)["bios"]
    train_tokenizer([bios], vocab_size=4096, out_dir=tmp / "tokenizer")
    paragraphs = bios.read_text(encoding="utf-8").strip("\n") + "\n\n"
    small, large = tmp / "corpus_n.txt", tmp / "corpus_10n.txt"
    small.write_text(paragraphs * max(1, round(args.mb * 1e6 / len(paragraphs))), encoding="utf-8")
    with open(large, "wb") as out:
        for _ in range(args.factor):
            with open(small, "rb") as f:
                shutil.copyfileobj(f, out)
    return small, large


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a ~30 s smoke run (1 MB corpus, 10 updates)")
    parser.add_argument("--mb", type=float, default=8.0, help="MB of text in the corpus of size N")
    parser.add_argument("--factor", type=int, default=10, help="the large corpus is this many times N")
    parser.add_argument("--steps", type=int, default=30, help="optimizer updates of each training run")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--child", choices=["tokenize", "train"], help=argparse.SUPPRESS)
    for hidden in ("--corpus", "--tokens", "--tokenizer", "--run-dir"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    if args.quick:
        args.mb, args.steps = 1.0, 10

    tmp = Path(tempfile.mkdtemp(prefix="cpt-memory-"))
    try:
        corpora = dict(zip(("N", f"{args.factor}N"), write_corpora(tmp, args)))
        results: dict[str, dict[str, dict]] = {"tokenize": {}, "train": {}}
        for size, corpus in corpora.items():
            tokens = tmp / f"tokens_{size}"
            results["tokenize"][size] = measure("tokenize", corpus, tokens, tmp, args)
            results["train"][size] = measure("train", corpus, tokens, tmp, args)
            results["train"][size]["tokens"] = json.loads((tokens / "manifest.json").read_text())["splits"]["train"][
                "num_tokens"
            ]
        text_mb = {size: corpus.stat().st_size / 2**20 for size, corpus in corpora.items()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    small, large = corpora
    print(
        f"corpus: synthetic biographies, N = {text_mb[small]:.1f} MiB of text ({results['train'][small]['tokens']:,} "
        f"train tokens), {large} = {text_mb[large]:.1f} MiB; training: default small Llama, TrainConfig defaults "
        f"(precision=auto: {results['train'][small]['precision']} here), {args.steps} updates of {args.batch} x "
        f"{args.seq_len} tokens; each row a fresh process; MiB of VmRSS/VmHWM"
    )
    print(f"{'phase':10}{'size':>6}{'start':>9}{'peak':>9}{'peak-start':>12}{'seconds':>9}")
    for phase, by_size in results.items():
        for size, r in by_size.items():
            print(
                f"{phase:10}{size:>6}{r['start_mb']:9.0f}{r['peak_mb']:9.0f}{r['peak_mb'] - r['start_mb']:12.0f}"
                f"{r['seconds']:9.1f}"
            )
    for phase, by_size in results.items():
        lo, hi = by_size[small]["peak_mb"], by_size[large]["peak_mb"]
        grows = (hi - lo) / (text_mb[large] - text_mb[small])
        verdict = "ok" if hi / lo <= 1.1 else "over the goal"
        print(
            f"{phase:10} peak RSS {large}/N: {hi / lo:.3f} (goal <= 1.1: {verdict}); "
            f"grows {grows:.2f} MiB per MiB of corpus"
        )


if __name__ == "__main__":
    main()
