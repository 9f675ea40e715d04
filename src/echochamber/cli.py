"""The one command-line entry point. Subcommands are the pipeline's stages, in order:

    echochamber data       mixture -> tokenizer + token caches + index    (OUT/data)
    echochamber pretrain   OLMo from scratch on the mixture               (OUT/pretrain/model)
    echochamber sample     look at what a model writes, graded by format
    echochamber rl         RL post-training with verifiable rewards       (OUT/rl)
    echochamber eval       pass@1 / pass@k / maj@k and format shares
    echochamber probe      each format's accuracy when the model is forced into it, beside its greedy pick
    echochamber report     figures + report.html for one or more RL runs
    echochamber grade      label and grade any JSONL of responses
    echochamber quickstart every stage on a laptop, end to end
    echochamber sweep      a grid of configs, one run at a time, sharing pretraining (DIR/sweep.json, report.html)
    echochamber study      a finding of the paper in miniature: a fixed sweep + a report that answers it
    echochamber check      a few minutes of every stage at the config's shapes: does this (GPU) machine run it?
    echochamber export-hf / import-hf   Hugging Face OlmoForCausalLM folders

Every stage takes --config (a YAML path or a built-in name, default `quickstart`) and dotted overrides:
    echochamber rl --config quickstart rl.kl_coef=0.01 seed=2 out_dir=runs/kl01
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="quickstart",
                   help="YAML config: a path or a built-in name (default: quickstart)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. rl.kl_coef=0.01")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (parameters, tokens, steps, batch, memory per GPU by component, checkpoint "
                        "size, hours on 8 H100s; WORLD_SIZE sets the GPUs, memory_gb the budget) and exit, non-zero "
                        "when it does not fit in memory")


def _add_sweep_dry_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true",
                   help="print every cell (name, overrides, the pretrained model it shares and with which cells, "
                        "what --out already holds: dataset built, pretraining and RL finished or their last "
                        "checkpoint's step) and the wall time still to run per cell and in total (from the times "
                        "--out recorded, else a few seconds of timing here; RL as an upper bound), then exit "
                        "without writing anything")


def _add_launcher_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster", "run the cells as jobs through submitit (launcher.py) instead of one after "
                                        "another in this process")
    g.add_argument("--launcher", choices=["local", "slurm"],
                   help="slurm: submit every job at once, each after the jobs it needs (data, pretraining), and "
                        "return; local: submitit's local executor, the jobs one after another on this machine")
    g.add_argument("--partition", help="slurm partition")
    g.add_argument("--account", help="slurm account")
    g.add_argument("--nodes", type=int, default=1, help="nodes per pretraining or RL job (default 1)")
    g.add_argument("--gpus-per-node", type=int, default=0,
                   help="GPUs per node = torchrun processes per node (default 0: no GPU, one process)")
    g.add_argument("--time", type=int, default=24 * 60, metavar="MINUTES", help="each job's time limit (default 1440)")
    g.add_argument("--cpus-per-node", type=int, help="slurm --cpus-per-task of each job's one task per node")
    g.add_argument("--setup", action="append", default=[], metavar="LINE",
                   help="a shell line each job runs first, e.g. 'source .venv/bin/activate'; repeat for more")


def _launch_options(args):
    from .launcher import LaunchOptions

    return LaunchOptions(kind=args.launcher, partition=args.partition, account=args.account, nodes=args.nodes,
                         gpus_per_node=args.gpus_per_node, time_min=args.time, cpus_per_node=args.cpus_per_node,
                         setup=args.setup)


def _add_resume_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-config-change", action="store_true",
                   help="resume a run folder whose recorded config differs (the recorded config is updated)")


def _load(args):
    from .config import load_run_config

    cfg = load_run_config(args.config, args.overrides)
    if getattr(args, "dry_run", False):  # every stage with config arguments: the plan instead of the run
        from .plan import PLANS

        if args.command not in PLANS:
            sys.exit(f"echochamber {args.command}: --dry-run plans data, pretrain, rl and eval")
        text, mem = PLANS[args.command](cfg)
        print(text)
        if mem is not None and not mem.fits:  # the run would run out of memory: say which setting to change
            sys.exit(f"echochamber {args.command}: {mem.refusal()}")
        sys.exit(0)
    return cfg


def cmd_data(args) -> None:
    from .data import build_dataset

    cfg = _load(args)
    manifest = build_dataset(cfg.data, Path(cfg.out_dir) / "data")
    print(f"wrote {Path(cfg.out_dir) / 'data'}: {manifest['total_tokens']:,} tokens")


def cmd_pretrain(args) -> None:
    from .pretrain import pretrain

    cfg = _load(args)
    final = pretrain(cfg, Path(cfg.out_dir) / "pretrain", allow_config_change=args.allow_config_change)
    print(f"model: {final}")


def cmd_sample(args) -> None:
    from . import formats
    from .evaluate import load_dataset, load_policy
    from .interpreter import generate_texts
    from .rewards import format_summary_table
    from .sampler import SampleConfig

    from . import distributed as dist

    cfg = _load(args)
    model, tok = load_policy(args.model or Path(cfg.out_dir) / "pretrain" / "model", dist.init(cfg.device).device)
    problems = load_dataset(args.dataset, args.n, cfg, cfg.eval.data_path)
    scfg = SampleConfig(max_new_tokens=cfg.eval.max_new_tokens, temperature=args.temperature,
                        top_p=cfg.eval.top_p if args.temperature > 0 else 1.0, n=1, dtype=cfg.eval.sample_dtype,
                        compile=cfg.eval.sample_compile)
    texts = [t[0] for t in generate_texts(model, tok, [p.question for p in problems], scfg, cfg.seed,
                                          cfg.eval.batch_prompts, "sample", add_bos=cfg.eval.add_bos,
                                          interpreter=args.interpreter or cfg.eval.interpreter)]
    graded = formats.grade_many(texts, [p.answer for p in problems], mode=cfg.eval.mode)
    for p, t, g in list(zip(problems, texts, graded))[: args.show]:
        print(f"--- {p.id}  label={g.label} answer={g.answer} gold={p.answer} correct={g.correct}")
        print(p.question + t)
    print(f"\n{len(problems)} problems at temperature {args.temperature}:")
    print(format_summary_table(formats.format_stats([g.label for g in graded], [g.correct for g in graded])))


def cmd_rl(args) -> None:
    from .rl.train import format_summary, run_rl

    cfg = _load(args)
    summary = run_rl(cfg, Path(cfg.out_dir) / "rl", allow_config_change=args.allow_config_change)
    print(format_summary(summary))


def cmd_eval(args) -> None:
    from .evaluate import evaluate, format_results, load_policy

    from . import distributed as dist

    cfg = _load(args)
    model_dir = Path(cfg.eval.model) if cfg.eval.model else Path(cfg.out_dir) / "pretrain" / "model"
    model, tok = load_policy(model_dir, dist.init(cfg.device).device)
    out = Path(args.out) if args.out else model_dir.parent / "eval"
    summary = evaluate(model, tok, cfg, step=0, out_root=out)
    print(format_results(summary))
    print(f"generations and results: {out}")


def cmd_probe(args) -> None:
    from dataclasses import replace

    from .evaluate import evaluate_dataset, load_dataset, load_policy
    from .probe import format_probe, probe_dataset
    from .runio import atomic_write_json

    from . import distributed as dist

    cfg = _load(args)
    model, tok = load_policy(args.model, dist.init(cfg.device).device)
    model.eval()
    out = Path(args.out) if args.out else Path(args.model).parent / "probe"
    problems = load_dataset(args.dataset, cfg.eval.n_problems if args.n is None else args.n, cfg, cfg.eval.data_path)
    ecfg = replace(cfg.eval, n_samples=0)  # the unforced side: the evaluation's greedy pass
    unforced = evaluate_dataset(model, tok, problems, ecfg, seed=cfg.seed, out_dir=out, name="unforced")
    result = probe_dataset(model, tok, problems, ecfg, seed=cfg.seed, unforced=unforced, out_dir=out)
    atomic_write_json(out / "probe.json", {"model": str(args.model), "dataset": args.dataset, "n": len(problems),
                                           "mode": ecfg.mode, "max_new_tokens": ecfg.max_new_tokens,
                                           "unforced_pass@1": unforced["pass@1"], "formats": result})
    print(format_probe(result))
    print(f"probe.json and responses (probe_FORMAT.jsonl, unforced_greedy.jsonl): {out}")


def cmd_report(args) -> None:
    from .report import write_report

    try:
        path = write_report([Path(r) for r in args.runs], Path(args.out) if args.out else None)
    except ValueError as e:
        sys.exit(f"report: {e}")
    print(f"report: {path}")


def cmd_grade(args) -> None:
    from .rewards import format_summary_table, grade_file

    summary = grade_file(args.input, args.out, question_field=args.question_field,
                         response_field=args.response_field, gold_field=args.gold_field, mode=args.mode)
    print(format_summary_table(summary))
    print(f"graded records: {args.out}")


def cmd_quickstart(args) -> None:
    from .quickstart import quickstart

    quickstart(out_dir=args.out, config=args.config, overrides=args.overrides,
               allow_config_change=args.allow_config_change)


def cmd_sweep(args) -> None:
    from .sweep import SweepError, dry_run, run_sweep

    try:
        if args.dry_run:
            print(dry_run(args.config, args.grid, args.overrides, args.out))
            return
        if args.launcher:  # the cells as cluster jobs (launcher.py); slurm: returns once they are submitted
            from .launcher import launch_sweep

            cells = launch_sweep(args.config, args.grid, args.overrides, args.out, _launch_options(args)) or []
        else:
            cells = run_sweep(args.config, args.grid, args.overrides, args.out)
    except SweepError as e:  # every bad cell or grid argument, one line each, before anything ran
        sys.exit("\n".join(f"sweep: {line}" for line in str(e).splitlines()))
    if any(c["status"] == "failed" for c in cells):
        sys.exit(1)


def cmd_study(args) -> None:
    from .studies import STUDIES, describe, dry_run_study, run_study
    from .sweep import SweepError

    if args.name == "list":
        print(describe())
        return
    if args.name not in STUDIES:
        sys.exit(f"study: unknown study {args.name!r}; choose one of {', '.join(STUDIES)} (or `list`)")
    if not args.out:
        sys.exit("study: --out DIR is required (the study's sweep folder; rerun the same command to resume)")
    try:
        if args.dry_run:
            print(dry_run_study(args.name, args.out, args.overrides, config=args.config))
            return
        summary = run_study(args.name, args.out, args.overrides, config=args.config,
                            launcher=_launch_options(args) if args.launcher else None)
    except SweepError as e:
        sys.exit("\n".join(f"study: {line}" for line in str(e).splitlines()))
    if summary is not None and not summary["complete"]:
        sys.exit(1)


def cmd_check(args) -> None:
    from .preflight import run_check

    parts = run_check(args.config, args.overrides, args.out)
    if not all(p.ok for p in parts):
        sys.exit(1)


def cmd_export_hf(args) -> None:
    from .hf import export_hf
    from .model import OLMo

    model_dir = Path(args.model)
    tok = model_dir / "tokenizer.json"  # its EOS / BOS (echochamber's or Llama-2's) go into the HF configs
    try:
        export_hf(OLMo.load(model_dir), args.out, tokenizer_path=tok if tok.exists() else None)
    except ValueError as e:
        sys.exit(f"export-hf: {e}")
    print(f"Hugging Face OlmoForCausalLM folder: {args.out}")


def cmd_import_hf(args) -> None:
    from .hf import import_hf_folder

    try:
        model, tok = import_hf_folder(args.hf_dir, args.out)
    except ValueError as e:
        sys.exit(f"import-hf: {e}")
    print(f"echochamber model folder: {args.out} ({model.num_params() / 1e6:.1f}M parameters, "
          f"{model.config.preset}; EOS {tok.eos_token!r} = {tok.eos_id}, BOS {tok.bos_token!r} = {tok.bos_id})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="echochamber", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    for name, fn, help_ in [("data", cmd_data, "build the mixture's tokenizer, token caches and index"),
                            ("pretrain", cmd_pretrain, "pretrain an OLMo model from scratch"),
                            ("rl", cmd_rl, "RL post-training (GRPO, PPO, Expert Iteration, ...) with verifiable rewards")]:
        p = sub.add_parser(name, help=help_)
        _add_config_args(p)
        if name != "data":
            _add_resume_args(p)
        p.set_defaults(fn=fn)

    p = sub.add_parser("sample", help="sample from a model and grade each output's format")
    _add_config_args(p)
    p.add_argument("--model", help="model folder (default OUT_DIR/pretrain/model)")
    p.add_argument("--dataset", default="synthetic:test", help="SOURCE:SPLIT (default synthetic:test)")
    p.add_argument("--n", type=int, default=64, help="problems (default 64)")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--show", type=int, default=6, help="generations to print (default 6)")
    p.add_argument("--interpreter", action="store_true",
                   help="run each <llm-code> block in the sandbox as it closes and write its real output, as "
                        "OpenMathInstruct-1 was generated (same as eval.interpreter=true)")
    p.set_defaults(fn=cmd_sample)

    p = sub.add_parser("eval", help="pass@1, pass@k, maj@k and format shares of a model")
    _add_config_args(p)
    p.add_argument("--out", help="results folder (default: MODEL/../eval)")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("probe", help="each format's accuracy when forced into it, beside the unforced greedy pick",
                       usage="echochamber probe MODEL [KEY=VALUE ...] [--config C] [--dataset D] [--n N] [--out DIR]")
    p.add_argument("model", help="model folder (with tokenizer.json)")
    _add_config_args(p)
    p.add_argument("--dataset", default="synthetic:test", help="SOURCE:SPLIT (default synthetic:test)")
    p.add_argument("--n", type=int, help="problems (default eval.n_problems; 0 = all)")
    p.add_argument("--out", help="results folder: probe.json, probe_FORMAT.jsonl (default: MODEL/../probe)")
    p.set_defaults(fn=cmd_probe)

    p = sub.add_parser("report", help="figures and report.html for RL runs")
    p.add_argument("runs", nargs="+", help="RL run folders (each with metrics.jsonl / eval/)")
    p.add_argument("--out", help="output folder (default: the run folder, or ./report for several)")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("grade", help="label and grade a JSONL of responses")
    p.add_argument("input", help="JSONL with question, response and gold fields")
    p.add_argument("--out", required=True, help="output JSONL: input fields + label, answer, correct")
    p.add_argument("--question-field", default="question")
    p.add_argument("--response-field", default="response")
    p.add_argument("--gold-field", default="gold")
    p.add_argument("--mode", choices=["structure", "paper"], default="structure",
                   help="structure (default): label by real code structure; paper: the paper's grader, quirks included")
    p.set_defaults(fn=cmd_grade)

    p = sub.add_parser("quickstart", help="every stage on a laptop: data, pretrain, GRPO, eval, report")
    p.add_argument("--out", default="runs/quickstart", help="run folder (default runs/quickstart)")
    p.add_argument("--config", default="quickstart", help="YAML config (default: the built-in quickstart)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    _add_resume_args(p)
    p.set_defaults(fn=cmd_quickstart)

    # conflict_handler "resolve": the --dry-run of _add_config_args describes a stage's plan; a sweep's is its own
    p = sub.add_parser("sweep", help="run a grid of configs one at a time, sharing pretraining; sweep.json + report",
                       conflict_handler="resolve")
    _add_config_args(p)
    _add_sweep_dry_run(p)
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="a grid axis; repeat for more (the grid is their cartesian product)")
    p.add_argument("--out", required=True, help="sweep folder: sweep.json, report.html, cells/, pretrained/")
    _add_launcher_args(p)
    p.set_defaults(fn=cmd_sweep)

    p = sub.add_parser("study", help="run a named study (collapse, algorithms, kl, mixture, transfer, interpreter, "
                                      "scale) and write its report; `study list` describes them")
    p.add_argument("name", help="the study, or `list`")
    p.add_argument("--out", help="the study's folder (a sweep folder plus study.json and report.html)")
    p.add_argument("--config", help="replace the study's base config (for quick looks and tests)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="applied to every cell")
    _add_sweep_dry_run(p)
    _add_launcher_args(p)
    p.set_defaults(fn=cmd_study)

    p = sub.add_parser("check", help="check a (GPU) machine: pretraining, a kill and resume, 3 steps of each RL arm "
                                     "at the config's batch, an evaluation with pass@k; tokens/s, MFU, memory peaks")
    p.add_argument("--config", default="quickstart",
                   help="YAML config: a path or a built-in name (paper_150m, paper_1b; smoke: a tiny CPU check)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="applied before the check's own settings (pretrain.max_steps=N: N pretraining steps)")
    p.add_argument("--out", help="the check's folder (default: a temporary one, removed when every part passed)")
    p.set_defaults(fn=cmd_check)

    p = sub.add_parser("export-hf", help="write a model folder as a Hugging Face OlmoForCausalLM folder")
    p.add_argument("model")
    p.add_argument("out")
    p.set_defaults(fn=cmd_export_hf)
    p = sub.add_parser("import-hf", help="read a Hugging Face OlmoForCausalLM folder (or hub id) into a model folder")
    p.add_argument("hf_dir", help="a local HF folder with its tokenizer, or a hub id (needs huggingface_hub)")
    p.add_argument("out")
    p.set_defaults(fn=cmd_import_hf)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with KEY=VALUE overrides allowed after options as well as before them:
    `echochamber study collapse --out DIR pretrain.max_steps=50`. (argparse fills a subcommand's nargs="*"
    positional with the words before the first option, and calls any later ones unrecognised.)"""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    stray = [word for word in extra if word.startswith("-") or "=" not in word]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> None:
    from .cpu import configure, release

    configure()  # threads and OpenMP wait policy (ECHOCHAMBER_JOBS), before anything imports torch
    try:
        run_command(parse_args(argv))
    finally:
        release()  # the command is over: a Python session that ran it no longer takes a share of the cores


def run_command(args) -> None:
    """One parsed command, with bad input reported in one line."""
    if args.command not in ("grade", "report"):
        from .cpu import rebalance
        from .model import tune_cpu_allocator

        tune_cpu_allocator()  # large activations reuse pages instead of faulting them in every step
        rebalance(force=True)  # torch is loaded: split the cores with the echochamber jobs running now
    from .config import ConfigError
    from .training import RunFolderError

    try:
        args.fn(args)
    except (ConfigError, RunFolderError, FileNotFoundError, PermissionError, ValueError, OSError) as e:
        # Bad input, a busy or mismatched run folder, a full disk: the user's to fix, in one line (--debug: all).
        if args.debug:
            raise
        what = e.strerror + (f": {e.filename}" if e.filename else "") if isinstance(e, OSError) and e.strerror \
            else str(e)
        sys.exit(f"echochamber {args.command}: {what}")


if __name__ == "__main__":
    main()
