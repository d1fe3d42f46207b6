"""A study's report: the lambda(t) schedules its best trials found, drawn over training time t/T (as
Figure 2 of paper 002 draws eq. 4), the best validation accuracy of each method, and its trials.

`study_report` reads the store once into a `Report`; `lambda_figure` / `methods_figure` draw it as SVG
or PNG bytes with matplotlib's object API (no pyplot, no global backend: safe in a server's threads);
`report_html` is one self-contained page: figures inline as SVG (matplotlib writes text as paths, so no
font is fetched), styles inline, no script. lambda(t) comes from `trainers.schedule.run_loss_weight`,
the one function the training loop itself uses, on the trial's config merged as the trainable merged it.
"""

from __future__ import annotations

import html
import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from optuna.trial import FrozenTrial, TrialState

from service import ledger
from service import repository as repo
from service.db import Study
from service.schemas import StudySpec
from service.studies import params, stored_spec, trial_arm

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

Format = Literal["svg", "png"]
FIGURES = ("lambda", "methods")
TOP_PER_ARM = 3  # lambda(t) of this many best trials of each method: the best bold, the others faint
CURVE_POINTS = 200
DEFAULT_T = 1000  # the x axis is t/T; a trial that never reported its step count is drawn on this grid


@dataclass
class ArmSummary:
    arm: str
    trials: int = 0
    complete: int = 0
    best: FrozenTrial | None = None
    top: list[FrozenTrial] = field(default_factory=list)  # best first, at most TOP_PER_ARM


@dataclass
class Report:
    study: Study
    spec: StudySpec
    trials: list[FrozenTrial]
    arms: dict[str, ArmSummary]  # in the spec's order

    def curve(self, trial: FrozenTrial) -> tuple[list[float], list[float]]:
        """(t/T, lambda(t)) of a trial's run, t = 1..T."""
        from search_spaces import merge_config
        from trainers.schedule import run_loss_weight

        config = merge_config(
            self.spec.trainer.to_dict(), params(trial), cpus_per_trial=self.spec.cpus_per_trial
        )
        T = int(ledger.TrialRecord.from_trial(trial).total_steps or DEFAULT_T)
        steps = sorted({max(1, round(i * T / CURVE_POINTS)) for i in range(CURVE_POINTS + 1)})
        return [t / T for t in steps], [run_loss_weight(config, t, T) for t in steps]


def _of_arm(arm: str):
    return lambda t: "method" in params(t) and trial_arm(t) == arm


def study_report(study: Study, *, storage: BaseStorage) -> Report:
    spec = stored_spec(study)
    ot = repo.load_optuna_study(storage, name=study.optuna_study_name)
    trials = sorted(ot.get_trials(deepcopy=False), key=lambda t: t.number) if ot else []
    arms = {arm: ArmSummary(arm) for arm in spec.resolved_methods()}
    for t in trials:
        if "method" in params(t):
            arms.setdefault(trial_arm(t), ArmSummary(trial_arm(t))).trials += 1
    for summary in arms.values():
        done = ledger.best_first(t for t in trials if _of_arm(summary.arm)(t))
        summary.complete, summary.top = len(done), done[:TOP_PER_ARM]
        # The arm's best as /best?method=<arm> finds it: the one definition of a best trial.
        summary.best = ledger.best_trial(
            storage, name=study.optuna_study_name, where=_of_arm(summary.arm), key=summary.arm
        )
    return Report(study=study, spec=spec, trials=trials, arms=arms)


# --- figures --------------------------------------------------------------------------------------------


def _render(fig: Any, fmt: Format) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=120 if fmt == "png" else None, bbox_inches="tight")
    return buf.getvalue()


def lambda_figure(report: Report, fmt: Format = "svg") -> bytes:
    """lambda(t) over t/T of the best trials of each method (eq. 3: lambda weighs the target loss)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.add_subplot()
    colors = _colors(len(report.arms))
    for color, summary in zip(colors, report.arms.values(), strict=True):
        for rank, trial in enumerate(summary.top):
            x, y = report.curve(trial)
            best = rank == 0
            label = f"{summary.arm} #{trial.number} ({trial.value:.3f})" if best else None
            ax.plot(x, y, color=color, lw=2.2 if best else 1.0, alpha=1.0 if best else 0.35, label=label)
    ax.set(
        xlim=(0, 1),
        ylim=(-0.03, 1.03),
        xlabel="training time t / T",
        ylabel="λ(t)  (weight of the target loss)",
    )
    ax.set_title(f"λ(t) of the best trials of each method: {report.spec.name}", fontsize=10)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), title="method #trial (val acc)")
    else:
        ax.text(0.5, 0.5, "no completed trial yet", ha="center", va="center", transform=ax.transAxes)
    return _render(fig, fmt)


def methods_figure(report: Report, fmt: Format = "svg") -> bytes:
    """Best validation accuracy of each method (bars), every completed trial's value (dots)."""
    from matplotlib.figure import Figure

    arms = list(report.arms.values())
    fig = Figure(figsize=(max(4.0, 0.9 * len(arms) + 2), 3.6))
    ax = fig.add_subplot()
    colors = _colors(len(arms))
    for i, (color, summary) in enumerate(zip(colors, arms, strict=True)):
        values = [
            t.value for t in report.trials if t.state == TrialState.COMPLETE and trial_arm(t) == summary.arm
        ]
        if summary.best is not None:
            ax.bar(i, summary.best.value, color=color, alpha=0.8)
            ax.text(i, summary.best.value, f"{summary.best.value:.3f}", ha="center", va="bottom", fontsize=8)
        ax.plot([i] * len(values), values, "o", color="black", ms=3, alpha=0.6)
    ax.set_xticks(range(len(arms)), [s.arm for s in arms], rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="validation accuracy", ylim=(0, 1.05))
    ax.set_title("best validation accuracy of each method (dots: every completed trial)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return _render(fig, fmt)


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


FIGURE = {"lambda": lambda_figure, "methods": methods_figure}


def figure(report: Report, name: str, fmt: Format) -> bytes:
    return FIGURE[name](report, fmt)


# --- the page -------------------------------------------------------------------------------------------

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em auto; max-width: 1100px; color: #222; }
nav a { margin-right: 1em; } table { border-collapse: collapse; margin: .5em 0 1.5em; }
th, td { border-bottom: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; } figure svg { max-width: 100%; height: auto; } code { font-size: 12px; }
.state-COMPLETE { color: #176b2c; } .state-FAIL { color: #a11; } .state-PRUNED { color: #a60; }
"""


def _svg(data: bytes) -> str:
    text = data.decode()
    return text[text.index("<svg") :]  # inline: without the XML prolog and doctype


def _num(value: Any, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _params(trial: FrozenTrial) -> str:
    shown = {k: v for k, v in params(trial).items() if k not in ("method", "schedule")}
    text = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
    return html.escape(text)


def _methods_table(report: Report) -> str:
    rows = []
    for s in report.arms.values():
        b = s.best
        rows.append(
            f"<tr><td>{html.escape(s.arm)}</td><td class=num>{s.complete} / {s.trials}</td>"
            f"<td class=num>{_num(b.value if b else None)}</td>"
            f"<td class=num>{_num(ledger.TrialRecord.from_trial(b).test_acc if b else None)}</td>"
            f"<td class=num>{b.number if b else '—'}</td><td><code>{_params(b) if b else ''}</code></td></tr>"
        )
    head = "<tr><th>method</th><th>complete / trials</th><th>best val acc</th><th>its test acc</th>"
    return f"<table id=methods-table>{head}<th>trial</th><th>params</th></tr>{''.join(rows)}</table>"


def _trials_table(report: Report) -> str:
    rows = []
    for t in report.trials:
        arm = trial_arm(t) if "method" in params(t) else "?"
        value = t.value if t.state == TrialState.COMPLETE else None
        rows.append(
            f"<tr><td class=num>{t.number}</td><td>{html.escape(arm)}</td>"
            f"<td class=state-{t.state.name}>{t.state.name}</td><td class=num>{_num(value)}</td>"
            f"<td class=num>{_num(ledger.TrialRecord.from_trial(t).test_acc)}</td>"
            f"<td class=num>{len(repo.epoch_history(t))}</td><td><code>{_params(t)}</code></td></tr>"
        )
    head = "<tr><th>#</th><th>method</th><th>state</th><th>val acc</th><th>test acc</th><th>epochs</th>"
    return f"<table id=trials-table>{head}<th>params</th></tr>{''.join(rows)}</table>"


def report_html(report: Report, links: dict[str, str | None]) -> str:
    """The page. `links` are the other views of the study (label -> URL; None: not available)."""
    study, e = report.study, html.escape
    nav = " ".join(f'<a href="{e(url)}">{e(label)}</a>' for label, url in links.items() if url)
    files = " ".join(
        f'<a href="report/{name}.{fmt}">{name}.{fmt}</a>' for name in FIGURES for fmt in ("svg", "png")
    )
    error = f"<p><b>error:</b> {e(study.error)}</p>" if study.error else ""
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>{e(study.name)}: transched report</title>
<style>{STYLE}</style></head><body>
<h1>{e(study.name)}</h1>
<p>study <code>{e(study.id)}</code> · status <b id=status>{e(study.status)}</b> ·
{len(report.trials)} trials · methods {e(", ".join(report.arms))} · target {e(report.spec.trainer.target)}
from source {e(report.spec.trainer.source)} ({e(report.spec.trainer.backbone)})</p>{error}
<nav>{nav}</nav>
<h2>Schedules found: λ(t)</h2>
<p>The loss is λ(t)·L<sub>target</sub> + (1 − λ(t))·L<sub>source</sub> (paper 002, eq. 3); each curve is the
schedule a trial trained with, over its training time t/T.</p>
<figure id=lambda-plot>{_svg(lambda_figure(report))}</figure>
<h2>Methods</h2>
<figure id=methods-plot>{_svg(methods_figure(report))}</figure>
{_methods_table(report)}
<h2>Trials</h2>
{_trials_table(report)}
<p>Figures as files: {files}</p>
</body></html>
"""
