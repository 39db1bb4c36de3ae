"""The training caches are keyed by content: a prompt file that grows by appending reuses the
regenerated responses of its earlier full shards and the features of every earlier sequence;
another target (weights, GGUF file, tokenizer) or generation setting misses them. An over-long
chat prompt is cut in the middle, keeping its assistant header. And a fresh DFlash drafter can
start from the target's own decoder layers."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import specforge_core.training.data as data
from specforge_core.build import load_target
from specforge_core.errors import RecipeError
from specforge_core.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "recipes" / "train_dflash_tiny.yaml")


@pytest.fixture(scope="module")
def target():
    return load_target(load_recipe(RECIPE).cfg.target)


def test_grown_prompt_file_reuses_cached_shards_and_features(target, tmp_path, monkeypatch):
    cfg = data.RegenConfig(max_new_tokens=6, max_length=64, chat_template=False)
    generated = _counting_generations(monkeypatch)
    first = [f"prompt number {i}" for i in range(5)]
    grown = first + [f"another prompt {i}" for i in range(3)]

    seqs_first = data.regenerate(target, first, cfg, tmp_path, "tiny", progress=False, shard_size=2)
    assert len(generated) == 5
    generated.clear()
    seqs_grown = data.regenerate(target, grown, cfg, tmp_path, "tiny", progress=False, shard_size=2)
    # shards [0, 1] and [2, 3] are reused; [4, 5] and [6, 7] are new (prompt 4's shard changed)
    assert len(generated) == 4
    assert len(seqs_grown) == 8
    for a, b in zip(seqs_first, seqs_grown):
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.loss_mask, b.loss_mask)

    target.capture([0, 1])
    computed = []
    real_features = target.hidden_features
    monkeypatch.setattr(target, "hidden_features", lambda ids, *a: computed.append(ids) or real_features(ids, *a))
    feats_dir = tmp_path / "features"
    data.cache_features(target, seqs_first, feats_dir, progress=False)
    assert len(computed) == 5
    computed.clear()
    data.cache_features(target, seqs_grown, feats_dir, progress=False)
    assert len(computed) == 3  # only the appended sequences
    length = max(len(s.input_ids) for s in seqs_grown)
    batch = data.load_features(feats_dir, seqs_grown[4:6], length)  # [2, length, F]
    direct = real_features(seqs_grown[5].input_ids[None])[0]
    assert torch.allclose(batch[1, : direct.shape[0]], direct)
    assert batch[1, direct.shape[0]:].abs().sum() == 0  # right padding


def _fresh_drafter(target, layers):
    r = load_recipe(RECIPE, [f"drafter.options.init_from_target_layers={layers}"])
    d = r.drafter_cls(r.drafter_options, block_size=r.cfg.drafter.block_size, checkpoint=None)
    d.bind(target)
    return d


def test_drafter_layers_can_start_from_the_target_layers(target):
    d = _fresh_drafter(target, "[1]")
    source = target.adapter.layers[1]
    mine = d.model.layers[0]
    assert torch.equal(mine.self_attn.q_proj.weight, source.self_attn.q_proj.weight)
    assert torch.equal(mine.mlp.down_proj.weight, source.mlp.down_proj.weight)
    assert torch.equal(mine.post_attention_layernorm.weight, source.post_attention_layernorm.weight)
    assert mine.self_attn.q_proj.weight.data_ptr() != source.self_attn.q_proj.weight.data_ptr()  # a copy
    with pytest.raises(RecipeError, match="does not exist"):
        _fresh_drafter(target, "[7]")
    with pytest.raises(RecipeError, match="2 ids for 1 draft layers"):
        _fresh_drafter(target, "[0,1]")


def _counting_generations(monkeypatch) -> list:
    generated = []  # prompts the target actually generated for (the real function, counted)
    real = data._generate_batch
    monkeypatch.setattr(data, "_generate_batch", lambda t, batch, c, stop: generated.extend(batch) or real(t, batch, c, stop))
    return generated


def test_changed_target_weights_gguf_or_tokenizer_miss_the_regeneration_cache(tmp_path, monkeypatch):
    from specforge_core.training.fingerprint import target_identity

    r = load_recipe(RECIPE)
    target = load_target(r.cfg.target)  # its own copy: its weights are changed below
    cfg = data.RegenConfig(max_new_tokens=4, max_length=64, chat_template=False)
    prompts = ["first prompt", "second prompt", "third prompt"]
    generated = _counting_generations(monkeypatch)
    identity = target_identity(target, r.cfg.target)
    data.regenerate(target, prompts, cfg, tmp_path, identity, progress=False)
    assert len(generated) == 3
    data.regenerate(target, prompts, cfg, tmp_path, target_identity(target, r.cfg.target), progress=False)
    assert len(generated) == 3  # same weights, same settings: cached

    with torch.no_grad():  # one weight of the target changes a little, its name does not
        next(target.model.parameters()).view(-1)[0] += 1e-3
    changed = target_identity(target, r.cfg.target)
    assert changed != identity
    data.regenerate(target, prompts, cfg, tmp_path, changed, progress=False)
    assert len(generated) == 6  # regenerated, not served the other weights' answers
    with torch.no_grad():
        next(target.model.parameters()).view(-1)[0] -= 1e-3
    assert target_identity(target, r.cfg.target) == identity

    other_file = load_recipe(RECIPE, ["target.gguf_file=other.gguf"]).cfg.target
    assert target_identity(target, other_file) != identity
    target.tokenizer = _chat_tokenizer()
    assert target_identity(target, r.cfg.target) != identity
    data.regenerate(target, prompts, dataclasses.replace(cfg, max_new_tokens=5), tmp_path, identity, progress=False)
    assert len(generated) == 9  # another generation setting: regenerated too


def _chat_tokenizer():
    """The byte tokenizer with a ChatML chat template (a fresh copy: the shared one stays plain)."""
    from specforge_core.byte_tokenizer import byte_tokenizer

    tok = byte_tokenizer.__wrapped__()
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return tok


def test_over_long_chat_prompt_is_cut_in_the_middle_and_keeps_its_assistant_header(tmp_path, monkeypatch, capsys):
    from specforge_core.prompts import encode_prompt
    from specforge_core.target import TargetModel
    from tiny import tiny_model

    tok = _chat_tokenizer()
    target = TargetModel(tiny_model(vocab=320), tok)
    cfg = data.RegenConfig(max_new_tokens=4, max_length=64, chat_template=True)
    long, short = "tell me about " + "many things " * 20, "hi"
    full = encode_prompt(tok, long, True)
    assert len(full) > 100
    seqs = data.regenerate(target, [long, short], cfg, tmp_path, "tiny-chat", progress=False)
    prompt = seqs[0].input_ids[seqs[0].loss_mask == 0].tolist()
    assert prompt == full[:31] + full[-32:]  # 63 = max_length - 1 tokens: head and tail kept
    assert tok.decode(prompt).startswith("<|im_start|>user\ntell me")
    assert tok.decode(prompt).endswith("\n<|im_start|>assistant\n")  # the assistant header
    assert seqs[0].loss_mask.sum() >= 1  # a response follows the header
    assert seqs[1].input_ids[seqs[1].loss_mask == 0].tolist() == encode_prompt(tok, short, True)  # untouched
    assert "regeneration: 1 of 2 prompts cut in the middle to 63 tokens" in capsys.readouterr().out
    assert data.fit_prompt([1, 2, 3, 4, 5], 3) == ([1, 4, 5], True)
    assert data.fit_prompt([1, 2, 3], 3) == ([1, 2, 3], False)


def test_multi_turn_rows_regenerate_the_answer_to_the_last_turn(tmp_path):
    """A ``messages`` row with earlier turns (scripts/build_diverse_prompts.py, source 5) is kept whole:
    the prompt is the chat-templated conversation, the response regenerated answers its last user turn,
    and the cache key tells it from the same text as a single turn."""
    import json

    from specforge_core.prompts import encode_prompt
    from specforge_core.target import TargetModel
    from tiny import tiny_model

    conv = [{"role": "user", "content": "name a fruit"}, {"role": "assistant", "content": "a pear"},
            {"role": "user", "content": "another one?"}]
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"messages": conv}) + "\n" + json.dumps({"prompt": "hi"}) + "\n"
                 + json.dumps({"messages": [{"role": "user", "content": "one turn only"}]}) + "\n")
    prompts = data.read_prompts(str(f))
    assert prompts == [conv, "hi", "one turn only"]  # a single-turn messages row stays a string
    tok = _chat_tokenizer()
    ids = encode_prompt(tok, conv, True)
    assert tok.decode(ids) == ("<|im_start|>user\nname a fruit<|im_end|>\n<|im_start|>assistant\na pear<|im_end|>\n"
                               "<|im_start|>user\nanother one?<|im_end|>\n<|im_start|>assistant\n")
    target = TargetModel(tiny_model(vocab=320), tok)
    cfg = data.RegenConfig(max_new_tokens=4, max_length=256, chat_template=True)
    seqs = data.regenerate(target, prompts[:2], cfg, tmp_path, "tiny-chat", progress=False)
    assert seqs[0].input_ids[seqs[0].loss_mask == 0].tolist() == ids and seqs[0].loss_mask.sum() >= 1
    flat = " ".join(m["content"] for m in conv)
    assert data.cache_key("t", [conv], cfg) != data.cache_key("t", [flat], cfg)


def test_static_cache_regeneration_gives_the_same_responses_under_its_own_key(tmp_path):
    """``data.regen_static_cache``: transformers' StaticCache in the batched generate; on the tiny fp32
    target it regenerates the same tokens as the dynamic cache, batched and alone, and caches under a
    key of its own (a key without it is unchanged, so older caches stay valid)."""
    from specforge_core.target import TargetModel
    from tiny import tiny_model

    tok = _chat_tokenizer()
    target = TargetModel(tiny_model(vocab=320), tok)
    prompts = ["tell me a story", "hi", "what is a bee?"]
    plain = data.RegenConfig(max_new_tokens=12, max_length=128, batch_size=1)
    static = dataclasses.replace(plain, batch_size=2, static_cache=True)
    a = data.regenerate(target, prompts, plain, tmp_path / "a", "tiny", progress=False)
    b = data.regenerate(target, prompts, static, tmp_path / "b", "tiny", progress=False)
    assert [s.input_ids.tolist() for s in a] == [s.input_ids.tolist() for s in b]
    assert data.cache_key("tiny", prompts, plain) != data.cache_key("tiny", prompts, static)
    legacy = {k: v for k, v in dataclasses.asdict(plain).items() if k != "static_cache"}  # the key before the option
    import hashlib
    import json

    h = hashlib.sha256(json.dumps(["tiny", legacy, data.PROMPT_FORMAT], sort_keys=True, default=str).encode())
    for p in prompts:
        h.update(p.encode())
        h.update(b"\0")
    assert data.cache_key("tiny", prompts, plain) == h.hexdigest()[:16]
