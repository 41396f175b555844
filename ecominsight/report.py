"""reports/<run_id>/report.html: one self-contained page about a run, for people to look at.

Data-quality counts, label balance, each model's ROC and precision-recall curves, calibration,
decile lift and cumulative gain, segment sizes, top categories, marketing actions and (where the
source has searches) top queries. Plots are matplotlib (Agg) PNGs inlined as base64 `data:` URLs;
a Content-Security-Policy allows nothing but inline data, styles and the page's own one script,
so the page loads nothing from anywhere. That script records on `<body>` whether every plot
decoded (`data-status="ok"`), which the headless-Chromium test reads.

Privacy: no user id appears on the page, and no group of fewer than `min_group_size` (k) users is
shown. Small groups are merged into a neighbour (lift deciles, calibration bins) or into one
"suppressed" entry, itself shown only when it holds k users or more; the page says what it hid.
Quarantine reasons count rows, not people, and are shown as they are.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import html
import io
import logging
from typing import Any, Sequence

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from ecominsight.catalog import MARKETING_ACTIONS, SEARCH_INSIGHTS, SEGMENTS, USER_PROFILES, USER_SCORES, USER_SEQUENCES
from ecominsight.io import Lake, read_json, write_text_atomic
from ecominsight.storage import StoragePath

log = logging.getLogger(__name__)

MODELS = ("lr", "gbt", "transformer", "hybrid")
TOP_CATEGORIES = 15
TOP_QUERIES = 15
SUPPRESSED = "suppressed (groups < k)"
STATUS_SCRIPT = """window.addEventListener('load', function () {
  var plots = document.querySelectorAll('img.plot'), broken = [];
  for (var i = 0; i < plots.length; i++) {
    var p = plots[i];
    if (!(p.complete && p.naturalWidth > 0 && p.naturalHeight > 0)) { broken.push(p.alt); }
  }
  document.body.setAttribute('data-plots', String(plots.length));
  document.body.setAttribute('data-plots-decoded', String(plots.length - broken.length));
  document.body.setAttribute('data-status', broken.length ? 'broken: ' + broken.join(' | ') : 'ok');
});"""
STYLE = """body{font-family:sans-serif;margin:2em;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.note{color:#555;font-size:.9em}img.plot{display:block;margin:.5em 0;max-width:100%}"""


# ---- k-anonymity helpers (pure) -------------------------------------------------------------------

def suppress_small(counts: dict[str, int], k: int, *, merge: bool = True) -> tuple[dict[str, int], list[str]]:
    """Groups of at least `k` users, plus (with `merge`) one `SUPPRESSED` entry holding the users of
    the groups of 1..k-1 when together they reach k; returns (shown, names of the hidden groups).
    Empty groups describe nobody and are left out. Groups that overlap (a user in several) must not
    be merged: their sum would count people twice."""
    shown = {name: n for name, n in counts.items() if n >= k}
    hidden = [name for name, n in counts.items() if 0 < n < k]
    merged = sum(counts[name] for name in hidden)
    if merge and merged >= k:
        shown[SUPPRESSED] = merged
    return shown, hidden


def merge_small_buckets(buckets: Sequence[dict], k: int, *, weighted: Sequence[str], keep_last: Sequence[str] = ()) -> list[dict]:
    """Adjacent buckets (each with `n`) merged until every bucket holds at least `k` users: the
    `weighted` fields become n-weighted means, `keep_last` fields take the merged run's last value,
    `members` lists the original buckets' positions (1-based). [] when all of them hold fewer than k."""
    merged: list[dict] = []
    run: list[tuple[int, dict]] = []
    for position, bucket in enumerate(buckets, start=1):
        run.append((position, bucket))
        if sum(b["n"] for _, b in run) >= k:
            merged.append(_combine(run, weighted, keep_last))
            run = []
    if run:
        if not merged:
            return []
        # A short tail joins the last full bucket.
        last_run = [(p, b) for p, b in zip(merged[-1]["members"], merged[-1]["_parts"])] + run
        merged[-1] = _combine(last_run, weighted, keep_last)
    for bucket in merged:
        bucket.pop("_parts")
    return merged


def _combine(run: list[tuple[int, dict]], weighted: Sequence[str], keep_last: Sequence[str]) -> dict:
    n = sum(b["n"] for _, b in run)
    out = {"n": n, "members": [p for p, _ in run], "_parts": [b for _, b in run]}
    for name in weighted:
        out[name] = sum(b[name] * b["n"] for _, b in run) / n
    for name in keep_last:
        out[name] = run[-1][1][name]
    return out


# ---- plots ----------------------------------------------------------------------------------------

def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(title: str, xlabel: str, ylabel: str, size: tuple[float, float] = (5.5, 4.0)):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def _img(alt: str, png: str) -> str:
    return f'<img class="plot" alt="{html.escape(alt)}" src="data:image/png;base64,{png}">'


def bar_plot(title: str, counts: dict[str, int], *, xlabel: str = "users") -> str:
    """A horizontal bar chart of `counts` (largest at the top) as an <img>."""
    names = list(counts)[::-1]
    fig, ax = _figure(title, xlabel, "", size=(6.5, 0.6 + 0.32 * max(len(names), 1)))
    ax.barh(names, [counts[n] for n in names], color="#4c72b0")
    return _img(title, _png(fig))


def line_plot(title: str, xlabel: str, ylabel: str, series: dict[str, tuple[list[float], list[float]]], *,
              diagonal: bool = False, step: bool = False) -> str:
    """One line per entry of `series` (name -> (x, y)) as an <img>."""
    fig, ax = _figure(title, xlabel, ylabel)
    for name, (x, y) in series.items():
        (ax.step if step else ax.plot)(x, y, label=name, **({"where": "post"} if step else {"marker": "o", "markersize": 3}))
    if diagonal:
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="reference")
    ax.legend(loc="best")
    return _img(title, _png(fig))


# ---- gathering (reads the lake) -------------------------------------------------------------------

def _data_quality(lake: Lake, run_id: str) -> tuple[str, dict] | None:
    """The run's data_quality.json, else the newest one on the lake (the clean run that made the data)."""
    own = lake.report_dir(run_id) / "data_quality.json"
    candidates = [own] if own.exists() else lake.run_reports("data_quality.json")
    return (candidates[-1].parent.name, read_json(candidates[-1])) if candidates else None


def _model_metrics(lake: Lake, version: str | None) -> dict[str, tuple[str, dict]]:
    """name -> (version, metrics.json) of each model: the scores' version where it exists, else LATEST."""
    found = {}
    for name in MODELS:
        chosen = version if version and (lake.model_dir(name, version) / "metrics.json").exists() else None
        latest = lake.model_pointer(name)
        if chosen is None and latest.exists():
            chosen = latest.read_text().strip()
        if chosen and (lake.model_dir(name, chosen) / "metrics.json").exists():
            found[name] = (chosen, read_json(lake.model_dir(name, chosen) / "metrics.json"))
    return found


def _champion(lake: Lake, name: str | None, version: str | None) -> dict[str, Any] | None:
    """The scoring model of the day and, from its lineage.json, why it was chosen (the validation ranking)."""
    if not name or not version or not (lake.model_dir(name, version) / "lineage.json").exists():
        return None
    record = read_json(lake.model_dir(name, version) / "lineage.json").get("champion", {})
    return {**record, "model": name, "version": version, "chosen": record.get("model"), "scored_with": name}


def gather(spark: SparkSession, lake: Lake, run_id: str, *, score_date: dt.date) -> dict[str, Any]:
    """Everything the page shows, as plain data (aggregates only, never a user id)."""
    data: dict[str, Any] = {"run_id": run_id, "score_date": score_date.isoformat(),
                            "data_quality": _data_quality(lake, run_id)}
    if lake.exists(USER_SEQUENCES):
        rows = lake.read(spark, USER_SEQUENCES).groupBy("split", "label").count().collect()
        data["labels"] = {(r["split"], int(r["label"])): r["count"] for r in rows}
    scores = lake.read(spark, USER_SCORES).filter(F.col("score_date") == F.lit(score_date))
    name = F.first("model_name") if "model_name" in scores.columns else F.lit(None)
    score_row = scores.agg(F.count(F.lit(1)).alias("n"), F.first("model_version").alias("version"),
                           name.alias("name")).first()
    data["users_scored"] = score_row["n"]
    data["models"] = _model_metrics(lake, score_row["version"])
    data["champion"] = _champion(lake, score_row["name"], score_row["version"])
    segments = lake.read(spark, SEGMENTS)
    data["segments"] = {r["segment"]: r["users"] for r in segments.orderBy(F.desc("users"), "segment").collect()}
    actions = lake.read(spark, MARKETING_ACTIONS).groupBy("action").count()
    data["actions"] = {r["action"]: r["count"] for r in actions.orderBy(F.desc("count"), "action").collect()}
    profiles = lake.read(spark, USER_PROFILES)
    interests = profiles.select("user_id", F.explode("top_categories").alias("c")).groupBy(F.col("c.name").alias("name")) \
        .agg(F.countDistinct("user_id").alias("users"))
    data["categories"] = {r["name"]: r["users"] for r in interests.orderBy(F.desc("users"), "name").collect()}
    if lake.exists(SEARCH_INSIGHTS):
        queries = lake.read(spark, SEARCH_INSIGHTS).where(F.col("segment") == "all")
        data["queries"] = [r.asDict() for r in queries.orderBy("rank").collect()]
    return data


# ---- rendering (pure) -----------------------------------------------------------------------------

def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _hidden_note(hidden: Sequence[str], k: int, what: str, *, merged: bool = True) -> str:
    if not hidden:
        return ""
    return _note(f"{len(hidden)} {what} with fewer than {k} users are not shown"
                 + (f" on their own ({SUPPRESSED!r} totals them when together they reach {k})." if merged else "."))


def _section_quality(data: dict, k: int) -> str:
    found = data.get("data_quality")
    if not found:
        return _note("No data_quality.json on the lake: run the clean stage.")
    clean_run, report = found
    tables = report.get("tables", {})
    rows, reasons = [], []
    for table, profile in sorted(tables.items()):
        rows.append((table, profile.get("input_rows"), profile.get("clean_rows"), profile.get("quarantined_rows")))
        for reason, n in sorted(profile.get("rows_by_reason", {}).items()):
            if reason != "clean":
                reasons.append((table, reason, n))
    parts = [_note(f"From the clean run {clean_run}. Row counts (rows of input files, not people)."),
             _table(("table", "input rows", "clean rows", "quarantined rows"), rows)]
    if reasons:
        parts.append(_table(("table", "quarantine reason", "rows"), reasons))
    without = report.get("users_without_events")
    if isinstance(without, int):
        parts.append(_note(f"Users without a clean event: {without if without == 0 or without >= k else f'fewer than {k}'}."))
    return "".join(parts)


def _section_labels(data: dict, k: int) -> str:
    labels = data.get("labels")
    if not labels:
        return _note("No training table (features/user_sequences) on the lake.")
    counts = {f"{split} / {'buys' if label else 'does not buy'}": n for (split, label), n in sorted(labels.items())}
    shown, hidden = suppress_small(counts, k)
    return (_note("Users of the training table by split and label (label: a purchase within the horizon after the cutoff).")
            + (bar_plot("Label balance", shown) if shown else "") + _hidden_note(hidden, k, "cells"))


def _section_models(data: dict, k: int) -> str:
    models = data.get("models") or {}
    if not models:
        return _note("No trained model on the lake.")
    rows, roc, pr, calibration, lift, gain, notes = [], {}, {}, {}, {}, {}, []
    scored_with = (data.get("champion") or {}).get("scored_with")
    for name, (version, metrics) in models.items():
        test = metrics.get("test", {})
        rows.append((name + (" (scores the users)" if name == scored_with else ""), version, test.get("n"),
                     test.get("positive_rate"), metrics.get("valid", {}).get("roc_auc"), test.get("roc_auc"),
                     test.get("avg_precision"), test.get("brier"), (metrics.get("cost") or {}).get("fit_seconds")))
        n, rate = test.get("n") or 0, test.get("positive_rate") or 0.0
        positives, negatives = round(n * rate), n - round(n * rate)
        if min(positives, negatives) < k:
            notes.append(f"{name}: ROC and PR curves hidden (the test split has fewer than {k} users of one class).")
        elif "roc_curve" not in test:
            notes.append(f"{name}: its metrics.json (version {version}) holds no curve points; retrain to plot them.")
        else:
            roc[name] = (test["roc_curve"]["fpr"], test["roc_curve"]["tpr"])
            pr[name] = (test["pr_curve"]["recall"], test["pr_curve"]["precision"])
        bins = merge_small_buckets(test.get("reliability", []), k, weighted=("mean_predicted", "observed_rate"))
        if bins:
            calibration[name] = ([b["mean_predicted"] for b in bins], [b["observed_rate"] for b in bins])
        deciles = merge_small_buckets(test.get("decile_lift", []), k, weighted=("positive_rate",), keep_last=("cumulative_gain",))
        if deciles and rate:
            share = [sum(len(b["members"]) for b in deciles[: i + 1]) / 10 for i in range(len(deciles))]
            lift[name] = (share, [b["positive_rate"] / rate for b in deciles])
            gain[name] = ([0.0] + share, [0.0] + [b["cumulative_gain"] for b in deciles])
            if len(deciles) < len(test.get("decile_lift", [])):
                notes.append(f"{name}: deciles with fewer than {k} test users are merged with their neighbours "
                             f"({len(deciles)} buckets shown).")
    parts = [_champion_note(data.get("champion")),
             _note("Validation ROC-AUC (what the champion is chosen by) and the test split of each model (the split no "
                   "model was tuned or chosen on); training seconds are wall time on this run's compute (the hybrid's "
                   "are its stacker's, on top of its components')."),
             _table(("model", "version", "test users", "positive rate", "valid ROC-AUC", "test ROC-AUC",
                     "avg precision", "Brier", "training s"), rows)]
    if roc:
        parts.append(line_plot("ROC curve (test)", "false positive rate", "true positive rate", roc, diagonal=True, step=True))
        parts.append(line_plot("Precision-recall curve (test)", "recall", "precision", pr, step=True))
    if calibration:
        parts.append(line_plot("Calibration (reliability, test)", "mean predicted probability", "observed purchase rate",
                               calibration, diagonal=True))
        parts.append(_note(f"Calibration bins with fewer than {k} users are merged with their neighbours."))
    if lift:
        parts.append(line_plot("Decile lift (test)", "share of users, highest scores first", "lift over the base rate", lift))
        parts.append(line_plot("Cumulative gain (test)", "share of users, highest scores first", "share of buyers captured",
                               gain, diagonal=True))
    return "".join(parts) + "".join(_note(n) for n in notes)


def _champion_note(champion: dict[str, Any] | None) -> str:
    if not champion:
        return _note("The scores name no model chosen on validation (scored before champions, or by a forced model).")
    text = f"The users are scored with {champion['model']} (version {champion['version']})"
    if champion.get("chosen") and champion["chosen"] != champion["model"]:
        return _note(text + f", set by score.model; the train stage's champion was {champion['chosen']}.")
    if champion.get("reason"):
        text += f": {champion['reason']}"
    versus = champion.get("champion_vs_best_baseline") or {}
    if versus.get("delta") is not None:
        low, high = versus["ci"]
        text += (f". On test, after the choice: {versus['delta']:+.3f} ROC-AUC against {versus['baseline']} "
                 f"(paired bootstrap 95% interval {low:+.3f} to {high:+.3f})")
    return _note(text + ".")


def _section_counts(title: str, counts: dict[str, int], k: int, what: str, *, limit: int | None = None,
                    merge: bool = True) -> str:
    shown, hidden = suppress_small(counts, k, merge=merge)
    if limit is not None:
        shown = dict(list(shown.items())[:limit])
    note = _hidden_note(hidden, k, what, merged=merge)
    if not shown:
        return _note(f"No {what} with {k} users or more.") + note
    return bar_plot(title, shown) + _table((what, "users"), list(shown.items())) + note


def _section_queries(data: dict, k: int) -> str:
    queries = [q for q in data.get("queries") or [] if q["users"] >= k][:TOP_QUERIES]
    hidden = sum(1 for q in data.get("queries") or [] if q["users"] < k)
    rows = [(q["query"], q["users"], q["searches"], q["conversion_rate"], q["outcome"]) for q in queries]
    return ((_table(("query", "users", "searches", "conversion rate", "outcome"), rows) if rows
             else _note(f"No query searched by {k} users or more."))
            + (_note(f"{hidden} queries searched by fewer than {k} users are not shown.") if hidden else ""))


def render(data: dict[str, Any], *, min_group_size: int) -> str:
    """The report page for `gather`'s data."""
    k = min_group_size
    sections = [
        ("data-quality", "Data quality", _section_quality(data, k)),
        ("label-balance", "Label balance", _section_labels(data, k)),
        ("models", "Models: ROC, precision-recall, calibration, lift and gain", _section_models(data, k)),
        ("segments", "Segment sizes", _section_counts("Users per segment", data.get("segments", {}), k, "segments")),
        ("categories", "Top categories", _note("Users whose top interests include the category (or title).")
         + _section_counts("Top categories", data.get("categories", {}), k, "categories", limit=TOP_CATEGORIES,
                           merge=False)),
        ("actions", "Marketing actions", _section_counts("Users per action", data.get("actions", {}), k, "actions")),
    ]
    if "queries" in data:
        sections.append(("search", "Top search queries", _section_queries(data, k)))
    script_hash = base64.b64encode(hashlib.sha256(STATUS_SCRIPT.encode("utf-8")).digest()).decode("ascii")
    policy = f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'"
    body = "".join(f'<section id="{sid}"><h2>{html.escape(title)}</h2>{content}</section>' for sid, title, content in sections)
    scope = f"Run {data['run_id']}, scores of {data['score_date']}: {data.get('users_scored', 0):,} users scored."
    privacy = (f"Privacy: user ids never appear here, and no group of fewer than {k} users is shown "
               "(insights.report.min_group_size).")
    header = f"<h1>ecominsight report</h1>{_note(scope)}{_note(privacy)}"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{policy}">'
            f"<title>ecominsight report {html.escape(data['run_id'])}</title><style>{STYLE}</style></head>"
            f'<body data-status="pending">{header}{body}<script>{STATUS_SCRIPT}</script></body></html>')


def write_report(spark: SparkSession, lake: Lake, run_id: str, *, score_date: dt.date, min_group_size: int) -> StoragePath:
    """Gather, render and write reports/<run_id>/report.html; returns its path."""
    path = lake.report_dir(run_id) / "report.html"
    write_text_atomic(path, render(gather(spark, lake, run_id, score_date=score_date), min_group_size=min_group_size))
    log.info("report: wrote %s", path)
    return path
