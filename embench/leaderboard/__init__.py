"""Leaderboards: score results published as validated entries of a board folder, shown as a ranked table and a page.

``publish`` converts ``embench score`` directories (or lm-eval results files) into entries and adds them to a
board atomically; ``validate_board`` checks every file of a board; ``render_board`` writes its static page.
"""

from embench.leaderboard.board import (
    Published,
    check_pages,
    load_board,
    load_entries,
    load_records,
    publish,
    ranked,
    validate_board,
)
from embench.leaderboard.convert import Converted, Tags, convert
from embench.leaderboard.render import render, render_board, render_index
from embench.leaderboard.schema import Board, BoardEntry, Entry, json_schemas, write_json_schemas

__all__ = ["Board", "BoardEntry", "Converted", "Entry", "Published", "Tags", "check_pages", "convert",
           "json_schemas", "load_board", "load_entries", "load_records", "publish", "ranked", "render", "render_board",
           "render_index", "validate_board", "write_json_schemas"]
