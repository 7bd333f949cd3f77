"""Pictures of a recorded run (attention heatmaps, the logit lens) and of the benchmark's
long-prompt curve (matplotlib, Agg backend).

The functions take plain arrays (the queries are in runs.py) and return a Picture: where the PNG
went, its size in pixels, and what each panel shows (title, tick labels), so tests and callers can
check a picture without looking at it.
"""
from __future__ import annotations

import contextlib
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError

DPI = 100


@dataclass
class Panel:
    title: str
    xlabels: list[str]                  # every column's token (drawn: those at `ticks`)
    ylabels: list[str]
    values: np.ndarray | None = None    # what the colours show (rows top to bottom as drawn by imshow)
    first: int = 0                      # the place of the first column
    ticks: list[int] = field(default_factory=list)   # the columns that carry a label
    label_size: float = 0.0             # points


@dataclass
class Picture:
    path: Path
    width: int                          # pixels
    height: int
    title: str
    panels: list[Panel] = field(default_factory=list)
    note: str = ""                      # what a caller adds, e.g. the window of places shown


def shown(piece: str | None) -> str:
    """A token's text as a tick label: spaces, newlines and tabs made visible, except the spaces
    between the bytes of a partial character (<e4 bd>)."""
    if piece is None:
        return "?"
    parts = re.split(r"(<[0-9a-f]{2}(?: [0-9a-f]{2})*>)", piece)
    return "".join(part if i % 2 else part.replace(" ", "␣").replace("\n", "↵").replace("\r", "⏎").replace("\t", "⇥")
                   for i, part in enumerate(parts)) or "∅"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextlib.contextmanager
def missing_glyphs_quiet():
    """Text in scripts DejaVu Sans lacks (CJK...) draws as boxes; matplotlib would also warn once
    per character on stderr, wherever text is measured (the subtitle's fit, the layout, the save)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing")
        yield


def _save(fig, out: Path, title: str, panels: list[Panel]) -> Picture:
    out = Path(out)
    try:
        if not out.parent.is_dir():     # never made: a mistyped folder is the user's to fix
            raise UserError(f"the folder {str(out.parent)!r} does not exist: create it first, or write elsewhere")
        with missing_glyphs_quiet():
            fig.savefig(out, dpi=DPI, format="png")
    except OSError as exc:
        raise UserError(f"cannot write {str(out)!r}: {exc.strerror or exc}; choose another path") from exc
    finally:
        width, height = (int(round(v)) for v in fig.get_size_inches() * DPI)
        _pyplot().close(fig)
    return Picture(out, width, height, title, panels)


def _heading(fig, title: str, subtitle: str, fontsize: float) -> None:
    """The title, and under it the subtitle cut to the figure's width as drawn (measured, since a
    character's width depends on the character)."""
    heading = fig.suptitle(f"{title}\n{subtitle}" if subtitle else title, fontsize=fontsize, parse_math=False)
    renderer, room = fig.canvas.get_renderer(), 0.96 * fig.bbox.width
    for _attempt in range(8):
        with missing_glyphs_quiet():
            width = heading.get_window_extent(renderer).width
        if width <= room or len(subtitle) <= 1:
            return
        subtitle = subtitle[: max(1, int(len(subtitle) * room / width) - 2)] + "…"
        heading.set_text(f"{title}\n{subtitle}")


MIN_FONT = 7.0          # points: no tick label is drawn smaller
MAX_SIDE = 16.0         # inches: one attention panel (a 200-token map is 1600 px, not 6000)
MAX_WIDTH = 30.0        # inches: a grid of heads
LENS_ROW = 40           # places per row of the lens picture: longer runs wrap into more rows


def _label_font(n: int) -> float:
    return max(MIN_FONT, min(10.0, 200.0 / max(n, 1)))


def _ticks(n: int, axis_inches: float, font: float) -> list[int]:
    """The columns to label: every k-th, so that labels `font` points high never overlap."""
    room = max(1.0, axis_inches * 72 / (font * 1.3))
    return list(range(0, n, max(1, math.ceil(n / room))))


def attention(labels: list[str], weights: dict[int, np.ndarray], block: int, out: Path,
              title: str, subtitle: str = "", first: int = 0) -> Picture:
    """Heatmaps of attention weights: rows are query places (who looks), columns key places (who is
    looked at); one panel per head in `weights` (head -> n × n matrix, NaN above the diagonal).
    `first` is the place of the first row and column (a window of a longer run)."""
    plt = _pyplot()
    n = len(labels)
    heads = sorted(weights)
    cols = 1 if len(heads) == 1 else math.ceil(math.sqrt(len(heads)))
    rows = math.ceil(len(heads) / cols)
    cap = MAX_SIDE if len(heads) == 1 else max(3.5, MAX_WIDTH / cols)
    side = min(cap, max(3.5, 0.3 * n + 1.8))      # inches per panel: one label per token while it fits
    fig, axes = plt.subplots(rows, cols, figsize=(side * cols + (1.2 if len(heads) == 1 else 0.4), side * rows + 0.8),
                             squeeze=False, layout="constrained")
    names = [shown(p) for p in labels]
    font = _label_font(n)
    ticks = _ticks(n, side * 0.7, font)
    tick_text = [names[i] if len(ticks) == n and first == 0 else f"{first + i} {names[i]}" for i in ticks]
    panels = []
    image = None
    for i, ax in enumerate(axes.flat):
        if i >= len(heads):
            ax.axis("off")
            continue
        head = heads[i]
        image = ax.imshow(np.ma.masked_invalid(weights[head]), cmap="viridis", vmin=0, vmax=1,
                          interpolation="nearest")
        ax.set_xticks(ticks)
        ax.set_yticks(ticks)
        ax.set_xticklabels(tick_text, rotation=90, fontsize=font, parse_math=False)
        ax.set_yticklabels(tick_text, fontsize=font, parse_math=False)
        panel_title = f"block {block}, head {head}"
        ax.set_title(panel_title, fontsize=10)
        if len(heads) == 1 or i % cols == 0:
            ax.set_ylabel("query: the place that looks")
        if len(heads) == 1 or i >= len(heads) - cols:
            ax.set_xlabel("key: the place looked at")
        panels.append(Panel(panel_title, names, names, weights[head], first, ticks, font))
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="attention weight")
    _heading(fig, title, subtitle, 12)
    return _save(fig, out, title, panels)


def lens(labels: list[str], next_labels: list[str | None], top: list[list[str]], probability: np.ndarray,
         is_next: np.ndarray, out: Path, title: str, subtitle: str = "", first: int = 0) -> Picture:
    """The logit lens as a grid: a row per block (block 0 at the bottom), a column per place; each
    cell is the token the model would predict after that block, with its probability (the colour).
    Cells that guessed the run's actual next token are boxed. More than LENS_ROW places wrap into
    rows of panels, one under the other; `first` is the place of the first column."""
    plt = _pyplot()
    n_blocks, n = probability.shape
    per_row = math.ceil(n / max(1, math.ceil(n / LENS_ROW)))      # rows of equal length
    chunks = [range(a, min(a + per_row, n)) for a in range(0, n, per_row)] or [range(0)]
    width = max(len(c) for c in chunks)
    panel_height = max(3.0, 0.62 * n_blocks + 2.4)
    cell = 1.05 if width <= 12 else 0.8                             # inches per place
    fig, axes = plt.subplots(len(chunks), 1, figsize=(max(6.0, cell * width + 2.5), panel_height * len(chunks)),
                             squeeze=False, layout="constrained")
    cell_font = max(MIN_FONT, min(8.0, 120.0 / max(width, 1)))
    label_font = _label_font(width)
    panels, image = [], None
    for ax, chunk in zip(axes.flat, chunks):
        cols = list(chunk)
        values = probability[:, cols]
        image = ax.imshow(values, cmap="Blues", vmin=0, vmax=1, origin="lower", aspect="auto",
                          interpolation="nearest")
        for b in range(n_blocks):
            for x, p in enumerate(cols):
                dark = probability[b, p] > 0.55
                ax.text(x, b, f"{shown(top[b][p])}\n{probability[b, p]:.2f}", ha="center", va="center",
                        fontsize=cell_font, color="white" if dark else "black", parse_math=False,
                        fontweight="bold" if is_next[b, p] else "normal")
                if is_next[b, p]:
                    ax.add_patch(plt.Rectangle((x - 0.5, b - 0.5), 1, 1, fill=False, edgecolor="darkorange",
                                               linewidth=2))
        names = [shown(labels[p]) for p in cols]
        numbered = len(chunks) > 1 or first > 0
        ax.set_xticks(range(len(cols)))
        ax.set_xticklabels([f"{first + p} {name}" if numbered else name for p, name in zip(cols, names)],
                           rotation=90, fontsize=label_font, parse_math=False)
        ax.set_yticks(range(n_blocks))
        ax.set_yticklabels([f"block {b}" for b in range(n_blocks)], fontsize=9)
        ax.set_xlabel("the token read at each place")
        top_axis = ax.secondary_xaxis("top")
        top_axis.set_xticks(range(len(cols)))
        top_axis.set_xticklabels(["" if next_labels[p] is None else shown(next_labels[p]) for p in cols], rotation=90,
                                 fontsize=label_font, parse_math=False)
        top_axis.set_xlabel("the run's actual next token (boxed where a block predicted it)")
        panels.append(Panel(title, names, [t.get_text() for t in ax.get_yticklabels()], values, first + chunk.start,
                            list(range(len(cols))), label_font))
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.9 / len(chunks) ** 0.5, label="probability of the top token")
    _heading(fig, title, subtitle, 11)
    return _save(fig, out, title, panels)


def prompt_curve(curve: dict, out: Path, title: str, subtitle: str = "") -> Picture:
    """The benchmark's long-prompt curve (`gptsql bench --prompts`): the time to first token by
    prompt length, SQL and PyTorch on log axes with the ratio at each point, and beside it the
    decode step right after each prompt. One panel each; a panel's values are its two lines."""
    plt = _pyplot()
    by_length = {int(n): point for n, point in curve.items()}     # int keys, or str ones read from JSON
    lengths = sorted(by_length)
    points = [by_length[n] for n in lengths]
    fig, (ttft, decode) = plt.subplots(1, 2, figsize=(11.0, 4.6), layout="constrained")
    panels = []
    for ax, key, scale, unit, what in ((ttft, "ttft", 1.0, "s", "time to first token"),
                                       (decode, "decode", 1000.0, "ms", "decode step after the prompt")):
        sql = np.array([p[f"sql_{key}_s"] for p in points]) * scale
        torch = np.array([p[f"torch_{key}_s"] for p in points]) * scale
        ax.plot(lengths, sql, "o-", color="tab:blue", label="SQL (gptsql)")
        ax.plot(lengths, torch, "s--", color="tab:orange", label="PyTorch, same weights")
        for n, s, p in zip(lengths, sql, points):
            ax.annotate(f"{p[f'{key}_ratio']:.0f}×", (n, s), textcoords="offset points", xytext=(0, 7),
                        ha="center", fontsize=9)
        ax.set_xscale("log")
        if key == "ttft":       # seconds to minutes: log; the decode steps stay within one order
            ax.set_yscale("log")
            ax.set_ylim(min(torch.min(), sql.min()) / 2, max(sql.max(), torch.max()) * 3)
        else:
            ax.set_ylim(0, max(sql.max(), torch.max()) * 1.15)
        ax.set_xticks(lengths)
        ax.set_xticklabels([str(n) for n in lengths])
        ax.minorticks_off()
        ax.set_xlabel("prompt tokens")
        ax.set_ylabel(f"{what} ({unit})")
        ax.set_title(what, fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=9, loc="upper left")
        panels.append(Panel(what, [str(n) for n in lengths], ["SQL", "PyTorch"], np.vstack([sql, torch]),
                            ticks=list(range(len(lengths)))))
    _heading(fig, title, subtitle, 11)
    return _save(fig, out, title, panels)
