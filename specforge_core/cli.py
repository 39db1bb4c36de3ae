"""``specforge`` command line: run | bench | plugins.

Every user mistake surfaces as one ``specforge: error: ...`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from .errors import SpecForgeError

EPILOG_OVERRIDES = """\
overrides are OmegaConf dotlist entries applied on top of the recipe, e.g.
  sampling.temperature=0.7  drafter.block_size=16  corrector.name=none
  generation.max_new_tokens=256  target.device=cpu  prompts.limit=10
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="specforge",
        description="Lossless speculative decoding: block-parallel drafters, the Domino corrector, "
        "chain / tree verifiers - composed by OmegaConf recipes.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser(
        "run", help="generate with a recipe and print the text and its stats",
        description="Generate with a recipe. Prints the text, then one stats line "
        "(new tokens, tau = tokens per target forward, tokens/s).",
        epilog=EPILOG_OVERRIDES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("recipe", help="recipe YAML path (or a name found in ./recipes)")
    run.add_argument("overrides", nargs="*", help="key=value recipe overrides")
    run.add_argument("--prompt", help="prompt text (default: the recipe's first prompt)")
    run.add_argument("--json", metavar="PATH", help="also write the output and stats as JSON")
    run.add_argument("--dry-run", action="store_true",
                     help="validate the recipe and print the resolved plan without loading any model")

    bench = sub.add_parser(
        "bench", help="benchmark a recipe against autoregressive decoding",
        description="Run the recipe's prompts through plain autoregressive decoding (transformers' "
        "generate) and the recipe's speculative method in one process; report tau, speedup, "
        "tokens/s, per-position acceptance and, at T=0, whether every output is identical.",
        epilog=EPILOG_OVERRIDES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument("recipe", help="recipe YAML path (or a name found in ./recipes)")
    bench.add_argument("overrides", nargs="*", help="key=value recipe overrides")
    bench.add_argument("--json", metavar="PATH", help="write the results as JSON")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar")

    plugins = sub.add_parser(
        "plugins", help="list registered drafters, correctors and verifiers",
        description="List every registered component by kind, with the distribution that registered it "
        "(entry-point group `specforge`).",
    )
    plugins.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # overrides may also come after options (`bench r.yaml --json o.json a=1`)
    unknown = [e for e in extra if "=" not in e or e.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = list(getattr(args, "overrides", []) or []) + extra
    try:
        return {"run": cmd_run, "bench": cmd_bench, "plugins": cmd_plugins}[args.command](args)
    except SpecForgeError as e:
        print(f"specforge: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("specforge: interrupted", file=sys.stderr)
        return 130


def _load(args, check_plugins: bool = True):
    from .recipe import load_recipe
    from .registry import default_registry

    registry = default_registry()
    return registry, load_recipe(args.recipe, args.overrides, registry, check_plugins=check_plugins)


def cmd_run(args) -> int:
    if args.dry_run:
        # the plan is printed even when a plugin is missing, then the missing plugin is the error
        from .recipe import resolve_plugins

        registry, resolved = _load(args, check_plugins=False)
        problem = None
        try:
            resolve_plugins(resolved, registry)
        except SpecForgeError as e:
            problem = e
        print(plan_text(resolved))
        if problem is not None:
            raise problem
        return 0
    registry, resolved = _load(args)
    from .build import build_pipeline, load_prompts

    prompt = args.prompt
    if prompt is None:
        prompts = load_prompts(resolved)
        if not prompts:
            from .errors import InputError

            raise InputError("no prompt: pass --prompt TEXT or give the recipe `prompts.inline` / `prompts.file`")
        prompt = prompts[0].text
    pipe = build_pipeline(resolved, registry)
    ids = pipe.encode(prompt)
    res = pipe.generator.generate(ids, int(resolved.cfg.generation.max_new_tokens), pipe.sampling(), pipe.stop_token_ids())
    text = pipe.tokenizer.decode(res.tokens, skip_special_tokens=True)
    print(text)
    tps = len(res.tokens) / res.wall_s if res.wall_s > 0 else 0.0
    print(f"[{resolved.method}] {len(res.tokens)} tokens, tau {res.tau:.2f}, {tps:.1f} tokens/s, "
          f"{res.num_target_forwards} target forwards", file=sys.stderr)
    if args.json:
        _write_json(args.json, {
            "method": resolved.method, "text": text, "output_ids": res.tokens, "prompt_tokens": res.prompt_len,
            "new_tokens": len(res.tokens), "tau": res.tau, "tokens_per_s": tps, "wall_time": res.wall_s,
            "accept_lengths": [1 + c.num_accepted for c in res.cycles],
        })
    return 0


def cmd_bench(args) -> int:
    registry, resolved = _load(args)
    from .bench.runner import markdown_table, run_bench
    from .build import build_pipeline, load_prompts

    prompts = load_prompts(resolved)
    if not prompts:
        from .errors import InputError

        raise InputError("the recipe has no prompts (prompts.inline / prompts.file)")
    pipe = build_pipeline(resolved, registry)
    result = run_bench(pipe, prompts, progress=not args.no_progress)
    print(markdown_table(result))
    if result.lossless is False:
        bad = [p["question_id"] for p in result.prompts if p["identical_to_ar"] is False]
        print(f"specforge: LOSSLESS CHECK FAILED for prompts {bad}", file=sys.stderr)
    if args.json:
        _write_json(args.json, result.to_dict())
    return 1 if result.lossless is False else 0


def cmd_plugins(args) -> int:
    from .registry import default_registry

    regs = default_registry().all()
    if args.json:
        print(json.dumps([{"kind": r.kind, "name": r.name, "distribution": r.distribution,
                           "class": f"{r.cls.__module__}.{r.cls.__qualname__}", "description": r.description}
                          for r in regs], indent=2))
        return 0
    rows = [("KIND", "NAME", "DISTRIBUTION", "DESCRIPTION")] + [(r.kind, r.name, r.distribution, r.description) for r in regs]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + "  " + row[3])
    return 0


def plan_text(resolved) -> str:
    from .recipe import to_yaml

    cfg = resolved.cfg
    t = cfg.target
    lines = [f"recipe: {resolved.path}", f"method: {resolved.method}"]
    if t.model:
        where = "local directory" if Path(t.model).is_dir() else "Hugging Face Hub id (downloaded on first run)"
        lines.append(f"target: {t.model} ({where}), dtype {t.dtype}, device {t.device}")
    else:
        lines.append(f"target: random-weight {t.config.model_type} from target.config (seed {t.init_seed})")
    for kind in ("drafter", "corrector", "verifier"):
        cls = getattr(resolved, f"{kind}_cls")
        if cls is None:
            name = cfg[kind].name
            lines.append(f"{kind}: none" if name == "none" else f"{kind}: {name} (NOT INSTALLED)")
            continue
        extra = ""
        if kind == "drafter":
            extra = f", block_size {cfg.drafter.block_size}"
        ckpt = cfg[kind].get("checkpoint")
        if ckpt:
            extra += f", checkpoint {ckpt}"
        lines.append(f"{kind}: {cfg[kind].name} ({cls.__module__}.{cls.__qualname__}{extra}) "
                     f"options {getattr(resolved, f'{kind}_options')}")
    s = cfg.sampling
    lines.append(f"sampling: temperature {s.temperature}, top_k {s.top_k}, top_p {s.top_p}, seed {s.seed}")
    lines.append(f"generation: max_new_tokens {cfg.generation.max_new_tokens}")
    lines.append("--- resolved recipe ---")
    lines.append(to_yaml(cfg).rstrip())
    return "\n".join(lines)


def _write_json(path: str, obj) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, p)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
