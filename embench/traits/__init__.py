"""Trait directions in a model's residual stream: definitions (``spec``), extraction (``extract``, ``pipeline``),
saved directions (``store``), the published-format importer (``importer``), and monitoring built on them."""

from embench.traits.pipeline import extract_traits, persona_vector
from embench.traits.spec import Trait, find_trait, load_trait_file, load_traits, traits_dir
from embench.traits.store import TraitDirections, load_directions

__all__ = ["Trait", "TraitDirections", "extract_traits", "find_trait", "load_directions", "load_trait_file",
           "load_traits", "persona_vector", "traits_dir"]
