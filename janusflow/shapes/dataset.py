"""``janusflow_shapes``: the built-in TFDS dataset, generated on the machine (no download).

Each example is one scene of :mod:`janusflow.shapes.world` (1-4 flat shapes, 6 classes, the 10
GenEval colours) with its generation caption in a GenEval category, understanding QA pairs,
a plain-text description (for the text stream), the ground-truth objects and the GenEval
metadata. Examples cycle through the six categories (or the config's ``tags``), so each is an
equal share of a split.

Splits: ``train`` scenes only use training prompts; ``validation`` scenes only use held-out
prompts for the compositional categories (``shapes.is_heldout``), so generation evaluation on
validation prompts never sees a training caption (single_object and counting prompts are shared,
see ``shapes.py``). Example ``i`` of a split is a pure function of (seed, split, i).

Written as array_record through a pure-Python path (images are handed to TFDS as PNG bytes), so
neither building nor reading needs TensorFlow.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from janusflow.shapes import world as shapes

SPLIT_IDS = {"train": 0, "validation": 1}


@dataclasses.dataclass
class ShapesConfig(tfds.core.BuilderConfig):
    size: int = 32
    train_examples: int = 20000
    validation_examples: int = 1200
    seed: int = 0
    noise: bool = True          # colour jitter + pixel noise of shapes.render(rng=...)
    # GenEval categories the scenes cycle through (empty: all six); shapes.ONE_OBJECT_TAGS gives the
    # one-object scenes a curriculum starts on (experiments/shapes_small.py)
    tags: tuple = ()


def shapes_config(size: int, train_examples: int, validation_examples: int, seed: int = 0,
                  noise: bool = True, tags: tuple = ()) -> ShapesConfig:
    """A config outside the registered ones (tests, custom sizes); its name encodes every field."""
    for flag, v in (("--config", size), ("--train", train_examples), ("--validation", validation_examples)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:   # TFDS refuses an empty split only at its end
            raise ValueError(f"{flag} {v}: must be a positive integer"
                             + (" (the image size, e.g. 32px)" if flag == "--config" else ""))
    bad = [t for t in tags if t not in shapes.TAGS]
    if bad:
        raise ValueError(f"tags {bad}: not GenEval categories; expected some of {shapes.TAGS}")
    name = (f"{size}px_{train_examples}_{validation_examples}_s{seed}{'' if noise else '_clean'}"
            + "".join(f"_{t}" for t in tags))
    return ShapesConfig(name=name, size=size, train_examples=train_examples,
                        validation_examples=validation_examples, seed=seed, noise=noise, tags=tuple(tags),
                        description=f"{size}px shapes, {train_examples} train / "
                                    f"{validation_examples} validation examples")


def describe(objects) -> str:
    """A short plain-English description of a scene (the text stream's document)."""
    n = len(objects)
    parts = [f"{shapes.with_article(o.color)} {o.shape}" for o in objects]
    text = f"{shapes.NUMBERS[n].capitalize()} object{'s' if n != 1 else ''}: " + ", ".join(parts) + "."
    unique = [o for o in objects if [p.shape for p in objects].count(o.shape) == 1]
    for i, a in enumerate(unique):
        for b in unique[i + 1:]:
            rels = sorted(shapes.relative_position(shapes.pixel_box(a), shapes.pixel_box(b)))
            if rels:
                text += f" The {a.shape} is {' and '.join(rels)} the {b.shape}."
    return text


def make_example(cfg: ShapesConfig, split: str, index: int) -> dict:
    """Example ``index`` of ``split`` (raw, before TFDS encoding)."""
    rng = np.random.default_rng([cfg.seed, SPLIT_IDS[split], index])
    tags = cfg.tags or shapes.TAGS
    tag = tags[index % len(tags)]
    objects, meta = shapes.sample_scene(rng, cfg.size, tag, "train" if split == "train" else "val")
    image = shapes.render(objects, cfg.size, rng if cfg.noise else None)
    qa = shapes.questions(objects, rng)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return {
        "id": index,
        "image": buf.getvalue(),
        "caption": meta["prompt"],
        "tag": meta["tag"],
        "metadata": json.dumps(meta, sort_keys=True),
        "description": describe(objects),
        "objects": {"shape": [o.shape for o in objects], "color": [o.color for o in objects],
                    "box": np.asarray([o.box for o in objects], np.int32).reshape(-1, 4),
                    "pixel_box": np.asarray([shapes.pixel_box(o) for o in objects],
                                            np.int32).reshape(-1, 4)},
        "qa": {"question": [q for q, _, _ in qa], "answer": [a for _, a, _ in qa],
               "type": [t for _, _, t in qa]},
    }


class JanusflowShapes(tfds.core.GeneratorBasedBuilder):
    """Compositional shapes scenes for JanusFlow generation + understanding (local, no download)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [
        ShapesConfig(name="32px", size=32, train_examples=20000, validation_examples=1200,
                     description="32x32 images (tiny configs)"),
        ShapesConfig(name="32px_one_object", size=32, train_examples=20000, validation_examples=1200,
                     tags=shapes.ONE_OBJECT_TAGS, description="32x32 one-object scenes (single_object and colors "
                                                       "categories only): a curriculum's first data"),
        ShapesConfig(name="64px", size=64, train_examples=20000, validation_examples=1200,
                     description="64x64 images"),
        ShapesConfig(name="384px", size=384, train_examples=10000, validation_examples=1200,
                     noise=False, description="384x384 images (JanusFlow-1.3B resolution)"),
    ]
    DEFAULT_CONFIG_NAME = "32px"

    def __init__(self, *args, file_format=None, **kwargs):
        # array_record gives the random access grain needs; TFRecord would need TensorFlow.
        super().__init__(*args, file_format=file_format or "array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        s = self.builder_config.size
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "id": tfds.features.Scalar(np.int64, doc="index of the example in its split"),
                "image": tfds.features.Image(shape=(s, s, 3), encoding_format="png"),
                "caption": tfds.features.Text(doc="generation prompt, GenEval phrasing"),
                "tag": tfds.features.Text(doc="GenEval category of the caption"),
                "metadata": tfds.features.Text(doc="GenEval metadata JSON {tag, include, exclude?, prompt}"),
                "description": tfds.features.Text(doc="plain-text description (text stream)"),
                "objects": tfds.features.Sequence({
                    "shape": tfds.features.Text(),
                    "color": tfds.features.Text(),
                    "box": tfds.features.Tensor(shape=(4,), dtype=np.int32,
                                                doc="drawing box x0, y0, x1, y1 (px, end exclusive)"),
                    "pixel_box": tfds.features.Tensor(shape=(4,), dtype=np.int32,
                                                      doc="tight box of the lit pixels"),
                }),
                "qa": tfds.features.Sequence({
                    "question": tfds.features.Text(),
                    "answer": tfds.features.Text(),
                    "type": tfds.features.Text(),
                }),
            }),
            supervised_keys=None,
            homepage="https://arxiv.org/abs/2411.07975",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # generated locally
        c = self.builder_config
        return {"train": self._generate_examples("train", c.train_examples),
                "validation": self._generate_examples("validation", c.validation_examples)}

    def _generate_examples(self, split: str, n: int):
        for i in range(n):
            yield i, make_example(self.builder_config, split, i)


def build_shapes(data_dir: str, config="32px") -> str:
    """Generate (once) and return the dataset directory, e.g. for ``SourceConfig(name=dir)``.
    ``config``: a registered name ('32px', '64px', '384px') or a :func:`shapes_config`."""
    builder = JanusflowShapes(config=config, data_dir=data_dir)
    if not builder.is_prepared():
        builder.download_and_prepare()
    return os.fspath(builder.data_dir)
