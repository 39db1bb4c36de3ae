"""Prompt rows and chat formatting shared by `run` / `bench` and `train`.

* ``read_jsonl``: rows of a (optionally gzipped) JSONL file, a bad line named by path:line;
* ``prompt_text``: the prompt of one row - Spec-Bench ``turns`` (first turn), ``prompt``,
  ``text``, ``instruction``, ``question``, ``problem`` or ShareGPT ``conversations``;
* ``prompt_messages``: a multi-turn row (``messages`` / ``conversations`` ending in a user turn
  after earlier turns) as a list of ``{"role", "content"}`` messages - the training data's prompts;
* ``encode_prompt``: token ids of a prompt (a string, or such a message list), through the
  tokenizer's chat template (thinking disabled) when asked for and available.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Iterable, Optional

from .errors import InputError


def read_jsonl(path: Path) -> Iterable[dict]:
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(f"{path}:{n}: not valid JSON ({e})") from None


def prompt_text(row: dict, field: Optional[str] = None) -> Optional[str]:
    if not isinstance(row, dict):
        return None
    if field is not None:
        v = row.get(field)
        return v[0] if isinstance(v, list) and v and isinstance(v[0], str) else v
    if isinstance(row.get("turns"), list) and row["turns"]:
        return row["turns"][0]
    for key in ("prompt", "text", "instruction", "question", "problem"):
        if isinstance(row.get(key), str):
            return row[key]
    conv = row.get("conversations") or row.get("messages")
    if isinstance(conv, list):
        for m in conv:
            role = m.get("from") or m.get("role")
            if role in ("human", "user"):
                return m.get("value") or m.get("content")
    return None


ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def prompt_messages(row: dict) -> Optional[list[dict]]:
    """The conversation of a multi-turn row (more than one message, the last one the user's), in
    ``{"role", "content"}`` form; None for a single-turn row."""
    conv = row.get("messages") or row.get("conversations") if isinstance(row, dict) else None
    if not isinstance(conv, list) or len(conv) < 2:
        return None
    msgs = [{"role": ROLES.get(m.get("role") or m.get("from"), "user"), "content": m.get("content") or m.get("value") or ""}
            for m in conv]
    return msgs if msgs[-1]["role"] == "user" else None


def encode_prompt(tokenizer, prompt: "str | list[dict]", chat_template: bool = True,
                  system_prompt: Optional[str] = None) -> list[int]:
    turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if chat_template and getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else [])
        messages += turns
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                            enable_thinking=False, return_dict=False)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    text = prompt if isinstance(prompt, str) else "\n\n".join(m["content"] for m in turns)
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])
