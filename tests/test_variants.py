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

from janusflow.checkpoint import hf, hf_config
from janusflow.checkpoint.torch_layout import flat_params
from janusflow.configs import io as config_io
from janusflow.configs import presets, schema, variants
from janusflow.configs.schema import ConfigError
from janusflow.models import build, parts
from janusflow.models.build import build_model
from janusflow.models.janusflow import JanusFlow
from janusflow.perf import info
from janusflow.sample import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "janusflow")
CFG = presets.tiny()

COMBOS = [(u, g, r) for u, g, r in itertools.product(variants.UND_ENCODERS, (True, False), (True, False))
          if variants.UND_ENCODERS[u].understands or g]


def _cfg(und, gen, repa):
    return dataclasses.replace(CFG, und_encoder=und, gen_enabled=gen, repa=repa)


def test_every_registered_part_has_a_builder():
    composable = [h for h in variants.GEN_HEADS.values() if h.composable]
    for spec in [*variants.UND_ENCODERS.values(), *composable]:
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
    monkeypatch.setitem(variants.GEN_HEADS, "toy", dataclasses.replace(
        variants.RECTIFIED_FLOW, name="toy", parts=("gen_encoder", "gen_aligner", "toy_head"), repa=False,
        paper="none"))
    base = dataclasses.replace(CFG, repa=False)
    toy = dataclasses.replace(base, gen_head="toy")
    assert toy.parts == {"und_encoder", "und_aligner", "beg_of_und_embed", "gen_encoder", "gen_aligner", "toy_head"}
    m_toy, m_base = build_model(toy, seed=0), build_model(base, seed=0)
    assert m_toy.toy_head is not None and m_toy.gen_decoder is None and m_base.toy_head is None
    for name in ("und_encoder", "gen_encoder", "gen_aligner"):
        a = jax.tree.leaves(nnx.state(getattr(m_toy, name), nnx.Param))
        b = jax.tree.leaves(nnx.state(getattr(m_base, name), nnx.Param))
        assert all(np.array_equal(x, y) for x, y in zip(a, b)), name


# ------------------------------------------------------- the generation head decides the family
HEAD_CFGS = {"rectified_flow": presets.tiny(), "autoregressive": presets.tiny_janus_pro()}


def test_every_registered_head_has_a_config_here():
    assert set(HEAD_CFGS) == set(variants.GEN_HEADS)
    assert variants.families() == ("janusflow", "janus_pro") == schema.FAMILIES


@pytest.mark.parametrize("head", sorted(HEAD_CFGS))
def test_each_head_record_names_what_builds_loads_and_samples_it(head):
    cfg = HEAD_CFGS[head]
    rec = cfg.head
    assert rec is variants.GEN_HEADS[head] and cfg.gen_head == head and cfg.family == rec.family
    # the class that builds it, and every part the record names is built
    model = build_model(cfg, abstract=True)
    assert type(model) is build.MODELS[rec.model] is build.model_class(cfg)
    assert all(getattr(model, n, None) is not None for n in rec.parts), rec.parts
    # its checkpoint layout has a key map covering the model, a config.json form and names
    assert rec.layout in hf.LAYOUTS and rec.layout in hf_config.HF_CONFIGS and rec.layout in info.LAYOUT_NAMES
    key_map = hf.model_key_map(cfg)
    ours = {p for p, _ in key_map.values()}
    assert ours <= set(flat_params(model)) and len(ours) == len(key_map)
    assert hf_config.model_config_from_hf(hf_config.hf_config_from_model_config(cfg)).gen_head == head
    # the sampler and its defaults
    assert run.default_cfg_weight(cfg) == rec.cfg_weight and run.default_cfg_weight(cfg, 3) == 3.0
    assert rec.needs_vae != rec.needs_vq
    assert cfg.gen_grid ** 2 == cfg.num_gen_tokens


def test_the_heads_answer_as_the_families_did():
    flow, ar = variants.RECTIFIED_FLOW, variants.AUTOREGRESSIVE
    assert (flow.family, flow.model, flow.layout, flow.cfg_weight) == ("janusflow", "JanusFlow", "janusflow", 2.0)
    assert flow.needs_vae and not flow.autoregressive and flow.composable
    assert (ar.family, ar.model, ar.layout, ar.cfg_weight) == ("janus_pro", "JanusPro", "janus_pro", 5.0)
    assert ar.needs_vq and ar.autoregressive and not ar.composable
    assert HEAD_CFGS["rectified_flow"].und_begin_slot and not HEAD_CFGS["autoregressive"].und_begin_slot
    with pytest.raises(ValueError, match="is built by JanusPro, not JanusFlow"):
        JanusFlow(HEAD_CFGS["autoregressive"], rngs=nnx.Rngs(0))


def test_the_family_is_derived_not_a_field():
    assert "family" not in {f.name for f in dataclasses.fields(schema.ModelConfig)}
    assert dataclasses.replace(CFG, gen_head="autoregressive", repa=False).family == "janus_pro"
    assert dataclasses.replace(HEAD_CFGS["autoregressive"], gen_head="rectified_flow").family == "janusflow"
    with pytest.raises(ConfigError, match="ModelConfig.gen_head.*REPA"):
        dataclasses.replace(CFG, gen_head="autoregressive")


@pytest.mark.parametrize("written", [{"family": "janus_pro"},                                # before gen_head
                                     {"family": "janus_pro", "gen_head": "rectified_flow"},  # gen_head, no AR head
                                     {"family": "janus_pro", "gen_head": "autoregressive"}])
def test_configs_written_with_a_family_still_load(written):
    d = {**config_io.to_dict(HEAD_CFGS["autoregressive"]), **written}
    if "gen_head" not in written:
        del d["gen_head"]
    assert config_io.from_dict(schema.ModelConfig, d, "model") == HEAD_CFGS["autoregressive"]
    flow = {**config_io.to_dict(CFG), "family": "janusflow"}
    assert config_io.from_dict(schema.ModelConfig, flow, "model") == CFG


def test_a_bad_written_family_is_one_config_error_naming_it():
    d = config_io.to_dict(HEAD_CFGS["autoregressive"])
    with pytest.raises(ConfigError, match=r"^model\.family: must be one of"):
        config_io.from_dict(schema.ModelConfig, {**d, "family": "janus_pro_typo"}, "model")
    with pytest.raises(ConfigError, match=r"^model\.family: 'janusflow' but gen_head 'autoregressive'"):
        config_io.from_dict(schema.ModelConfig, {**d, "family": "janusflow"}, "model")
    with pytest.raises(ConfigError, match=r"^model\.gen_head: expected a string"):
        config_io.from_dict(schema.ModelConfig, {**d, "family": "janus_pro", "gen_head": [1]}, "model")


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


# what a variant is: its name, its family, and the names its record gives the model class, the
# checkpoint layout, the image tokenizer and the sampler; only the registry compares them
RECORD_NAMES = ("und_encoder", "gen_head", "family", "model", "layout", "codec", "sampler")
REGISTRY = os.path.join("janusflow", "configs", "variants.py")


def literal_comparisons(tree) -> list:
    """Line numbers where a variant's name (an attribute in RECORD_NAMES) meets a string literal."""
    hits = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Compare):
            sides = [n.left, *n.comparators]
            if (any(isinstance(s, ast.Attribute) and s.attr in RECORD_NAMES for s in sides)
                    and any(_is_name_literal(s) for s in sides)):
                hits.append(n.lineno)
    return hits


def test_no_module_compares_the_variant_name_with_a_literal():
    hits = [f"{rel}:{line}" for rel, tree in _sources() if rel != REGISTRY
            for line in literal_comparisons(tree)]
    assert hits == []


@pytest.mark.parametrize("src", ['cfg.family == "janus_pro"', 'if m.cfg.family != "janusflow": pass',
                                 'x = "janus_pro" == cfg.head.family', 'cfg.head.layout in ("janus_pro",)',
                                 'cfg.gen_head == "autoregressive"', 'cfg.und_encoder != "siglip"'])
def test_the_literal_scan_catches_a_family_comparison(src):
    assert literal_comparisons(ast.parse(src)) == [1]
    assert literal_comparisons(ast.parse(src.replace('"', "").replace("'", ""))) == []


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
