"""``python -m lib {book, html, train, bench, data}``.

Errors a user can fix (missing data, a bad option, a failing chapter) print one
line starting with ``error:`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .data import REPO_ROOT

BOOK_PARAMS = ("budget", "device", "data_dir", "runs_dir", "seed")


class UserError(Exception):
    """Printed as one line, exit status 2."""


def toc_files(root: Path = REPO_ROOT) -> list[Path]:
    """Every file of ``_toc.yml`` in order (root first), with its real suffix."""
    import yaml

    toc = yaml.safe_load((root / "_toc.yml").read_text())
    names = [toc["root"]]

    def walk(entries):
        for e in entries or []:
            if "file" in e:
                names.append(e["file"])
            walk(e.get("sections"))
            for part in e.get("parts", []) or []:
                walk(part.get("chapters"))

    for part in toc.get("parts", []) or []:
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    out = []
    for n in names:
        p = root / n
        hits = [p] if p.suffix else [p.with_suffix(s) for s in (".ipynb", ".md")]
        hits = [h for h in hits if h.is_file()]
        if not hits:
            raise UserError(f"_toc.yml names {n!r} but no such .ipynb/.md file exists")
        out.append(hits[0])
    return out


def chapters(root: Path = REPO_ROOT) -> list[Path]:
    """The notebooks of ``_toc.yml``, in order."""
    return [p for p in toc_files(root) if p.suffix == ".ipynb"]


# --------------------------------------------------------------------------
# staleness: which chapters must be re-executed (Jupyter Book's own cache cannot
# see inputs outside the notebook, such as lib/ or runs/)
# --------------------------------------------------------------------------
META = "cifar_book"


def _digest(items) -> str:
    import hashlib

    h = hashlib.sha256()
    for it in items:
        h.update(it if isinstance(it, bytes) else str(it).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def inputs_digest(nb_path: Path, params: dict, read: list[str]) -> dict:
    """Hashes of what an execution depends on: the notebook's own cells (not the
    injected parameters, not outputs), the lib code, the parameters and data
    setting, and every run folder or cached analysis file the chapter read."""
    import nbformat

    from .runs import runs_root

    nb = nbformat.read(nb_path, as_version=4)
    cells = [c.cell_type + c.source for c in nb.cells
             if "injected-parameters" not in c.metadata.get("tags", [])]
    lib = sorted((REPO_ROOT / "lib").glob("*.py"))
    root = runs_root(params.get("runs_dir") or None)
    runs = []
    for rel in read:
        p = root / rel
        files = [p / "config.json", p / "summary.json"] if p.is_dir() else [p]
        runs += [rel] + [f.read_bytes() if f.is_file() else b"missing" for f in files]
    return {"notebook source": _digest(cells),
            "lib code": _digest(f.name.encode() + f.read_bytes() for f in lib),
            "parameters": _digest([json.dumps(_portable(params), sort_keys=True),
                                   data_identity(params)]),
            "runs read": _digest(runs)}


def _portable(params: dict) -> dict:
    """Parameters without machine-specific paths (the data is identified by content)."""
    return {k: v for k, v in params.items() if k not in ("data_dir", "runs_dir")}


def data_identity(params: dict) -> str:
    """What data a chapter sees: its content fingerprint, wherever the files live
    (budget smoke: the synthetic data)."""
    if params.get("budget") == "smoke":
        return "synthetic"
    from .data import DataError, load_cifar10

    try:
        return load_cifar10(params.get("data_dir") or None).fingerprint
    except DataError as e:
        return f"unavailable: {e}"


def staleness(nb_path: Path, params: dict) -> list[str]:
    """Why ``nb_path`` must be re-executed with ``params`` (empty: it is up to date)."""
    import nbformat

    meta = nbformat.read(nb_path, as_version=4).metadata.get(META)
    if not meta:
        return ["not executed by `python -m lib book` yet"]
    now = inputs_digest(nb_path, params, meta.get("read", []))
    return [f"{k} changed" for k, v in now.items() if meta.get("inputs", {}).get(k) != v]


def _glued(nb, name: str):
    import ast

    for c in nb.cells:
        for o in c.get("outputs", []):
            if o.get("metadata", {}).get("scrapbook", {}).get("name") == name:
                return ast.literal_eval(o["data"]["application/papermill.record/text/plain"])
    return None


def record_inputs(nb_path: Path, params: dict) -> None:
    """Store the inputs digest of a fresh execution in the notebook's metadata, and drop
    the absolute paths papermill records (``input_path``, ``output_path``): the notebook
    is published as a download, and a path on the machine that built it says nothing to
    a reader."""
    import nbformat

    nb = nbformat.read(nb_path, as_version=4)
    for k in ("input_path", "output_path"):
        nb.metadata.get("papermill", {}).pop(k, None)
    for c in nb.cells:  # the reader sees prose, figures and code, not the plumbing
        tags = c.metadata.get("tags", [])
        if {"parameters", "injected-parameters"} & set(tags) and "remove-cell" not in tags:
            c.metadata["tags"] = [*tags, "remove-cell"]
    read = json.loads(_glued(nb, "inputs_read") or "[]")
    nb.metadata[META] = {"read": read, "params": params,
                         "inputs": inputs_digest(nb_path, params, read)}
    nbformat.write(nb, nb_path)


def execute(nb: Path, out: Path | None = None, **params) -> float:
    """Execute one chapter with papermill (in place unless ``out``); return seconds.

    The executed notebook records a digest of its inputs (see :func:`staleness`).
    """
    import papermill as pm

    params = {k: v for k, v in params.items() if v is not None}
    check_params(params)
    t = time.perf_counter()
    target = Path(out or nb)
    # executed into a temporary file beside the target, which replaces it only when
    # every cell ran: a failing chapter never overwrites the committed one
    tmp = target.with_name(f".{target.stem}.{os.getpid()}.tmp.ipynb")
    # The kernel inherits the environment: MPLBACKEND=Agg (usual on headless machines,
    # and set by CI) would replace the inline backend and publish a book without figures.
    backend = os.environ.pop("MPLBACKEND", None)
    try:
        pm.execute_notebook(str(nb), str(tmp), parameters=params, cwd=str(nb.parent),
                            kernel_name="python3", progress_bar=False, log_output=False)
        record_inputs(tmp, params)
        os.replace(tmp, target)
    except pm.PapermillExecutionError as e:
        raise UserError(f"{nb.name} failed in cell {e.exec_count}: {e.ename}: {e.evalue} "
                        f"({target.name} is unchanged)") from e
    finally:
        if backend is not None:
            os.environ["MPLBACKEND"] = backend
        tmp.unlink(missing_ok=True)
    return time.perf_counter() - t


BUDGETS = ("smoke", "cpu", "gpu")


def check_params(params: dict) -> None:
    """Chapter parameters checked before any kernel starts (one line, UserError): known
    names, a known budget, a device name, an integer seed, and data that loads."""
    unknown = set(params) - set(BOOK_PARAMS)
    if unknown:
        raise UserError(f"unknown chapter parameter(s) {sorted(unknown)}; known: {BOOK_PARAMS}")
    if params.get("budget", "cpu") not in BUDGETS:
        raise UserError(f"budget {params['budget']!r} is not a budget; use one of {BUDGETS}")
    if "seed" in params and (isinstance(params["seed"], bool)
                             or not isinstance(params["seed"], int)):
        raise UserError(f"seed {params['seed']!r}: use an integer")
    from .models import ConfigError
    from .train import resolve_device

    try:
        resolve_device(params.get("device", "auto"))
    except ConfigError as e:
        raise UserError(str(e)) from None
    if params.get("budget", "cpu") != "smoke":
        from .data import load_cifar10

        load_cifar10(params.get("data_dir") or None)  # DataError: one line, before the kernel


def build_html(root: Path = REPO_ROOT, builder: str = "html") -> None:
    """``jupyter-book build`` with execution off (the notebooks are already executed).

    Sphinx warnings are errors (``-W -n``): a broken reference, a missing figure or
    a glued value that cannot be formatted fails the build instead of publishing
    a gap.
    """
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb if jb.exists() else "jupyter-book"), "build", str(root), "--builder", builder,
           "-W", "-n", "--keep-going"]
    r = subprocess.run(cmd, cwd=root)
    if r.returncode:
        raise UserError(f"jupyter-book build failed (exit {r.returncode}); see the output above")


#: ``python -m lib book`` stops when the plan would train longer than this, unless --train.
TRAIN_THRESHOLD_MIN = 30


def plan_summary(budget: str, data_dir=None, runs_dir=None, device="auto",
                 measure: bool | None = None, echo=print, full: bool = True):
    """Print the plan (every run each chapter would read or train, with estimates) and
    return the estimated training minutes (:mod:`lib.plan`)."""
    from . import plan
    from .data import load_cifar10
    from .train import resolve_device

    dev = str(resolve_device(device))
    fp = "synthetic" if budget == "smoke" else load_cifar10(data_dir or None).fingerprint
    if measure is None:
        measure = not dev.startswith("cpu")
    df, cost = plan.table(budget, fp, runs_dir, dev, measure=measure)
    todo = df[~df.cached & df.book_trains]
    extra = df[~df.cached & ~df.book_trains]
    if full and len(todo):
        with_pd_options(lambda: echo(todo.drop(columns=["cached", "book_trains"]).to_string(
            index=False, float_format=lambda v: f"{v:.1f}")))
    minutes = float(todo.minutes.sum())
    scale = f"; device speed x{cost.scale:.2f} of the cached runs' (measured)" \
        if cost.scale != 1.0 else ""
    head = f"plan (budget {budget}, data {fp}): "
    echo(head + (f"{int(df.cached.sum())} items cached, {len(todo)} to train, about "
                 f"{minutes:.0f} minutes of training{scale}" if len(todo) else
                 f"nothing to train ({int(df.cached.sum())} items cached)"))
    if len(extra):  # long jobs the chapters only show once cached
        for chapter, how in (("05", "`python -m lib recipe` (make recipe)"),
                             ("06", "`python -m lib sweep --study fidelity`, then each "
                                    "recipe-* study (make sweep)")):
            part = extra[extra.chapter.str.startswith(chapter)]
            if len(part):
                echo(f"  and {len(part)} runs or studies of chapter {chapter} not cached yet "
                     f"(about {part.minutes.sum():.0f} minutes): the book shows those it "
                     f"has; {how} trains them")
    return minutes


def with_pd_options(fn):
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_colwidth", 60):
        return fn()


def cmd_plan(a) -> None:
    plan_summary(a.budget, a.data_dir, a.runs_dir, a.device,
                 measure=True if a.measure else None)


def cmd_book(a) -> None:
    nbs = chapters()
    if a.only:
        nbs = [p for p in nbs if any(p.name.startswith(o) for o in a.only)]
        if not nbs:
            raise UserError(f"--only {a.only} matches no chapter of _toc.yml; chapters: "
                            f"{', '.join(p.stem for p in chapters())}")
    params = {k: v for k, v in dict(budget=a.budget, device=a.device, data_dir=a.data_dir,
                                    runs_dir=a.runs_dir).items() if v is not None}
    check_params(params)
    minutes = plan_summary(a.budget, a.data_dir, a.runs_dir, a.device, full=False)
    if minutes > TRAIN_THRESHOLD_MIN and not a.train:
        raise UserError(f"the book would train about {minutes:.0f} minutes first (more than "
                        f"{TRAIN_THRESHOLD_MIN}); `python -m lib plan` lists what, and "
                        "`--train` (make book TRAIN=1) goes ahead")
    for nb in nbs:
        why = ["--force"] if a.force else staleness(nb, params)
        name = nb.relative_to(REPO_ROOT)
        if not why:
            print(f"up to date: {name}", flush=True)
            continue
        print(f"executing {name} (budget={a.budget}; {', '.join(why)}) ...", flush=True)
        dt = execute(nb, **params)
        print(f"  done in {dt:.0f} s", flush=True)
    build_html()
    print(f"book: {REPO_ROOT / '_build' / 'html' / 'index.html'}")


def cmd_html(a) -> None:
    build_html()
    print(f"book: {REPO_ROOT / '_build' / 'html' / 'index.html'}")


def cmd_pdf(a) -> None:
    import shutil

    missing = [t for t in ("xelatex", "latexmk") if shutil.which(t) is None]
    if missing:
        raise UserError(f"{' and '.join(missing)} not found: the PDF needs TeX; on Debian/"
                        "Ubuntu `sudo apt-get install texlive-xetex texlive-latex-extra "
                        "texlive-fonts-recommended latexmk fonts-freefont-otf` (XeLaTeX's "
                        "default FreeSerif comes from the last; see the appendix)")
    build_html(builder="pdflatex")
    pdfs = sorted((REPO_ROOT / "_build" / "latex").glob("*.pdf"))
    if not pdfs:
        raise UserError("the LaTeX build produced no PDF; see _build/latex/*.log")
    print(f"pdf: {pdfs[0]}")


def parse_value(v: str):
    """'0.1' -> 0.1, 'true' -> True, '[64,32]' -> [64, 32], 'sgd' -> 'sgd'."""
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def cmd_train(a) -> None:
    from . import book, recipe, runs
    from .data import load_cifar10, synthetic
    from .train import make_config

    presets = {"ch01": book.ch01_config, "ch03-cnn": book.ch03_cnn_config,
               "fast": recipe.fast_config}
    if a.preset not in presets:
        raise UserError(f"unknown preset {a.preset!r}; known: {sorted(presets)}")
    base = presets[a.preset](a.budget, a.seed)
    overrides = {}
    for item in a.set or []:
        if "=" not in item:
            raise UserError(f"--set {item!r}: write NAME=VALUE, e.g. --set lr=0.1")
        k, v = item.split("=", 1)
        overrides[k.strip()] = parse_value(v.strip())
    cfg = make_config(base, **overrides)
    ds = synthetic() if a.synthetic or a.budget == "smoke" else load_cifar10(a.data_dir)
    run = runs.get(cfg, ds, a.group, a.runs_dir, device=a.device, progress=True)
    s = run.summary
    tta = f", with TTA {s['test_acc_tta']:.4f}" if "test_acc_tta" in s else ""
    print(f"run {run.key} ({run.path}): status {s['status']}, test acc {s['test_acc']:.4f}{tta}, "
          f"{s['epochs_run']} epochs, {s['images_per_s']:.0f} images/s on {s['device']}")


def _sweep_data(a):
    from .data import load_cifar10, synthetic

    return synthetic(512, 256) if a.synthetic or a.budget == "smoke" \
        else load_cifar10(a.data_dir)


def cmd_sweep(a) -> None:
    import yaml

    from . import search, studies

    specs = studies.studies(a.budget)
    if a.study == "fidelity":  # not an Optuna study: fixed configs at every fidelity
        ds = _sweep_data(a)
        df = studies.fidelity_runs(ds, a.budget, a.runs_dir, train=not a.list,
                                   device=a.device, log=lambda m: print(m, flush=True))
        if len(df):
            tab = studies.fidelity_table(df, a.budget)
            print(tab.to_string(index=False))
            if len(tab) and tab.configs.min() > 2:
                print(f"the rule picks: {studies.pick_fidelity(tab)}")
        return
    if a.space:
        try:
            space = yaml.safe_load(Path(a.space).read_text())
        except (OSError, yaml.YAMLError) as e:
            raise UserError(f"--space {a.space}: cannot read it ({e})") from None
        if not isinstance(space, dict):
            raise UserError(f"--space {a.space}: expected a mapping name -> choices/range")
        spec = search.StudySpec(a.study, space, studies.base_config(a.budget),
                                a.sampler or "tpe", a.pruner or "hyperband",
                                a.n_trials or 20)
    elif a.study in specs:
        spec = specs[a.study]
    else:
        raise UserError(f"unknown study {a.study!r}; the book's studies: "
                        f"{sorted([*specs, 'fidelity'])} (or give --space FILE for your own)")
    changes = {k: v for k, v in dict(n_trials=a.n_trials, sampler=a.sampler,
                                     pruner=a.pruner).items() if v is not None}
    if changes and not a.space:
        spec = search.StudySpec(**{**{f: getattr(spec, f) for f in
                                      spec.__dataclass_fields__}, **changes})
    if a.retrain and spec.name == "recipe-main" and not a.space:
        if a.epochs or a.seeds:
            raise UserError("--epochs/--seeds: recipe-main re-trains at the recipe's own "
                            "budget (chapter 5's epochs and seeds)")
        ds, log = _sweep_data(a), (lambda m: print(m, flush=True))
        # the validation choice's seeds first, then the defaults at its precision where
        # chapter 5's ran in another (studies.matched_default), then the other ranks
        kw = dict(runs_dir=a.runs_dir, device=a.device, train=True, log=log)
        studies.retrain(ds, a.budget, k=1, **kw)
        studies.matched_default(ds, a.budget, **kw)
        rt = studies.retrain(ds, a.budget, k=a.retrain, **kw)
        print(rt.drop(columns="run").to_string(index=False))
        return
    if a.retrain:
        rt = search.retrain(spec.name, a.budget, _sweep_data(a), k=a.retrain,
                            runs_dir=a.runs_dir, device=a.device,
                            log=lambda m: print(m, flush=True), epochs=a.epochs,
                            seeds=a.seeds)
        print(rt.drop(columns="run").to_string(index=False))
        return
    if a.study == "recipe-main" and not a.space:
        studies.check_recipe_fidelity(_sweep_data(a), a.budget, a.runs_dir)
    out = search.run_study(spec, a.storage, a.n_workers, a.data_dir, a.runs_dir, a.device,
                           synthetic=a.synthetic or a.budget == "smoke", progress=None)
    print(f"study {out['study']}: {out['trained']} trials trained ({out['complete']} "
          f"complete, {out['pruned']} pruned), {out['epochs']} epochs in all; best "
          f"validation accuracy {out['best_value']}")


def cmd_recipe(a) -> None:
    """Train (or resume) every run of the recipe chapter, in :func:`lib.recipe.plan`'s
    order; cached runs are skipped, so the same command continues a killed job."""
    import time

    from . import recipe, runs
    from .data import load_cifar10, synthetic

    todo = [p for p in recipe.plan(a.budget) if not a.only or p[0] in a.only]
    if not todo and not (a.only and "recipe-jpeg" in a.only):
        raise UserError(f"--only {a.only}: no such group; groups: recipe, recipe-ablation, "
                        "recipe-jpeg")
    ds = synthetic(512, 256) if a.synthetic or a.budget == "smoke" \
        else load_cifar10(a.data_dir)
    for i, (group, name, c) in enumerate(todo, 1):
        hit = runs.find(c, ds, group, a.runs_dir)
        if a.list or hit is not None:
            state = "cached" if hit is not None else "to train"
            print(f"[{i}/{len(todo)}] {group}: {name}: {state}", flush=True)
            continue
        t0 = time.time()
        run = runs.get(c, ds, group, a.runs_dir, device=a.device)
        s = run.summary
        acc = " ".join(f"{k} {s[k]:.4f}" for k in ("val_acc", "test_acc", "test_acc_tta")
                       if k in s)
        print(f"[{i}/{len(todo)}] {group}: {name}: {run.key} {acc} "
              f"({(time.time() - t0) / 60:.1f} min)", flush=True)
    if not a.only or "recipe-jpeg" in a.only:  # last: the lower JPEG qualities
        for r in recipe.jpeg_runs(ds, a.budget, a.runs_dir, train=not a.list):
            state = r["run"].key if r["run"] is not None else "to train"
            print(f"recipe-jpeg: quality {r['quality']}, seed {r['seed']}: {state}",
                  flush=True)


def cmd_gpu_check(a) -> None:
    from . import gpucheck

    gpucheck.run(a.device, tiny=a.tiny, workers=tuple(a.workers),
                 runs_dir=getattr(a, "runs_dir", None))


def cmd_screenshots(a) -> None:
    from . import book, runs, screens
    from .data import load_cifar10, synthetic

    screens.chromium()  # fail first, with the install hint, if it is missing
    if a.study:
        for p in sweep_screenshots(a.study, a.budget, a.runs_dir, a.out):
            print(p)
        return
    ds = synthetic(600, 300) if a.budget == "smoke" else load_cifar10(a.data_dir)
    run = runs.get(book.ch04_config(a.budget), ds, "ch04", a.runs_dir, device=a.device,
                   train=a.train, track=book.ch04_track())
    out = Path(a.out or REPO_ROOT / "book" / "images" / "ch04")
    for p in screens.take(run, out):
        print(p)


def sweep_screenshots(name: str, budget: str, runs_dir=None, out=None) -> list[Path]:
    """A study in TensorBoard's HParams dashboard (table, parallel coordinates) and in
    W&B LEET's workspace (all trials' validation accuracy), photographed into
    ``out`` (default book/images/ch06/): the trials are replayed from the cache into
    ``_build/sweep-logs/`` (not committed; rebuilt each time), nothing is trained."""
    from . import screens, studies, sweeplog, track

    specs = studies.studies(budget)
    if name not in specs:
        raise UserError(f"unknown study {name!r}; known: {', '.join(specs)}")
    spec = specs[name]
    out = Path(out) if out else REPO_ROOT / "book" / "images" / "ch06"
    out.mkdir(parents=True, exist_ok=True)
    wb = track.wandb_available()
    logs = sweeplog.log_study(spec, REPO_ROOT / "_build" / "sweep-logs", runs_dir,
                              wandb=wb)
    names = [n.removeprefix("model.") for n in spec.space]
    table = {n for n in names if n in SWEEP_TABLE_COLUMNS} or set(names[:5])
    axes = {n for n in names if n not in SWEEP_AXES_LEFT_OUT}
    shots = screens.tensorboard_sweep(logs, out, axes, table, prefix=f"tb_{name}")
    if wb:
        shots.append(screens.wandb_sweep(logs / "wandb", out, name=f"wandb_{name}",
                                         cols=112, rows=34))
    return shots


#: The HParams table keeps these of a study's hyperparameters: few enough that the
#: metric's column fits the picture.
SWEEP_TABLE_COLUMNS = {"lr", "batch_size", "kernel_size", "depth", "widths", "optimizer",
                       "block_widths"}
#: The parallel coordinates leave out these (the figure's caption says so): with every
#: searched hyperparameter the axes are too close to read at the page's width.
SWEEP_AXES_LEFT_OUT = {"early_pool", "growth", "convs_per_block", "lookahead_every",
                       "momentum"}


def cmd_bench(a) -> None:
    from . import bench, book
    from .data import load_cifar10, synthetic

    if a.recipe:
        from . import recipe

        budget = "smoke" if a.synthetic else "cpu"
        if a.synthetic:  # a dry run: measured, printed, not cached
            cfgs = recipe.speed_configs(budget)
            n = max(c.batch_size for c in cfgs.values()) * (a.steps + 2)
            bench.recipe_speed(synthetic(n_train=n, n_test=500), cfgs, steps=a.steps,
                               device=a.device)
            return
        df = recipe.speed_table(load_cifar10(a.data_dir), budget, steps=a.steps,
                                device=a.device)
        print(df.drop(columns=["cpu_flags"]).to_string(index=False))
        return
    ds = synthetic(n_train=a.batch_size * (a.steps + 3) * 2, n_test=500) if a.synthetic \
        else load_cifar10(a.data_dir)
    bench.run(ds, book.ch03_cnn_model(), batch_size=a.batch_size, steps=a.steps,
              device=a.device, check_precision=a.check_precision)


def cmd_data(a) -> None:
    import numpy as np

    from .data import CLASSES, load_cifar10

    ds = load_cifar10(a.data_dir)
    print(f"source: {ds.source}")
    print(f"file: {ds.path}")
    print(f"fingerprint: {ds.fingerprint}")
    for split, y in (("train", ds.y_train), ("test", ds.y_test)):
        counts = np.bincount(y, minlength=len(CLASSES))
        print(f"{split}: {len(y)} images, per class {counts.tolist()}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lib", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(q, budget=True):
        q.add_argument("--data-dir", default=None,
                       help="CIFAR-10 directory or npz file (default: $CIFAR10_DATA, else data/)")
        q.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
        if budget:
            q.add_argument("--budget", default="cpu", choices=BUDGETS,
                           help="smoke (synthetic data, seconds: a dry run), cpu (what the "
                           "committed book ran on 2 CPU cores) or gpu (full fidelity)")
            q.add_argument("--runs-dir", default=None, help="the runs cache (default runs/)")

    q = sub.add_parser("book", help="execute every chapter with papermill, then build the HTML")
    common(q)
    q.add_argument("--only", nargs="*", help="chapter file prefixes, e.g. 01 03")
    q.add_argument("--force", action="store_true",
                   help="re-execute every chapter, even those whose inputs did not change")
    q.add_argument("--train", action="store_true",
                   help=f"go ahead even when the plan trains more than {TRAIN_THRESHOLD_MIN} "
                   "minutes")
    q.set_defaults(func=cmd_book)
    q = sub.add_parser("plan", help="what the book would read from runs/ and what it would "
                       "train, with estimated minutes (trains nothing)")
    common(q)
    q.add_argument("--measure", action="store_true",
                   help="time the chapter-3 CNN here to scale the estimates (default off the "
                   "CPU)")
    q.set_defaults(func=cmd_plan)
    q = sub.add_parser("html", help="build the HTML from the executed notebooks (no training)")
    q.set_defaults(func=cmd_html)
    q = sub.add_parser("pdf", help="build the PDF handout (LaTeX) from the executed notebooks")
    q.set_defaults(func=cmd_pdf)
    q = sub.add_parser("train", help="train one config into the runs cache")
    common(q)
    q.add_argument("--preset", default="ch01", help="ch01, ch03-cnn or fast (chapter 5's recipe)")
    q.add_argument("--set", action="append", metavar="NAME=VALUE",
                   help="override a config field, e.g. lr=0.1, model.depth=4 (repeatable)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--group", default="cli", help="runs/<group>/ to write into")
    q.add_argument("--synthetic", action="store_true", help="tiny synthetic data (a dry run)")
    q.set_defaults(func=cmd_train)
    q = sub.add_parser("sweep", help="run or resume a hyperparameter study (chapter 6)")
    common(q)
    q.add_argument("--study", default="main",
                   help="the first round's main, grid-lr-bs, pair-pruned, pair-sha, "
                        "pair-full, wide; around the recipe: fidelity (the fidelity "
                        "study, first), recipe-tpe-R and recipe-random-R (TPE against "
                        "random, repeat R), recipe-main (needs the fidelity study); or a "
                        "new name with --space")
    q.add_argument("--list", action="store_true",
                   help="with --study fidelity: say what is cached, train nothing")
    q.add_argument("--space", default=None,
                   help="YAML file: name -> list of choices, {low, high, log}, "
                        "{choices, implies} or {given, cases} (see lib.search)")
    q.add_argument("--n-trials", type=int, default=None, help="trained trials in total")
    q.add_argument("--sampler", default=None, help="tpe, random or grid")
    q.add_argument("--pruner", default=None, help="hyperband, sha or none")
    q.add_argument("--storage", default=None,
                   help="Optuna storage URL (default sqlite:///runs/search/<study>.db); "
                        "e.g. postgresql://user@host/db for many machines")
    q.add_argument("--n-workers", type=int, default=1,
                   help="worker processes sharing the study (one per GPU, or CPU cores)")
    q.add_argument("--synthetic", action="store_true", help="tiny synthetic data (a dry run)")
    q.add_argument("--retrain", type=int, default=0, metavar="K",
                   help="instead of searching: re-train the study's K best configs on the "
                        "whole training set, full epoch budget, several seeds (chapter 6)")
    q.add_argument("--epochs", type=int, default=None,
                   help="with --retrain: epochs per run instead of the budget's (chapter 6 "
                        "also re-trains the best config at twice the budget's epochs)")
    q.add_argument("--seeds", type=int, default=None,
                   help="with --retrain: the first N seeds instead of the budget's")
    q.set_defaults(func=cmd_sweep)
    q = sub.add_parser("screenshots",
                       help="photograph TensorBoard and W&B LEET for chapter 4's run "
                            "(or, with --study, for a study's trials)")
    common(q)
    q.add_argument("--out", default=None,
                   help="where the PNG files go (default book/images/ch04, or "
                        "book/images/ch06 with --study)")
    q.add_argument("--study", default=None,
                   help="photograph this study's trials (HParams table and parallel "
                        "coordinates, W&B LEET workspace) instead of chapter 4's run")
    q.add_argument("--train", action="store_true",
                   help="train chapter 4's run first if it is not cached")
    q.set_defaults(func=cmd_screenshots)
    q = sub.add_parser("bench", help="training throughput: ours vs the textbook pipeline")
    common(q, budget=False)
    q.add_argument("--batch-size", type=int, default=128)
    q.add_argument("--steps", type=int, default=30, help="timed steps per pipeline")
    q.add_argument("--recipe", action="store_true",
                   help="time chapter 5's recipe in fp32 and bf16 against this CPU's peak")
    q.add_argument("--check-precision", action="store_true",
                   help="also compare test accuracy with bf16 autocast and fp32")
    q.add_argument("--synthetic", action="store_true", help="synthetic data (no dataset needed)")
    q.set_defaults(func=cmd_bench)
    q = sub.add_parser("recipe", help="train or resume the recipe chapter's runs "
                       "(full recipe's seeds, the ablation ladder, leave-one-out)")
    common(q)
    q.add_argument("--only", nargs="*", help="groups: recipe, recipe-ablation, recipe-jpeg")
    q.add_argument("--list", action="store_true", help="say what is cached, train nothing")
    q.add_argument("--synthetic", action="store_true", help="synthetic data (a dry run)")
    q.set_defaults(func=cmd_recipe)
    q = sub.add_parser("gpu-check", help="a short, bounded speed check of this device (a GPU, "
                       "or the CPU): the CNN, the recipe, N workers at once, the projected "
                       "gpu-budget book")
    common(q, budget=False)
    q.add_argument("--tiny", action="store_true", help="tiny models, seconds (a dry run)")
    q.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4],
                   help="worker counts to time side by side (default 1 2 4)")
    q.set_defaults(func=cmd_gpu_check)
    q = sub.add_parser("data", help="find, verify and describe the data")
    common(q, budget=False)
    q.set_defaults(func=cmd_data)
    return p


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def main(argv=None) -> int:
    from .data import ENV_VAR, DataError
    from .models import ConfigError
    from .runs import CacheError
    from .screens import ScreenshotError
    from .search import SearchError
    from .track import TrackingError

    a = parser().parse_args(argv)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    import signal

    def _terminated(signum, frame):  # SIGTERM cleans up like Ctrl-C (temp files, folders)
        raise KeyboardInterrupt

    if threading_main():
        signal.signal(signal.SIGTERM, _terminated)
    # chapters execute with their own folder as working directory: a relative data
    # setting must mean what it meant where the command was typed
    if os.environ.get(ENV_VAR) and not os.path.isabs(os.environ[ENV_VAR]):
        os.environ[ENV_VAR] = os.path.abspath(os.environ[ENV_VAR])
    for name in ("data_dir", "runs_dir"):
        if getattr(a, name, None):
            setattr(a, name, os.path.abspath(getattr(a, name)))
    try:
        a.func(a)
    except (UserError, DataError, ConfigError, CacheError, SearchError, ScreenshotError,
            TrackingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; finished runs are kept, the interrupted one left no folder",
              file=sys.stderr)
        return 130
    return 0
