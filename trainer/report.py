"""A report a person can judge at a glance: figures, plots and one HTML page (plus a Markdown twin)."""
from __future__ import annotations

import csv
import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402

from edge.core.bundle import Bundle  # noqa: E402
from edge.core.inspector import Inspector  # noqa: E402
from edge.core.scoring import heat_colors, verdict  # noqa: E402

GRID_PER_CLASS = 4
FIGURE_DPI = 110


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=FIGURE_DPI)
    plt.close(fig)


def histogram(path: Path, scores: np.ndarray, labels: np.ndarray, threshold: float) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    bins = np.histogram_bin_edges(scores, bins=60)
    ax.hist(scores[labels == 0], bins=bins, alpha=0.6, label=f"good ({np.sum(labels == 0)})", color="tab:green")
    if np.any(labels == 1):
        ax.hist(scores[labels == 1], bins=bins, alpha=0.6, label=f"anomalous ({np.sum(labels == 1)})", color="tab:red")
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4g}")
    ax.set_xlabel("anomaly score")
    ax.set_ylabel("images")
    ax.legend()
    _save(fig, path)


def curves(path: Path, scores: np.ndarray, labels: np.ndarray, result: dict) -> bool:
    if len(np.unique(labels)) < 2:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8))
    fpr, tpr, _ = roc_curve(labels, scores)
    left.plot(fpr, tpr)
    left.plot([0, 1], [0, 1], color="gray", linestyle=":")
    left.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC, AUROC {result['image_auroc']:.4f}")
    precision, recall, _ = precision_recall_curve(labels, scores)
    right.plot(recall, precision)
    right.set(xlabel="recall", ylabel="precision", title=f"Precision-recall, AP {result['average_precision']:.4f}")
    _save(fig, path)
    return True


def operating_curve(path: Path, scores: np.ndarray, labels: np.ndarray, summary: dict) -> bool:
    """Catch rate against false-reject rate (log axis), the shipped threshold marked: what moving it would buy."""
    if len(np.unique(labels)) < 2:
        return False
    fpr, tpr, _ = roc_curve(labels, scores)
    good = max(int(np.sum(labels == 0)), 1)
    floor = 0.5 / good  # zero false rejects drawn at half an image, so a log axis can show them
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.step(np.maximum(fpr, floor), tpr, where="post", label="every threshold on the test images")
    shipped_frr, shipped_catch = summary["false_rejects"]["rate"], summary["caught"]["rate"]
    ax.plot([max(shipped_frr, floor)], [shipped_catch], "o", color="black",
            label=f"shipped threshold: {shipped_catch:.0%} caught, {shipped_frr:.1%} rejected")
    ax.set_xscale("log")
    ax.set_xlim(floor * 0.8, 1.0)
    ax.set_ylim(0, 1.02)
    ax.set(xlabel="good parts rejected (false-reject rate)", ylabel="defects caught", title="Operating points")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)
    return True


def _examples(scored, labels_wanted: int) -> list[int]:
    """The highest- and lowest-scoring images of a class: the ones worth a look."""
    idx = np.flatnonzero(scored.labels == labels_wanted)
    if idx.size == 0:
        return []
    order = idx[np.argsort(scored.scores[idx])]
    half = GRID_PER_CLASS // 2
    picks = list(order[:half]) + list(order[-half:])
    return list(dict.fromkeys(int(i) for i in picks))


def _show(image: np.ndarray) -> np.ndarray:
    return image[..., 0] if image.shape[-1] == 1 else image


def grid(path: Path, inspector: Inspector, scored, threshold: float) -> bool:
    """Input / reconstruction (for kinds that reconstruct) / heatmap rows, each titled with its score; colours
    anchored to the pixel threshold."""
    picks = _examples(scored, 0) + _examples(scored, 1)
    results = [inspector.inspect(scored.samples[i].image(inspector.spec.color), keep_images=True) for i in picks]
    reconstructs = any(result.reconstruction is not None for result in results)
    columns = 3 if reconstructs else 2
    fig, axes = plt.subplots(len(picks), columns, figsize=(2.2 * columns, 2.1 * len(picks)), squeeze=False)
    cmap = "gray" if inspector.spec.color == "gray" else None
    for row, (i, result) in enumerate(zip(picks, results)):
        sample = scored.samples[i]
        axes[row, 0].imshow(_show(result.model_input), cmap=cmap, vmin=0, vmax=1)
        tag = "FAIL" if verdict(result.score, threshold) == "fail" else "pass"
        axes[row, 0].set_title(f"{sample.defect}: {result.score:.4g} {tag}", fontsize=8)
        if reconstructs:
            axes[row, 1].imshow(_show(np.clip(result.reconstruction, 0, 1)), cmap=cmap, vmin=0, vmax=1)
            axes[row, 1].set_title("reconstruction", fontsize=8)
        axes[row, -1].imshow(heat_colors(result.heat, inspector.calibration.pixel_threshold)[..., ::-1])
        axes[row, -1].set_title("anomaly map (pixel threshold = mid-scale)", fontsize=8)
        for ax in axes[row]:
            ax.axis("off")
    _save(fig, path)
    return reconstructs


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


GOOD_POSITIVE = "positive class: good, as the study counted"
# (metrics.json key, what it means in plain words); tp/fp/tn/fn go to the confusion matrix instead
HEADLINE_FIGURES = (
    ("image_auroc", "image AUROC (positive class: defect)"),
    ("average_precision", "average precision (positive class: defect)"),
    ("f1", f"F1 ({GOOD_POSITIVE})"),
    ("precision", f"precision ({GOOD_POSITIVE})"),
    ("recall", f"recall ({GOOD_POSITIVE})"),
    ("defect_catch_rate", "defect catch rate: share of defect images that fail"),
    ("good_pass_rate", "good pass rate: share of good images that pass"),
    ("threshold", "threshold: an image fails when its score >= threshold"),
    ("false_reject_rate", "false-reject rate: share of good images that fail"),
    ("false_reject_rate_ci95", "false-reject rate, 95% interval"),
    ("pixel_auroc", "pixel AUROC"),
    ("pro", "PRO (per-region overlap)"),
)
BEST_F1_LABELS = {"threshold": "threshold", "f1": f"F1 ({GOOD_POSITIVE})",
                  "precision": f"precision ({GOOD_POSITIVE})", "recall": f"recall ({GOOD_POSITIVE})"}
# rows: true class; columns: verdict. Keys count the defect as the positive class.
CONFUSION_ROWS = (
    ("defect images", (("tp", "defects caught"), ("fn", "defects passed"))),
    ("good images", (("fp", "good rejected"), ("tn", "good passed"))),
)


def _rows(result: dict) -> list[tuple[str, str, str]]:
    """(plain label, metrics.json key, value) for every figure the result has."""
    rows = [(label, key, _fmt(result[key])) for key, label in HEADLINE_FIGURES if result.get(key) is not None]
    for key, value in (result.get("best_f1") or {}).items():
        rows.append((f"best-F1 point: {BEST_F1_LABELS.get(key, key)}", f"best_f1.{key}", _fmt(value)))
    for key, value in (result.get("parity") or {}).items():
        rows.append((f"int8 vs float: {key}", f"parity.{key}", _fmt(value)))
    for name, row in (result.get("per_class") or {}).items():  # each defect class against the good images
        for key, value in row.items():
            rows.append((f"class {name}: {key}", f"per_class.{name}.{key}", _fmt(value)))
    return rows


def _confusion_cells(result: dict) -> list[tuple[str, list[str]]]:
    """The confusion matrix in words, e.g. "defects caught: 12 (tp)"; empty when the counts are missing."""
    if any(result.get(key) is None for _, cells in CONFUSION_ROWS for key, _ in cells):
        return []
    return [(name, [f"{label}: {result[key]} ({key})" for key, label in cells]) for name, cells in CONFUSION_ROWS]


def calibration_warning(bundle: Bundle) -> str | None:
    """The calibration's own note when the target false-reject rate was out of reach."""
    stats = bundle.calibration.stats or {}
    if stats.get("target_frr_reachable") is False:
        return str(stats.get("note") or "the target false-reject rate was out of reach with these good images")
    return None


def _pct(row: dict) -> str:
    if row.get("rate") is None:
        return "n/a"
    low, high = row["ci95"]
    return f"{row['count']}/{row['total']} = {row['rate']:.1%} ({low:.1%} to {high:.1%})"


def threshold_note(result: dict) -> str:
    """How the threshold was set, in one sentence: from how many good images, out of fold or not, its interval."""
    facts = result.get("calibration") or {}
    if not facts.get("calibration_note"):
        return ""
    low, high = facts.get("threshold_interval") or (None, None)
    where = "" if low is None else (f" The threshold's own 95% interval: {low:.4g} to "
                                    f"{'beyond the highest good score' if high is None else f'{high:.4g}'}.")
    how = "scored out of fold (each by a model fitted without it)" if facts.get("scored_out_of_fold") else "held out"
    edge = f" {facts['edge_peaks']['note'][0].upper()}{facts['edge_peaks']['note'][1:]}." if facts.get("edge_peaks") else ""
    return f"Threshold from good images {how}: {facts['calibration_note'].split(': ', 1)[-1]}.{where}{edge}"


def fitness_tables(summary: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) for the report's first section: per class at the threshold, then operating points."""
    classes = [["all defects", _pct(summary["caught"])]]
    classes += [[name, _pct(row)] for name, row in summary["per_class"].items()]
    classes.append(["good parts rejected", _pct(summary["false_rejects"])])
    points = [[f"{p['false_reject_target']:.1%}", f"{p['false_reject_rate']:.1%}", f"{p['catch_rate']:.1%}",
               f"{p['threshold']:.4g}"] for p in summary.get("operating_points", [])]
    tables = [(f"At the shipped threshold {summary['threshold']:.4g} (95% intervals)", ["", "failed"], classes)]
    if points:
        tables.append(("Operating points on the test images: the lowest threshold that keeps each false-reject rate",
                       ["false rejects at most", "false rejects", "defects caught", "threshold"], points))
    return tables


def _intro(result: dict) -> str:
    return (f"All figures. Calibration: {result.get('calibration_method')}. Precision, recall and F1 count \"good\" as the "
            "positive class, as the study did; the confusion counts (tp, fp, tn, fn) count the defect as positive.")


def _markdown(title: str, bundle: Bundle, result: dict, images: list[tuple[str, str]]) -> str:
    md = [f"# {title}", ""]
    summary = result.get("fitness")
    if summary:
        md += [f"**{summary['text']}**", ""]
        if threshold_note(result):
            md += [threshold_note(result), ""]
        for caption, header, rows in fitness_tables(summary):
            md += [f"### {caption}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            md += ["| " + " | ".join(row) + " |" for row in rows] + [""]
    warning = calibration_warning(bundle)
    if warning:
        md += [f"> **Warning:** {warning}.", ""]
    md += [_intro(result), "", "| figure | metrics.json key | value |", "|---|---|---|"]
    md += [f"| {label} | {key} | {value} |" for label, key, value in _rows(result)]
    confusion = _confusion_cells(result)
    if confusion:
        md += ["", "## Confusion matrix at the threshold", "", "| | fails | passes |", "|---|---|---|"]
        md += [f"| {name} | {cells[0]} | {cells[1]} |" for name, cells in confusion]
    md += [""] + [f"## {caption}\n\n![{caption}]({name})\n" for name, caption in images]
    return "\n".join(md) + "\n"


def _html(title: str, bundle: Bundle, result: dict, images: list[tuple[str, str]]) -> str:
    esc = html.escape
    warning = calibration_warning(bundle)
    banner = f"<p class='warning'><strong>Warning:</strong> {esc(warning)}.</p>" if warning else ""
    summary = result.get("fitness")
    if summary:
        verdict_class = "fit" if summary["verdict"] == "fit" else "unfit"
        note = f"<p>{esc(threshold_note(result))}</p>" if threshold_note(result) else ""
        banner = f"<p class='{verdict_class}'><strong>{esc(summary['text'])}</strong></p>{note}" + "".join(
            f"<h3>{esc(caption)}</h3><table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows) + "</table>"
            for caption, header, rows in fitness_tables(summary)) + banner
    intro = f"<p>{esc(_intro(result))}</p>"
    table = "<tr><th>figure</th><th>metrics.json key</th><th>value</th></tr>" + "".join(
        f"<tr><td>{esc(label)}</td><td>{esc(key)}</td><td>{esc(value)}</td></tr>" for label, key, value in _rows(result))
    confusion = _confusion_cells(result)
    matrix = ("<h2>Confusion matrix at the threshold</h2><table><tr><th></th><th>fails</th><th>passes</th></tr>"
              + "".join(f"<tr><th>{esc(name)}</th><td>{esc(cells[0])}</td><td>{esc(cells[1])}</td></tr>"
                        for name, cells in confusion) + "</table>") if confusion else ""
    figures = "".join(f"<h2>{esc(c)}</h2><img src='{n}' alt='{esc(c)}'>" for n, c in images)
    return (f"<!doctype html><meta charset='utf-8'><title>{esc(title)}</title>"
            "<style>body{font-family:sans-serif;max-width:980px;margin:2em auto}td,th{padding:2px 12px;text-align:left}"
            "img{max-width:100%}.warning{background:#fff3cd;border:1px solid #e0a800;padding:8px}</style>"
            f"<h1>{esc(title)}</h1>{banner}{intro}<table>{table}</table>{matrix}{figures}"
            f"<h2>metrics.json</h2><pre>{esc(json.dumps(result, indent=2))}</pre>")


def write_pages(folder: Path, bundle: Bundle, result: dict, images: list[tuple[str, str]]) -> None:
    title = f"lineguard report: {bundle.name}"
    (folder / "README.md").write_text(_markdown(title, bundle, result, images), encoding="utf-8")
    (folder / "index.html").write_text(_html(title, bundle, result, images), encoding="utf-8")


def write_scores(path: Path, scored) -> None:
    """Every image's score, so a person (or a test) can check any single one with `lineguard score`."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "defect", "label", "score", "verdict", "reason"])
        for sample, score, decision, reason in zip(scored.samples, scored.scores, scored.verdicts, scored.reasons):
            writer.writerow([sample.name, sample.defect, sample.label, repr(float(score)), decision, reason or ""])


def unusual_goods(path: Path, unusual: list, color: str) -> bool:
    """Thumbnails of the training goods that score like defects out of fold, for a person to check."""
    if not unusual:
        return False
    fig, axes = plt.subplots(1, len(unusual), figsize=(2.4 * len(unusual), 2.6), squeeze=False)
    for ax, (sample, score) in zip(axes[0], unusual):
        ax.imshow(_show(sample.image(color)), cmap="gray" if color == "gray" else None)
        ax.set_title(f"{sample.name}\nscore {score:.4g}", fontsize=7)
        ax.axis("off")
    _save(fig, path)
    return True


def write_report(folder: Path, bundle: Bundle, inspector: Inspector, scored, result: dict,
                 unusual: list | None = None) -> None:
    """Plots, scores.csv, index.html and README.md into `folder`. `unusual`: (sample, score) of training goods
    that scored like defects when calibrating."""
    threshold = bundle.calibration.threshold
    write_scores(folder / "scores.csv", scored)
    images = []
    summary = result.get("fitness")
    if summary and operating_curve(folder / "operating.png", scored.scores, scored.labels, summary):
        images.append(("operating.png", "Defects caught against good parts rejected, shipped threshold marked"))
    histogram(folder / "histogram.png", scored.scores, scored.labels, threshold)
    images.append(("histogram.png", "Scores of good and anomalous images, threshold dashed"))
    if curves(folder / "curves.png", scored.scores, scored.labels, result):
        images.append(("curves.png", "ROC and precision-recall"))
    shown = "Input, reconstruction and anomaly map" if grid(folder / "examples.png", inspector, scored, threshold) \
        else "Input and anomaly map"
    images.append(("examples.png", f"{shown}, lowest and highest scores"))
    if unusual_goods(folder / "unusual-goods.png", unusual or [], bundle.preprocess.color):
        images.append(("unusual-goods.png", "Training images of good parts that score like defects (left out of the "
                                            "threshold): check them for glare, a wrong part or a wrong label"))
    write_pages(folder, bundle, result, images)
