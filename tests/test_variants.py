"""The model variant is chosen in one place: the registry (configs/variants.py) says what each
understanding encoder and generation head reads and builds, models/parts.py builds the parts by
name, and models/build.py is the one place a model is built."""

import ast
import dataclasses
import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from janusflow.configs import presets, variants
from janusflow.configs.schema import ConfigError
from janusflow.models import parts
from janusflow.models.build import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "janusflow")
CFG = presets.tiny()

COMBOS = [(u, g, r) for u, g, r in itertools.product(variants.UND_ENCODERS, (True, False), (True, False))
          if variants.UND_ENCODERS[u].understands or g]


def _cfg(und, gen, repa):
    return dataclasses.replace(CFG, und_encoder=und, gen_enabled=gen, repa=repa)


def test_every_registered_part_has_a_builder():
    for spec in [*variants.UND_ENCODERS.values(), *variants.GEN_HEADS.values()]:
        assert set(spec.parts) <= set(parts.PARTS), spec.name
    for combo in COMBOS:
        assert _cfg(*combo).parts <= set(parts.PARTS), combo


@pytest.mark.parametrize("und,gen,repa", COMBOS)
def test_the_model_builds_exactly_the_parts_its_config_names(und, gen, repa):
    cfg = _cfg(und, gen, repa)
    model = build_model(cfg, abstract=True)
    built = {n for n in parts.PARTS if getattr(model, n) is not None}
    assert built == cfg.parts
    # what the rest of the system asks of the variant
    assert cfg.und.understands == (und != "none")
    assert cfg.und.reads_latents == (und in ("shared_gen", "separate_gen"))
    assert cfg.uses_siglip == (und == "siglip" or repa)


def test_unknown_variants_are_config_errors_naming_the_field():
    with pytest.raises(ConfigError, match="ModelConfig.und_encoder"):
        dataclasses.replace(CFG, und_encoder="clip")
    with pytest.raises(ConfigError, match="ModelConfig.gen_head"):
        dataclasses.replace(CFG, gen_head="diffusion")
    with pytest.raises(ValueError, match="registered twice"):
        variants.register_und_encoder(variants.UND_ENCODERS["siglip"])


def test_a_new_generation_head_is_one_registration_plus_its_parts(monkeypatch):
    # a toy head with one new part: registered, it is built (after every existing part, so the
    # existing parts keep their initial weights) and nothing else changes
    def toy_head(cfg, rngs, dtype):
        return nnx.Linear(cfg.llm.hidden_size, 3, rngs=rngs)
    monkeypatch.setitem(parts.PARTS, "toy_head", toy_head)
    monkeypatch.setitem(variants.GEN_HEADS, "toy", variants.GenHead(
        "toy", "latents", parts=("gen_encoder", "gen_aligner", "toy_head"), repa=False, paper="none"))
    base = dataclasses.replace(CFG, repa=False)
    toy = dataclasses.replace(base, gen_head="toy")
    assert toy.parts == {"und_encoder", "und_aligner", "beg_of_und_embed", "gen_encoder", "gen_aligner", "toy_head"}
    m_toy, m_base = build_model(toy, seed=0), build_model(base, seed=0)
    assert m_toy.toy_head is not None and m_toy.gen_decoder is None and m_base.toy_head is None
    for name in ("und_encoder", "gen_encoder", "gen_aligner"):
        a = jax.tree.leaves(nnx.state(getattr(m_toy, name), nnx.Param))
        b = jax.tree.leaves(nnx.state(getattr(m_base, name), nnx.Param))
        assert all(np.array_equal(x, y) for x, y in zip(a, b)), name


def test_understanding_reads_the_input_its_encoder_names():
    cfg = _cfg("shared_gen", False, False)
    model = build_model(cfg, seed=0)
    lat = jnp.zeros((1, cfg.latent_size, cfg.latent_size, cfg.vae.channels))
    assert model.und_image_embeds(und_latents=lat).shape == (1, 1 + cfg.num_und_tokens, cfg.llm.hidden_size)
    with pytest.raises(ValueError, match="needs und_latents"):
        model.und_image_embeds(und_pixels=jnp.zeros((1, 8, 8, 3)))


# ------------------------------------------------------------------------ one place, by source
def _sources():
    for d, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(d, f)
                yield os.path.relpath(path, ROOT), ast.parse(open(path).read())


def _is_name_literal(node) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    return isinstance(node, (ast.Tuple, ast.List, ast.Set)) and any(_is_name_literal(e) for e in node.elts)


def test_no_module_compares_the_variant_name_with_a_literal():
    hits = []
    for rel, tree in _sources():
        for n in ast.walk(tree):
            if isinstance(n, ast.Compare):
                sides = [n.left, *n.comparators]
                if (any(isinstance(s, ast.Attribute) and s.attr in ("und_encoder", "gen_head") for s in sides)
                        and any(_is_name_literal(s) for s in sides)):
                    hits.append(f"{rel}:{n.lineno}")
    assert hits == []


def test_models_are_built_only_in_models_build():
    hits = []
    for rel, tree in _sources():
        if rel == os.path.join("janusflow", "models", "build.py"):
            continue
        for n in ast.walk(tree):
            if isinstance(n, ast.Call):
                f = n.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                owner = getattr(f.value, "id", "") if isinstance(f, ast.Attribute) else ""
                if name in ("JanusFlow", "make_vae") or (name == "eval_shape" and owner == "nnx"):
                    hits.append(f"{rel}:{n.lineno} {name}")
    assert hits == []
