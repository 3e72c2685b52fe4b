"""Evaluations of a run folder, on top of every other layer: what ``pyrovae evaluate``,
``compare`` and ``bdmc`` do, so that the commands only parse their options and print the result.

Which points and which proposal (:func:`points_and_proposal`): the first ``limit`` points of a
split, and what the estimator draws from for them: the run's own q (its encoder, or a
per-datapoint guide's own rows for its training points), a q fitted per point with the model
frozen, or the prior.

Each evaluation of a run (:func:`evaluate_run`, :func:`compare_run`, :func:`bdmc_run`) checks the
folder before any work, appends its result to RUN_DIR/evaluations.jsonl, and keeps the finished
points of an interrupted one in RUN_DIR/.partial/; both name the checkpoint they came from (the
SHA-256 of checkpoint.pt), so that neither is ever mistaken for another checkpoint's.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from .. import runs
from ..core import interrupts
from ..core.distributed import current
from ..core.errors import Interrupted, UsageError, option
from ..core.files import atomic_path
from ..core.options import option as setting
from ..core.progress import Report
from ..core.programs import rows_of
from ..evaluation.ais import BDMC, AnnealedImportanceSampling
from ..evaluation.certify import Certification, CertifySettings
from ..evaluation.driver import Keep, fingerprint
from ..evaluation.estimator import write_per_point
from ..evaluation.importance import ImportanceSampling
from ..evaluation.proposals import Proposal
from ..evaluation.settings import AISSettings, BDMCSettings, ISSettings, Settings, optional, whole
from ..guides.rows import take_rows
from ..inference.compare import CompareSettings, Comparison, format_table
from ..inference.local_fit import fit_local
from ..pictures.figures import evaluation_figure
from .fitting import Run, load_run

log = logging.getLogger(__name__)   # what an evaluation says on the way, unless told where (``say``)
Say = Callable[[str], None]         # a line for the user (the CLI's goes to stderr)
PROPOSALS = ("guide", "encoder", "fit", "prior")
SPLITS = ("test", "train")


def _tell(say: Say | None, message: str, level: int = logging.INFO) -> None:
    """``message`` to ``say``, or (None) to this module's logger at ``level``."""
    if say is not None:
        say(message)
    else:
        log.log(level, message)


# ---------------------------------------------------------------------------- the folder

@dataclass(frozen=True, kw_only=True)
class RunFolder:
    """A run folder to evaluate: which of its checkpoints (``checkpoint``: ``last``, checkpoint.pt,
    or ``best``, best.pt), where its model and data are now (``device``, ``data_dir``,
    ``dataset``, ``program``, as for :func:`~pyrovae.workflows.load_run`), whether to continue an
    interrupted evaluation (``resume``), and whether to leave the result out of its
    evaluations.jsonl (``no_record``)."""

    path: str | Path
    checkpoint: str = "last"
    device: str = "auto"
    data_dir: str | None = None
    dataset: str | None = None
    program: str | None = None
    resume: bool = False
    no_record: bool = False

    def check(self) -> bool:
        """Before any work: whether the folder can take this evaluation's record and partial
        results. A damaged evaluations.jsonl, or (unless ``no_record``) a folder this process
        cannot write, is refused; a read-only run evaluated with ``no_record`` keeps nothing."""
        folder = Path(self.path)
        if not folder.is_dir():
            return True   # load says what is wrong
        path = folder / runs.EVALUATIONS
        runs.read_jsonl(path)
        try:
            runs.check_writable(path, "the record of this result in", "fix the run folder's permissions, or pass "
                                                                       f"{option('no-record', True)}")
        except UsageError:
            if not self.no_record:
                raise
            return False
        return True

    def load(self) -> Run:
        return load_run(self.path, self.device, self.data_dir, dataset=self.dataset, program=self.program,
                        checkpoint=self.checkpoint)

    def partial_path(self, command: str, options: dict) -> Path:
        """Where an interrupted evaluation with these options keeps its finished points: one file
        whatever the checkpoint (``options["checkpoint"]``, and its epoch), so that resuming with
        another checkpoint says so."""
        keyed = {key: value for key, value in options.items() if key not in ("checkpoint", "epoch")}
        if self.checkpoint != "last":   # best.pt's points apart from checkpoint.pt's (whose files keep their names)
            keyed["checkpoint_file"] = runs.CHECKPOINTS[self.checkpoint]
        return Path(self.path) / runs.PARTIAL / f"{command}-{fingerprint(keyed)}.npz"

    def keep(self, keeps: bool, command: str, options: dict) -> Keep:
        """Where the points of an evaluation with ``options`` (which name the checkpoint) are kept:
        nowhere when the folder cannot take them (:meth:`check`) and nothing is resumed."""
        path = self.partial_path(command, options) if keeps or self.resume else None
        return Keep(path, self.resume, options)

    def record(self, command: str, options: dict, summary: dict, checkpoint: str | None) -> None:
        """One line in evaluations.jsonl (rank 0's, unless ``no_record``), naming the checkpoint
        (its SHA-256) the result came from."""
        if not self.no_record and current().is_main:
            runs.record_evaluation(Path(self.path), command, {**options, "checkpoint_file":
                                                              runs.CHECKPOINTS[self.checkpoint]}, summary, checkpoint)


def check_output_file(path: str | Path, name: str, suffixes: tuple[str, ...]) -> Path:
    """An output file, checked before any work is done: its suffix, and a writable folder (the
    option ``name`` is named in the message, e.g. ``per-point``)."""
    out, wanted, what = Path(path), " or ".join(suffixes), option(name)
    runs.check_name(out, what)   # first: the OS fails every question about a name that is too long
    if out.suffix.lower() not in suffixes:
        raise UsageError(f"{what} {str(path)!r} must end in {wanted}")
    if out.is_dir():
        raise UsageError(f"{what} {str(path)!r} is a folder; pass a file name ending in {wanted}")
    if not out.parent.is_dir():
        raise UsageError(f"{what} {str(path)!r}: folder {str(out.parent)!r} does not exist; create it first")
    if not os.access(out.parent, os.W_OK):
        raise UsageError(f"{what} {str(path)!r}: folder {str(out.parent)!r} is not writable; choose another path")
    runs.check_writable(out, what)   # the name's length, and a file actually made there
    return out


# ---------------------------------------------------------------------------- points and proposal

@dataclass(frozen=True)
class Points:
    """Points of a run to evaluate and what to draw from for them: ``proposal`` as the estimators
    take it (``"guide"``, ``"prior"``, or a guide over the rows of ``data``), ``name`` as it was
    chosen (guide, fit or prior), ``index`` their rows in a per-datapoint guide's tables (training
    points), and ``fit`` the steps and seconds of a fitted proposal."""

    data: tuple[torch.Tensor, ...]
    index: torch.Tensor | None
    proposal: Proposal
    name: str
    fit: dict = dataclasses.field(default_factory=dict)


def points_and_proposal(run: Run, split: str = "test", proposal: str | None = None, *, limit: int | None = None,
                        seed: int = 0, progress: Report = False) -> Points:
    """The first ``limit`` points of ``split`` (as the model sees them: a dynamically binarized
    training split binarized once by ``seed``) and the proposal ``proposal`` for them:

    - ``"guide"`` (or ``"encoder"``): the run's own q: its encoder, or for the training points of a
      per-datapoint guide the rows of its tables that hold them; a run without an encoder has no q
      for test points;
    - ``"fit"``: a q fitted per point with the model frozen (:func:`~pyrovae.inference.fit_local`),
      started from the run's q where it has one for the points, else from N(0, I);
    - ``"prior"``: p(z), a poor proposal for IS and the classic start of AIS;
    - None: ``"fit"`` for the test points of a run without an encoder, else ``"guide"``.
    """
    if split not in SPLITS:
        raise UsageError(f"unknown {option('split')} {split!r}; use {', '.join(SPLITS)}")
    if proposal is not None and proposal not in PROPOSALS:
        raise UsageError(f"unknown {option('proposal')} {proposal!r}; use {', '.join(PROPOSALS)}")
    x, index = run.points(split, limit, seed)
    encoder = run.vae.can("amortized")
    name = "guide" if proposal == "encoder" else proposal
    if name is None:
        name = "fit" if not encoder and split == "test" else "guide"
    if name == "guide" and not encoder and split == "test":
        raise UsageError(f"a {option('guide', run.config.guide)} run has no q for test points; use "
                         f"{option('proposal', 'fit')} (the default) or {option('split', 'train')}")
    if name == "fit":
        fitted = fit_local(run.vae, x, "q" if encoder or index is not None else "prior", index=index, seed=seed,
                           progress=progress)
        return Points(x, index, fitted.guide, name, {"fit_steps": max(fitted.steps),
                                                     "fit_seconds": round(fitted.seconds, 3)})
    if name == "guide" and index is not None:
        return Points(x, index, take_rows(run.vae.guide, index), name)   # a per-datapoint guide's own rows
    return Points(x, index, name, name)


# ---------------------------------------------------------------------------- evaluate

@dataclass(frozen=True, kw_only=True)
class EvaluateSettings(Settings):
    """``evaluate``'s own: the estimator, which points, the proposal, and a per-point file."""

    method: str = setting("is", "is: importance sampling from the proposal; ais: annealed importance sampling from it "
                                "to the posterior (Wu et al. 2017), for when k-hat says IS is not reliable.",
                          choices=("is", "ais"))
    split: str = setting("test", "Which points to evaluate.", choices=SPLITS)
    limit: int | None = setting(None, "Evaluate only the first LIMIT points [default: all].",
                                check=optional(whole(1), "omit it to evaluate the whole split"))
    proposal: str | None = setting(None, "The start of IS or AIS. guide (or encoder): the run's own q [default]; "
                                         "fit: a per-point q fitted with the model frozen [default for test points "
                                         "of a guide without an encoder]; prior: p(z), a bad check for IS, the "
                                         "classic start for AIS.", choices=PROPOSALS)
    per_point: str | None = setting(None, "Write per-datapoint values to this .csv or .npz file.")
    figure: str | None = setting(None, "Draw per-point log p̂ against the ELBO and a histogram of k-hat to this .png "
                                       "file.")


@contextlib.contextmanager
def results_kept(folder: RunFolder) -> Iterator[None]:
    """The writing of a finished estimate (per-point file, figure, the record in evaluations.jsonl,
    a certificate) under a :class:`~pyrovae.core.interrupts.StopFlag`: a signal waits the second or
    two it takes, then stops the command (exit 130) saying that the result is recorded, instead of
    dropping the finished work with "nothing was saved"."""
    with interrupts.StopFlag():
        yield
        signum = interrupts.received()
    if signum is not None:
        kept = ("it was not recorded (no record was asked for)" if folder.no_record else
                f"its result is recorded in {Path(folder.path) / runs.EVALUATIONS} (pyrovae show lists it)")
        raise Interrupted(f"stopped by signal {signum} after the estimate had finished; {kept}")


def evaluate_run(folder: RunFolder, settings: EvaluateSettings = EvaluateSettings(), *,
                 importance: ISSettings = ISSettings(), annealing: AISSettings = AISSettings(),
                 progress: Report = False, say: Say | None = None) -> dict:
    """``pyrovae evaluate``: log p(x) of the run's points by importance sampling (``importance``)
    or AIS (``annealing``) from the chosen proposal (:func:`points_and_proposal`), with its SE
    and diagnostics; the per-point values written to ``settings.per_point`` (and drawn to
    ``settings.figure``), the summary recorded in evaluations.jsonl and returned. A heavy-tail
    warning, then the result in one line (:func:`headline`), go to ``say`` (default: this module's
    logger)."""
    per_point = check_output_file(settings.per_point, "per-point", (".csv", ".npz")) if settings.per_point else None
    figure = check_output_file(settings.figure, "figure", (".png",)) if settings.figure else None
    keeps = folder.check()
    started = time.perf_counter()
    run = folder.load()
    ais = settings.method == "ais"
    chosen = annealing if ais else importance
    points = points_and_proposal(run, settings.split, settings.proposal, limit=settings.limit, seed=chosen.seed,
                                 progress=progress)
    options = {"command": "evaluate", "method": settings.method, "split": settings.split, "limit": settings.limit,
               "proposal": points.name, "seed": chosen.seed, "epoch": run.epoch,
               **({"steps": annealing.steps, "chains": annealing.chains, "leapfrog": annealing.leapfrog,
                   "adapt_step_size": annealing.adapt_step_size, "tune_points": annealing.tune_points} if ais
                  else {"k": importance.k})}
    estimator = AnnealedImportanceSampling(annealing) if ais else ImportanceSampling(importance)
    result = estimator.estimate(run.vae, points.data, points.proposal, progress=progress,
                                keep=folder.keep(keeps, "evaluate", {**options, "checkpoint": run.checkpoint}))
    summary = result.summary()
    if summary.get("warning"):
        _tell(say, f"pyrovae: warning: {summary['warning']}", logging.WARNING)
    out = {**summary, **points.fit, "proposal": points.name, "split": settings.split, "run_dir": str(folder.path),
           "epoch": run.epoch, "checkpoint": run.which, "seed": chosen.seed, "per_point": str(per_point) if per_point else None,
           "figure": str(figure) if figure else None}
    line = headline(out)
    with results_kept(folder):
        if per_point is not None:
            write_per_point(result, per_point)
        if figure is not None and current().is_main:   # every process has the gathered points: one draws them
            columns = result.columns()
            evaluation_figure(result.log_px, columns.get("elbo"), columns.get("khat"), figure,
                              caption=f"{Path(folder.path).name} · epoch {run.epoch} · {settings.split} points · {line}")
        _tell(say, line)
        out["seconds"] = round(time.perf_counter() - started, 3)
        folder.record("evaluate", {**options, "batch_size": chosen.batch_size, "chunk_size": importance.chunk_size,
                                   "is_k": annealing.is_k}, out, run.checkpoint)
    return out


def headline(summary: dict) -> str:
    """An evaluation's result in one line: log p̂ ± SE, how it was estimated, and whether to trust
    it, e.g. ``log p(x) = -103.94 ± 0.88 nats (IS, K=5000, n=1000) — unreliable: k-hat > 0.7 for
    99.7% of points``."""
    se = summary.get("log_likelihood_se")
    value = f"log p(x) = {summary['log_likelihood']:.2f}" + (f" ± {se:.2f} nats" if se is not None else
                                                                 " nats (no SE from one point)")
    bad = summary.get("khat_frac_gt_0_7")
    if summary["method"] == "ais":
        how = f"AIS, T={summary['steps']}, chains={summary['chains']}, n={summary['n']}"
        verdict = (f"acceptance {summary['accept_rate_mean']:.2f}; " +
                   (f"k-hat across chains > 0.7 for {bad:.1%} of points" if bad is not None else
                    "k-hat across chains unknown (too few chains)"))
    else:
        how = f"IS, K={summary['k']}, n={summary['n']}"
        verdict = ("k-hat unknown (too few draws to fit a tail)" if summary.get("reliable") is None else
                   f"{'reliable' if summary['reliable'] else 'unreliable'}: k-hat > 0.7 for {bad:.1%} of points")
    return f"{value} ({how}, proposal {summary['proposal']}) — {verdict}"


# ---------------------------------------------------------------------------- compare

@dataclass(frozen=True, kw_only=True)
class CompareRunSettings(Settings):
    """``compare``'s own: which points."""

    limit: int = setting(1000, "Evaluate the first LIMIT points of the split.", check=whole(1))
    split: str | None = setting(None, "Points to evaluate [default: test; both for a meanfield run].",
                                choices=(*SPLITS, "both"))

    def splits(self, run: Run) -> list[str]:
        """The splits to compare: both for a per-datapoint guide by default (its rows are q for
        the training points, a test-time fit for the others)."""
        if self.split is None:
            return ["train", "test"] if run.vae.can("per_datapoint") else ["test"]
        return ["train", "test"] if self.split == "both" else [self.split]


def compare_run(folder: RunFolder, settings: CompareRunSettings = CompareRunSettings(), *,
                compare: CompareSettings = CompareSettings(), progress: Report = False,
                say: Say | None = None) -> dict:
    """``pyrovae compare``: the amortization and approximation gaps of the run (Cremer et al.
    2018; :class:`~pyrovae.inference.compare.Comparison`) on the first points of each split, each
    table said to ``say`` (default: this module's logger); recorded in evaluations.jsonl and
    returned."""
    keeps = folder.check()
    run = folder.load()
    result = {"run_dir": str(folder.path), "guide": run.config.guide, "epoch": run.epoch, "checkpoint": run.which,
              "k": compare.k, "seed": compare.seed}
    if folder.resume and not any((Path(folder.path) / runs.PARTIAL).glob("compare-*.npz")):
        raise UsageError(f"{str(folder.path)!r} holds no interrupted comparison to resume; run without "
                         f"{option('resume', True)}")
    for split in settings.splits(run):
        x, index = run.points(split, settings.limit, compare.seed)
        options = {"command": "compare", "split": split, "limit": settings.limit, "epoch": run.epoch,
                   "checkpoint": run.checkpoint}   # partial points are of this checkpoint only
        path = folder.partial_path("compare", {**options, **compare.as_dict()})
        keep = Keep(path if keeps or folder.resume else None, folder.resume and path.exists(), options)
        table = Comparison(compare).compare(run, x, index=index, progress=progress, keep=keep)
        _tell(say, format_table(table, f"{split} points of {folder.path}"))
        result[split] = table
    with results_kept(folder):
        folder.record("compare", {"limit": settings.limit, "split": settings.split, **compare.as_dict(),
                                  "epoch": run.epoch}, result, run.checkpoint)
    return result


# ---------------------------------------------------------------------------- bdmc

@dataclass(frozen=True, kw_only=True)
class BDMCRunSettings(Settings):
    """``bdmc``'s own: how many points to simulate, and where the chains start."""

    n: int = setting(100, "Points (z, x) to simulate from the model.", check=whole(1))
    proposal: str = setting("guide", "Where the forward chains start (and the reverse ones end): the run's q, or p(z).",
                            choices=("guide", "encoder", "prior"))


def bdmc_run(folder: RunFolder, settings: BDMCRunSettings = BDMCRunSettings(), *,
             annealing: BDMCSettings = BDMCSettings(), progress: Report = False, say: Say | None = None) -> dict:
    """``pyrovae bdmc``: the BDMC sandwich of log p(x) (:class:`~pyrovae.evaluation.ais.BDMC`) on
    ``settings.n`` points simulated from the run's model (the test rows, cycled, as templates);
    the bounds said to ``say``, recorded in evaluations.jsonl and returned. A run without an
    encoder has no q for new points: its chains start at the prior (said to ``say``)."""
    keeps = folder.check()
    started = time.perf_counter()
    run = folder.load()
    proposal = settings.proposal
    if not run.vae.can("amortized") and proposal != "prior":
        proposal = "prior"
        _tell(say, f"pyrovae: note: a {option('guide', run.config.guide)} run has no q for new points; the chains "
                   "start at the prior", logging.WARNING)
    n, test = settings.n, run.data.test
    template = rows_of(test, [i % len(test[0]) for i in range(n)])
    options = {"command": "bdmc", "epoch": run.epoch, "checkpoint": run.checkpoint}   # points of this checkpoint only
    path = folder.partial_path("bdmc", {**options, "n": n, "steps": annealing.steps, "chains": annealing.chains,
                                        "leapfrog": annealing.leapfrog, "is_k": annealing.is_k, "proposal": proposal,
                                        "seed": annealing.seed, "batch_size": annealing.batch_size,
                                        "adapt_step_size": annealing.adapt_step_size,
                                        "tune_points": annealing.tune_points})
    keep = Keep(path if keeps or folder.resume else None, folder.resume, options)
    result = BDMC(annealing).estimate(run.vae, template, "guide" if proposal == "encoder" else proposal,
                                      progress=progress, keep=keep)
    summary = result.summary()
    _tell(say, f"BDMC on {n} simulated points, T = {annealing.steps}: {summary['forward_lower_bound']:.3f} <= "
               f"log p(x) <= {summary['reverse_upper_bound']:.3f} (gap {summary['gap']:.3f} ± {summary['gap_se']:.3f} "
               "nats)")
    out = {**summary, "run_dir": str(folder.path), "epoch": run.epoch, "checkpoint": run.which,
           "seconds": round(time.perf_counter() - started, 3)}
    with results_kept(folder):
        folder.record("bdmc", {"n": n, "steps": annealing.steps, "chains": annealing.chains,
                               "leapfrog": annealing.leapfrog, "is_k": annealing.is_k, "proposal": proposal,
                               "seed": annealing.seed, "epoch": run.epoch, "adapt_step_size": annealing.adapt_step_size,
                               "tune_points": annealing.tune_points}, out, run.checkpoint)
    return out


# ---------------------------------------------------------------------------- certify

@dataclass(frozen=True, kw_only=True)
class CertifyRunSettings(Settings):
    """``certify``'s own: which test points."""

    limit: int | None = setting(None, "Certify only the first LIMIT test points [default: all].",
                                check=optional(whole(1), "omit it to certify every test point"))


def certify_run(folder: RunFolder, settings: CertifyRunSettings = CertifyRunSettings(), *,
                certify: CertifySettings = CertifySettings(), progress: Report = False,
                say: Say | None = None) -> dict:
    """``pyrovae certify``: Wu et al.'s protocol on the run's test points
    (:class:`~pyrovae.evaluation.certify.Certification`): BDMC on points simulated from the model
    (the test rows as templates) chooses T, AIS with tuned-then-frozen kernels estimates log p(x)
    at T, a check at 2T confirms it. The certificate (JSON) is recorded in evaluations.jsonl, tied
    to the checkpoint, written as RUN_DIR/certificate.md, and returned; each stage is said to
    ``say``. The estimate's finished points survive an interrupt (``--resume``)."""
    keeps = folder.check()
    started = time.perf_counter()
    run = folder.load()
    points = points_and_proposal(run, "test", None, limit=settings.limit, seed=certify.seed, progress=progress)
    bdmc_proposal = "guide" if run.vae.can("amortized") else "prior"
    options = {"command": "certify", "limit": settings.limit, "proposal": points.name, "epoch": run.epoch,
               **certify.as_dict()}
    keep = folder.keep(keeps, "certify", {**options, "checkpoint": run.checkpoint})
    certificate = Certification(certify).certify(run.vae, points.data, run.data.test, points.proposal,
                                                 bdmc_proposal=bdmc_proposal, progress=progress, keep=keep,
                                                 say=lambda line: _tell(say, line))
    out = {**certificate.summary(), **points.fit, "bdmc_proposal": bdmc_proposal, "run_dir": str(folder.path),
           "epoch": run.epoch, "seed": certify.seed, "checkpoint": run.checkpoint, "versions": runs.versions(),
           "seconds_wall": round(time.perf_counter() - started, 3)}
    if not out["certified"]:
        _tell(say, "pyrovae: warning: not certified: the estimates at T and 2T differ by more than the target; "
                   f"rerun with a larger {option('steps')} or {option('target-gap')}", logging.WARNING)
    with results_kept(folder):
        folder.record("certify", options, out, run.checkpoint)
        if keeps and current().is_main:
            with atomic_path(Path(folder.path) / runs.CERTIFICATE) as tmp:
                tmp.write_text(certificate_markdown(out))
    return out


def certificate_markdown(c: dict) -> str:
    """A certificate's JSON as a short markdown page."""
    def pm(value, se, digits=3):
        return "-" if value is None else f"{value:.{digits}f}" + ("" if se is None else f" ± {se:.{digits}f}")
    check = c["convergence"]
    verdict = "**certified**" if c["certified"] else "**not certified** (the estimates at T and 2T disagree)"
    lines = [f"# log p(x) certificate: {c['run_dir']}", "",
             f"{verdict}: log p(x) = **{pm(c['log_likelihood'], c['log_likelihood_se'])} nats** on {c['n']} test "
             f"points (epoch {c['epoch']}, checkpoint sha256 {str(c['checkpoint'])[:16]}…).", "",
             "| what | value |", "|---|---|",
             f"| AIS (T = {c['steps']}, {c['chains']} chains, {c['leapfrog']} leapfrog steps, from {c['proposal']}) | "
             f"{pm(c['log_likelihood'], c['log_likelihood_se'])} |",
             f"| BDMC gap at T = {c['steps']} ({c['bdmc_n']} simulated points) | {pm(c['bdmc_gap'], c['bdmc_gap_se'])} "
             f"(upper bound {c['bdmc_gap_upper']:.3f} ≤ target {c['target_gap']}) |",
             "| BDMC ladder (T: gap) | " + ", ".join(f"{r['steps']}: {r['gap']:.3f}" for r in c["bdmc_ladder"]) + " |",
             f"| check on {check['points']} points: log p̂ at 2T − at T | "
             f"{pm(check['difference'], check['difference_se'])} ({'agrees' if check['agrees'] else 'disagrees'}) |",
             f"| HMC acceptance | {c['accept_rate_mean']:.3f} (step sizes {c['step_sizes']} on {c['tune_points']} "
             f"points) |",
             f"| IS, K = {c['is_k']}, same points | {pm(c['is_log_likelihood'], c['is_log_likelihood_se'])} "
             f"(AIS − IS = {pm(c['ais_minus_is'], None)}) |",
             f"| ELBO, same points | {pm(c['elbo'], c['elbo_se'])} |",
             f"| seconds | {c['seconds_wall']:.0f} (BDMC {c['seconds']['bdmc']:.0f}, estimate "
             f"{c['seconds']['estimate']:.0f}, check {c['seconds']['check']:.0f}) |",
             "| versions | " + ", ".join(f"{k} {v}" for k, v in c["versions"].items()) + " |", ""]
    return "\n".join(lines)
