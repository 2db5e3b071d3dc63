"""Retrieval over a node's own documents: chunking, the incremental index (what is read
again and what is not), hostile queries and files, and a known answer through the chat API.

The tiny model's text is noise, so the known-answer test asserts on what retrieval
controls: the fact's file is the first source, the prompt the model saw carries it as
source [1] with the instruction to cite [n]. Whether a real model then cites it is the
model's business, not the server's."""

import os
import sqlite3

import openai
import pytest
from serve_tiny import tiny_model_dir

from flockd.serve.app import ServeApp
from flockd.serve.lm import ServedLM
from flockd.serve.retrieval import (
    IndexReport,
    KnowledgeIndex,
    chunk_text,
    fts5_available,
    match_query,
)
from flockd.serve.thread import ServerThread

FACT = "The lighthouse keeper of Varnholm island is named Odile Brashcombe."
FILLER = {
    "garden.md": "# Garden\n\nTomatoes need sun and water. Prune the basil often.\n\nCompost feeds the soil.",
    "notes/trains.txt": "The night train leaves at nine. Sleeper cars have two berths.\n\nTickets are sold on board.",
    "notes/islands.txt": "Many islands have a harbour and a ferry.\n\n" + FACT + "\n\nThe ferry runs twice a week.",
    "cooking.md": "Bread needs flour, water, salt and time.\n\nA hot oven makes a good crust.",
}


def write(folder, files):
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)


@pytest.fixture
def knowledge(tmp_path):
    folder = tmp_path / "knowledge"
    write(folder, FILLER)
    return folder


def test_fts5_is_there():
    assert fts5_available()


def test_chunks_pack_paragraphs_and_cut_long_ones_at_spaces():
    text = "one two\n\nthree\n\n" + " ".join(["word"] * 100)
    chunks = chunk_text(text, max_chars=60)
    assert chunks[0] == "one two\n\nthree"
    assert all(len(c) <= 60 for c in chunks) and " ".join(chunks[1:]).split() == ["word"] * 100


def test_a_search_finds_the_fact_with_bm25_scores_best_first(knowledge, tmp_path):
    index = KnowledgeIndex(knowledge, tmp_path / "index.sqlite")
    report = index.refresh()
    assert (report.added, report.changed, report.removed) == (4, 0, 0) and report.chunks >= 4
    hits = index.search("Who keeps the lighthouse on Varnholm?", top_k=3)
    assert hits[0].file == "notes/islands.txt" and FACT in hits[0].text
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True) and hits[0].score > 0


def test_reindexing_reads_only_what_changed(knowledge, tmp_path):
    db = tmp_path / "index.sqlite"
    KnowledgeIndex(knowledge, db).refresh()
    index = KnowledgeIndex(knowledge, db)  # persistent: a new process finds it built
    assert index.refresh() == IndexReport(0, 0, 0, 4, index.chunk_count())
    stat = (knowledge / "garden.md").stat()
    os.utime(knowledge / "garden.md", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched, same bytes
    assert index.refresh().unchanged == 4
    (knowledge / "cooking.md").write_text("Soup needs a pot and patience.")
    (knowledge / "notes/trains.txt").unlink()
    (knowledge / "new.md").write_text("Zebras are striped.")
    report = index.refresh()
    assert (report.added, report.changed, report.removed, report.unchanged) == (1, 1, 1, 2)
    assert index.search("bread crust") == [] and index.search("soup")[0].file == "cooking.md"
    assert index.search("night train") == [] and index.search("zebras")[0].file == "new.md"


def test_hostile_queries_are_words_only(knowledge, tmp_path):
    index = KnowledgeIndex(knowledge, tmp_path / "index.sqlite")
    index.refresh()
    for query in ['"', "NEAR(a b", "a OR", "*", "text:secret", "') DROP TABLE files; --", "^", "", "   "]:
        index.search(query)  # no sqlite3.OperationalError
    assert match_query("a\" OR b*") == '"a" OR "or" OR "b"'
    assert index.chunk_count() > 0


def test_only_txt_and_md_inside_the_folder_are_read(knowledge, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("the password is hunter2")
    (knowledge / "link.txt").symlink_to(secret)
    (knowledge / "linkdir").symlink_to(tmp_path, target_is_directory=True)
    (knowledge / "data.csv").write_text("hunter2,1")
    index = KnowledgeIndex(knowledge, tmp_path / "index.sqlite")
    index.refresh()
    assert index.search("hunter2 password") == []


def test_the_index_holds_no_sql_from_file_names(knowledge, tmp_path):
    (knowledge / "x'); DROP TABLE files; --.md").write_text("odd name, fine text")
    index = KnowledgeIndex(knowledge, tmp_path / "index.sqlite")
    index.refresh()
    assert index.search("odd name")[0].file == "x'); DROP TABLE files; --.md"
    assert sqlite3.connect(tmp_path / "index.sqlite").execute("SELECT count(*) FROM files").fetchone()[0] == 5


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return ServedLM("tiny", tiny_model_dir(tmp_path_factory))


def test_a_chat_with_retrieval_returns_the_fact_as_source_one_and_cites_it(lm, knowledge, tmp_path):
    index = KnowledgeIndex(knowledge, tmp_path / "index.sqlite")
    index.refresh()
    with ServerThread(ServeApp([lm], index=index)) as running:
        client = openai.OpenAI(base_url=running.url + "/v1", api_key="x", max_retries=0)
        question = [{"role": "user", "content": "What is the name of the lighthouse keeper of Varnholm?"}]
        reply = client.chat.completions.create(model="tiny", messages=question, max_tokens=8,
                                               extra_body={"retrieval": {"top_k": 2}, "return_prompt": True})
        sources, prompt = reply.model_extra["sources"], reply.model_extra["prompt"]
        assert sources[0]["index"] == 1 and sources[0]["file"] == "notes/islands.txt" and FACT in sources[0]["text"]
        assert len(sources) <= 2 and sources[0]["score"] >= sources[-1]["score"]
        assert f"[1] (notes/islands.txt, chunk {sources[0]['chunk']})\n" in prompt and FACT in prompt
        assert "Cite the sources you use as [n]" in prompt
        assert prompt.endswith("<|user|>\nWhat is the name of the lighthouse keeper of Varnholm?\n<|assistant|>\n")
        # Streamed: the sources come in the first chunk.
        first = next(iter(client.chat.completions.create(model="tiny", messages=question, max_tokens=4, stream=True,
                                                         extra_body={"retrieval": True})))
        assert first.model_extra["sources"][0]["file"] == "notes/islands.txt"
        # Without retrieval: no sources, no context.
        plain = client.chat.completions.create(model="tiny", messages=question, max_tokens=2,
                                               extra_body={"return_prompt": True})
        assert "sources" not in plain.model_extra and FACT not in plain.model_extra["prompt"]


def test_retrieval_without_a_folder_is_an_error_object(lm):
    with ServerThread(ServeApp([lm])) as running:
        client = openai.OpenAI(base_url=running.url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                           extra_body={"retrieval": True})
        assert caught.value.body["code"] == "retrieval_unavailable"
