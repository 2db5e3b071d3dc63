"""The chat template and the prompt with retrieved sources.

The base models built here (``flockd lm build-base``) have no chat template of their own,
so the server uses the plain one the LM recipe trains chat data with
(``flockd.lm.text``): each message is ``<|role|>`` on a line, then its content and a
newline; the prompt ends with ``<|assistant|>`` and a newline, where the model's answer
starts. A model fine-tuned on chat jsonl by a flockd task has seen exactly this.

With retrieval, the sources go into a system message before the conversation, numbered
from 1, as LlamaIndex and LangChain assemble them, with an instruction to answer from
them and cite them as [n].
"""

from __future__ import annotations

from collections.abc import Sequence

from flockd.serve.requests import ChatMessage
from flockd.serve.retrieval import Hit

SOURCES_INSTRUCTION = (
    "Answer the question from the numbered sources below. Cite the sources you use as [n]. "
    "If the sources do not contain the answer, say so."
)


def chat_prompt(messages: Sequence[ChatMessage]) -> str:
    """The conversation in the plain template, ready for the assistant's turn."""
    return "".join(f"<|{m.role}|>\n{m.content}\n" for m in messages) + "<|assistant|>\n"


def with_sources(messages: Sequence[ChatMessage], hits: Sequence[Hit]) -> list[ChatMessage]:
    """The conversation with the sources as a leading system message (none: unchanged)."""
    if not hits:
        return list(messages)
    numbered = "\n\n".join(f"[{i}] ({hit.file}, chunk {hit.chunk})\n{hit.text}" for i, hit in enumerate(hits, 1))
    return [ChatMessage("system", f"{SOURCES_INSTRUCTION}\n\n{numbered}"), *messages]


def retrieval_query(messages: Sequence[ChatMessage]) -> str:
    """What to search for: the last user message."""
    for message in reversed(messages):
        if message.role == "user":
            return message.content
    return ""
