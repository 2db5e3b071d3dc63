"""`scripts/bench serve`: the serving path against its baselines, in one run.

1. Generation: tokens/s of the same greedy generation (prompt, N new tokens, end-of-text
   ignored) through four paths: transformers' ``model.generate`` called directly (the
   baseline), the server's own token loop called directly (``ServedLM.generate``), the
   API without streaming and the API streaming (the official ``openai`` client over HTTP
   on 127.0.0.1); plus first-token latency of the stream (request sent → first content
   chunk received). The server runs in a thread of this process (its own trio loop), so
   client and server share one interpreter: the API figures include that contention.
2. Retrieval: an FTS5 index of CHUNKS chunks of real text (the standard library's pydoc
   topics and the docstrings of numpy, torch.nn, asyncio and collections, cut into
   ~160-character chunks), searched with queries of three words drawn from the chunks;
   p50/p99 per query against a plain linear scan that scores every chunk by the same BM25
   formula in Python (chunks tokenized beforehand, untimed). Also how often both put the
   same chunk first.

Figures are the median of a few passes on a shared 2-core machine; docs/benchmarks.md,
"Serving", has a run.
"""

from __future__ import annotations

import argparse
import math
import random
import re
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from flockd.serve.retrieval import KnowledgeIndex

_WORD = re.compile(r"\w+")
PROMPT = "Return a new array of given shape and type, filled with"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="", help="an HF-format model dir (default: the testnet base, built once)")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per generation (default 64)")
    parser.add_argument("--passes", type=int, default=9, help="generations per path (default 9)")
    parser.add_argument("--chunks", type=int, default=10_000, help="chunks in the retrieval index (default 10,000)")
    parser.add_argument("--queries", type=int, default=300, help="retrieval queries (default 300)")
    args = parser.parse_args(argv)
    print(f"scripts/bench serve  (commit {_commit()})")
    _generation(_model_dir(args.model), args.tokens, args.passes)
    _retrieval(args.chunks, args.queries)
    return 0


def _model_dir(given: str) -> Path:
    if given:
        return Path(given)
    from flockd.lm.build import BaseBuild, build_base
    from flockd.lm.testnet import TESTNET_BASE_BUILD

    return build_base(BaseBuild(**TESTNET_BASE_BUILD)).path


def _generation(model_dir: Path, tokens: int, passes: int) -> None:
    import openai
    import torch

    from flockd.fl.recipe import limit_torch_threads
    from flockd.serve.app import ServeApp
    from flockd.serve.lm import ServedLM
    from flockd.serve.requests import Sampling
    from flockd.serve.thread import ServerThread

    limit_torch_threads(1)
    lm = ServedLM("bench", model_dir)
    ids = lm.encode_prompt(PROMPT)
    print(f"\ngeneration: {model_dir.name[:16]}… ({lm.parameters:,} parameters), prompt {len(ids)} tokens, "
          f"{tokens} new tokens, greedy, median of {passes} passes taking turns, 1 torch thread")

    def hf_generate() -> int:
        with torch.no_grad():
            out = lm.model.generate(  # type: ignore[operator]  # torch.nn.Module hides it
                torch.tensor([ids]), max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, use_cache=True,
                pad_token_id=lm.tokenizer.pad_id,
            )
        return int(out.shape[1] - len(ids))

    def own_loop() -> int:
        return lm.generate(ids, tokens, Sampling(tokens, 0.0, 1.0, (), None, True)).completion_tokens

    with ServerThread(ServeApp([lm])) as running:
        client = openai.OpenAI(base_url=running.url + "/v1", api_key="unused", max_retries=0)

        def api_whole() -> int:
            usage = client.completions.create(model="bench", prompt=PROMPT, max_tokens=tokens, temperature=0,
                                              extra_body={"ignore_eos": True}).usage
            assert usage is not None
            return usage.completion_tokens

        firsts: list[float] = []

        def api_stream() -> int:
            start = time.perf_counter()
            first = None
            count = 0
            for chunk in client.completions.create(model="bench", prompt=PROMPT, max_tokens=tokens, temperature=0,
                                                   extra_body={"ignore_eos": True}, stream=True,
                                                   stream_options={"include_usage": True}):
                if chunk.choices and chunk.choices[0].text and first is None:
                    first = time.perf_counter() - start
                if chunk.usage is not None:
                    count = chunk.usage.completion_tokens
            firsts.append(first if first is not None else math.nan)
            return count

        paths = {
            "model.generate (transformers, direct)": hf_generate,
            "server's token loop (direct)": own_loop,
            "API, whole response (openai client)": api_whole,
            "API, streamed (openai client)": api_stream,
        }
        rates = _tokens_per_second(paths, passes)
    base = rates["model.generate (transformers, direct)"]
    print(f"  {'path':<40} {'tokens/s':>9} {'vs generate':>12}")
    for label, rate in rates.items():
        note = f"first token {statistics.median(firsts[1:]) * 1000:.1f} ms (median)" if "streamed" in label else ""
        print(f"  {label:<40} {rate:>9.1f} {rate / base:>11.2f}x  {note}")


def _tokens_per_second(paths: dict[str, Callable[[], int]], passes: int) -> dict[str, float]:
    """Median tokens/s of each path; the passes take turns, so the machine's other load
    falls on every path alike."""
    for run in paths.values():
        run()  # warm-up: first-call allocations, the server's imports
    rates: dict[str, list[float]] = {label: [] for label in paths}
    for _ in range(passes):
        for label, run in paths.items():
            start = time.perf_counter()
            count = run()
            rates[label].append(count / (time.perf_counter() - start))
    return {label: statistics.median(values) for label, values in rates.items()}


def _retrieval(chunks: int, queries: int) -> None:
    texts = _chunk_texts(chunks)
    rng = random.Random(7)
    with tempfile.TemporaryDirectory(prefix="flockd-bench-serve-") as work:
        folder = Path(work) / "docs"
        folder.mkdir()
        per_file = 100
        for i in range(0, len(texts), per_file):
            (folder / f"doc{i // per_file:04}.txt").write_text("\n\n".join(texts[i:i + per_file]))
        index = KnowledgeIndex(folder, Path(work) / "index.sqlite", chunk_chars=200)
        start = time.perf_counter()
        report = index.refresh()
        built = time.perf_counter() - start
        start = time.perf_counter()
        index.refresh()
        again = time.perf_counter() - start
        stored = index.texts()
        scan = LinearBM25(stored)
        words = [[w for w in _WORD.findall(t.lower()) if len(w) >= 4] for t in stored]
        asked = [" ".join(rng.sample(ws, 3)) for ws in (rng.choice(words) for _ in range(queries)) if len(ws) >= 3]
        fts, linear, same_top = [], [], 0
        for query in asked:
            start = time.perf_counter()
            hits = index.search(query, 5)
            fts.append(time.perf_counter() - start)
            start = time.perf_counter()
            best = scan.search(query, 5)
            linear.append(time.perf_counter() - start)
            same_top += bool(hits and best and hits[0].text == stored[best[0]])
        index.close()
    print(f"\nretrieval: {report.chunks:,} chunks in {report.added} files (built in {built:.1f} s, an unchanged "
          f"re-index {again * 1000:.0f} ms), {len(asked)} queries of 3 words, top 5")
    print(f"  {'path':<40} {'p50 ms':>8} {'p99 ms':>8}")
    for label, times in (("FTS5 bm25 (the index)", fts), ("linear scan, BM25 in Python", linear)):
        print(f"  {label:<40} {_percentile(times, 50) * 1000:>8.2f} {_percentile(times, 99) * 1000:>8.2f}")
    print(f"  same first chunk in {same_top}/{len(asked)} queries (tokenizers differ slightly)")


def _chunk_texts(count: int) -> list[str]:
    from flockd.lm.corpus import DOMAINS, domain_text, pydoc_topics

    words = " ".join([pydoc_topics(), *(domain_text(d) for d in DOMAINS)]).split()
    texts, piece, size = [], [], 0
    for word in words:
        piece.append(word)
        size += len(word) + 1
        if size >= 160:
            texts.append(" ".join(piece))
            piece, size = [], 0
            if len(texts) == count:
                return texts
    raise SystemExit(f"the corpus gives only {len(texts)} chunks; ask for fewer")


class LinearBM25:
    """BM25 (k1 = 1.2, b = 0.75, FTS5's defaults) over every chunk, one by one."""

    def __init__(self, texts: list[str]) -> None:
        self.docs = [Counter(_WORD.findall(t.lower())) for t in texts]
        self.lengths = [sum(d.values()) for d in self.docs]
        self.average = sum(self.lengths) / len(self.docs)
        self.df: Counter[str] = Counter(w for d in self.docs for w in d)

    def search(self, query: str, top_k: int) -> list[int]:
        terms = set(_WORD.findall(query.lower()))
        n = len(self.docs)
        idf = {t: max(1e-6, math.log((n - self.df[t] + 0.5) / (self.df[t] + 0.5))) for t in terms}
        scores = []
        for i, (doc, length) in enumerate(zip(self.docs, self.lengths, strict=True)):
            score = 0.0
            for t in terms:
                f = doc.get(t, 0)
                if f:
                    score += idf[t] * f * 2.2 / (f + 1.2 * (0.25 + 0.75 * length / self.average))
            if score:
                scores.append((score, i))
        scores.sort(reverse=True)
        return [i for _, i in scores[:top_k]]


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
