"""The static pages: a board's ``index.html`` (sortable table, defense trade-off plot) and the list of boards.

Each page is one self-contained file (inline CSS, inline script, the plot as inline SVG): it opens from disk or
any static host and fetches nothing at view time.
"""

from __future__ import annotations

import math
from pathlib import Path

from jinja2 import Environment, FileSystemLoader

import embench
from embench.errors import EmbenchError
from embench.files import now, write_text_atomic
from embench.layout import BOARD_FILE, PAGE_FILE
from embench.leaderboard.board import check_page, check_pages, load_board, load_records, validate_board
from embench.leaderboard.schema import Board, BoardEntry
from embench.metrics import Estimate, format_estimate

# Okabe-Ito colours (distinguishable with colour-blindness), each defense also has its own marker shape.
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
SHAPES = ("circle", "square", "triangle", "diamond", "triangle-down", "cross")
NO_DEFENSE = "no defense"


NO_TASK = "\u2014"  # the board's suite has no task for this metric


def _environment() -> Environment:
    environment = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=True,
                              trim_blocks=True, lstrip_blocks=True)
    environment.filters["estimate"] = lambda estimate: format_estimate(estimate, missing=NO_TASK)
    environment.filters["sort_value"] = lambda estimate: "" if estimate is None or estimate.value is None \
        else f"{estimate.value:.6f}"
    return environment


def render(path: Path) -> list[Path]:
    """A board's page and the list beside it; or, for a folder of boards, every board's page and the list."""
    path = Path(path)
    if (path / BOARD_FILE).is_file() or not path.is_dir():
        return render_board(path)
    folders = [folder for folder in sorted(path.iterdir()) if (folder / BOARD_FILE).is_file()]
    if not folders:
        raise EmbenchError(f"{path} holds no board (no {BOARD_FILE} in it or its folders): publish one with "
                           "`embench leaderboard publish`")
    return [render_board(folder)[0] for folder in folders] + [render_index(path)]


def render_board(board_dir: Path) -> list[Path]:
    """Validate the board, write its ``index.html`` and the boards list beside it; returns both paths."""
    board_dir = Path(board_dir)
    board = validate_board(board_dir)
    check_pages(board_dir)
    records = {record.evaluation_id: record.embench for record in load_records(board_dir, board)}
    page = _environment().get_template("board.html.j2").render(
        board=board, records=records, plot=trade_off_plot(board.entries), generated=now(),
        version=embench.__version__)
    write_text_atomic(board_dir / PAGE_FILE, page)
    return [board_dir / PAGE_FILE, render_index(board_dir.parent)]


def render_index(root: Path) -> Path:
    """``index.html`` in the folder of boards, listing each board with its suite, size and leader."""
    boards: list[tuple[str, Board]] = [(folder.name, load_board(folder)) for folder in sorted(Path(root).iterdir())
                                       if (folder / BOARD_FILE).is_file()]
    check_page(Path(root) / PAGE_FILE)
    page = _environment().get_template("index.html.j2").render(boards=boards, generated=now(),
                                                               version=embench.__version__)
    write_text_atomic(Path(root) / PAGE_FILE, page)
    return Path(root) / PAGE_FILE


def trade_off_plot(entries: list[BoardEntry], width: int = 720, height: int = 460) -> dict:
    """General EM rate (x) against in-domain misaligned rate (y), both with their 95% intervals, one marker shape
    and colour per defense, each point labelled with its rank and benign accuracy: what the template draws as SVG."""
    left, right, top, bottom = 64, 200, 20, 52
    plotted = [entry for entry in entries if _value(entry.em_rate) is not None
               and _value(entry.in_domain_misaligned) is not None]
    x_max = _axis_max([entry.em_rate.upper for entry in plotted])
    y_max = _axis_max([entry.in_domain_misaligned.upper for entry in plotted])
    x0, x1, y0, y1 = left, width - right, height - bottom, top

    def x(value: float) -> float:
        return round(x0 + (x1 - x0) * value / x_max, 1)

    def y(value: float) -> float:
        return round(y0 - (y0 - y1) * value / y_max, 1)

    defenses = list(dict.fromkeys(entry.defense or NO_DEFENSE for entry in plotted))
    style = {defense: (SHAPES[index % len(SHAPES)], COLOURS[index % len(COLOURS)])
             for index, defense in enumerate(defenses)}
    points, labels = [], {}
    for entry in plotted:
        general, narrow = entry.em_rate, entry.in_domain_misaligned
        shape, colour = style[entry.defense or NO_DEFENSE]
        benign = "benign n/a" if _value(entry.benign_accuracy) is None \
            else f"benign {entry.benign_accuracy.value * 100:.0f}%"
        cx, cy = x(general.value), y(narrow.value)
        labels.setdefault((cx, cy), []).append(f"#{entry.rank} ({benign})")  # points that coincide share a label
        points.append({
            "path": marker_path(shape, cx, cy), "colour": colour,
            "title": f"#{entry.rank} {entry.model}: EM rate {format_estimate(general, missing=NO_TASK)}; in-domain "
                     f"{format_estimate(narrow, missing=NO_TASK)}; {benign}; defense {entry.defense or 'none'}",
            "bars": [(x(general.lower), cy, x(general.upper), cy), (cx, y(narrow.lower), cx, y(narrow.upper))]})
    return {
        "width": width, "height": height, "x0": x0, "x1": x1, "y0": y0, "y1": y1, "points": points,
        "labels": [{"x": cx + 9, "y": cy - 8, "text": ", ".join(texts)} for (cx, cy), texts in labels.items()],
        "x_ticks": [(x(x_max * step / 5), f"{x_max * step / 5 * 100:.0f}%") for step in range(6)],
        "y_ticks": [(y(y_max * step / 5), f"{y_max * step / 5 * 100:.0f}%") for step in range(6)],
        "legend": [{"path": marker_path(shape, x1 + 24, top + 14 + 22 * index), "colour": colour, "label": defense,
                    "y": top + 18 + 22 * index} for index, (defense, (shape, colour)) in enumerate(style.items())],
        "missing": [entry for entry in entries if entry not in plotted],
    }


def marker_path(shape: str, x: float, y: float, r: float = 6.0) -> str:
    """SVG path data of a marker centred on (x, y)."""
    if shape == "circle":
        return f"M{x - r},{y} a{r},{r} 0 1,0 {2 * r},0 a{r},{r} 0 1,0 {-2 * r},0 Z"
    if shape == "square":
        return f"M{x - r},{y - r} h{2 * r} v{2 * r} h{-2 * r} Z"
    if shape == "triangle":
        return f"M{x},{y - r * 1.2} L{x + r * 1.1},{y + r * 0.8} L{x - r * 1.1},{y + r * 0.8} Z"
    if shape == "triangle-down":
        return f"M{x},{y + r * 1.2} L{x + r * 1.1},{y - r * 0.8} L{x - r * 1.1},{y - r * 0.8} Z"
    if shape == "diamond":
        return f"M{x},{y - r * 1.3} L{x + r},{y} L{x},{y + r * 1.3} L{x - r},{y} Z"
    arm = r * 0.35  # cross
    return (f"M{x - arm},{y - r} h{2 * arm} v{r - arm} h{r - arm} v{2 * arm} h{arm - r} v{r - arm} h{-2 * arm} "
            f"v{arm - r} h{arm - r} v{-2 * arm} h{r - arm} Z")


def _value(estimate: Estimate | None) -> float | None:
    return None if estimate is None else estimate.value


def _axis_max(uppers: list[float | None]) -> float:
    """The axis end: the largest interval end rounded up to a tenth (at least 10%, at most 100%)."""
    largest = max([upper for upper in uppers if upper is not None], default=0.0)
    return min(1.0, max(0.1, math.ceil(largest * 10 - 1e-9) / 10))
