"""``janusflow data build|shapes|lengths|latents``: datasets for training (``latents``: VAE latents
or, for Janus-Pro, VQ codes)."""

from __future__ import annotations

import sys

from janusflow.cli.common import add_config_args, load_config_args


def cmd_data(args) -> int:
    from janusflow.data import build
    from janusflow.shapes import dataset as shapes_tfds
    from janusflow.data.preprocess import MAX_PIXELS
    try:
        if args.data_command == "shapes":
            if args.train is None and args.validation is not None:
                raise ValueError("--validation needs --train (a custom size of both splits)")
            if args.train is not None and not (args.config.endswith("px") and args.config[:-2].isdigit()):
                raise ValueError(f"--config {args.config!r}: with --train, give the image size as <N>px")
            cfg = args.config if args.train is None else shapes_tfds.shapes_config(
                int(args.config[:-2]), args.train, 1200 if args.validation is None else args.validation)
            print(shapes_tfds.build_shapes(args.out, cfg))
        elif args.texts and not (args.images or args.captions):
            build.build_text(args.texts, args.out, args.name)
        elif args.images and args.captions and not args.texts:
            build.build_image_text(args.images, args.captions, args.out, args.name,
                                   val_fraction=args.val_fraction, short_side=args.short_side,
                                   threads=args.threads,
                                   max_pixels=MAX_PIXELS if args.max_pixels is None else args.max_pixels)
        else:
            print("janusflow data build: error: give --images and --captions, or --texts (not both)",
                  file=sys.stderr)
            return 2
    except (OSError, ValueError) as e:                  # OSError: FileNotFound, FileExists, ...
        print(f"janusflow data: error: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_data_lengths(args) -> int:
    import json

    from janusflow.data import lengths
    cfg = load_config_args(args)
    try:
        rep = lengths.report(cfg, lengths.measure(cfg, n=args.n, split=args.split))
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"janusflow data lengths: error: {e}", file=sys.stderr)
        return 1
    print(lengths.format_report(rep))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rep, f, indent=2)
        print(f"wrote {args.json}")
    return 0


def cmd_data_latents(args) -> int:
    from janusflow.data.latents import build_latents
    try:
        build_latents(load_config_args(args), args.out, split=args.split, batch=args.batch, name=args.name,
                      vae_dir=args.vae, checkpoint=args.checkpoint)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"janusflow data latents: error: {e}", file=sys.stderr)
        return 1
    return 0


def register(sub) -> None:
    p = sub.add_parser("data", help="build TFDS datasets: users' images+captions, texts, shapes")
    dsub = p.add_subparsers(dest="data_command", required=True)
    q = dsub.add_parser("build", help="a folder of images + captions JSONL (or a text file) -> TFDS dataset")
    q.add_argument("--images", metavar="DIR", help="folder the captions' image paths are relative to")
    q.add_argument("--captions", metavar="FILE.jsonl",
                   help='lines {"image": path, "caption": str|[str], "qa": [{"question", "answer"}]}')
    q.add_argument("--texts", metavar="FILE", help="text dataset: .txt (a document per line) or .jsonl with 'text'")
    q.add_argument("--out", required=True, metavar="DATA_DIR", help="TFDS data directory to write into")
    q.add_argument("--name", default="user_images", help="dataset name (snake_case) the configs use")
    q.add_argument("--val-fraction", type=float, default=0.0, help="held-out share (by image path hash)")
    q.add_argument("--short-side", type=int, default=0, help="downscale images whose short side exceeds this")
    q.add_argument("--threads", type=int, default=4, help="image decoding threads")
    q.add_argument("--max-pixels", type=int, default=None,
                   help="skip images with more pixels than this, read from the header before decoding "
                   "(default 2^26, 67 MPixel)")
    q.set_defaults(func=cmd_data)
    q = dsub.add_parser("shapes", help="generate the built-in janusflow_shapes dataset")
    q.add_argument("--out", required=True, metavar="DATA_DIR")
    q.add_argument("--config", default="32px", help="32px | 32px_one_object | 64px | 384px")
    q.add_argument("--train", type=int, default=None, help="custom number of train examples")
    q.add_argument("--validation", type=int, default=None, help="custom number of validation examples")
    q.set_defaults(func=cmd_data)
    q = dsub.add_parser("lengths", help="token lengths of the experiment's und/gen/text sources and how "
                        "many examples each length cut keeps whole, cuts or drops (data/lengths.py)")
    add_config_args(q)
    q.add_argument("--n", type=int, default=1000, help="examples per source (the first N)")
    q.add_argument("--split", default=None, help="split to read (default: each source's)")
    q.add_argument("--json", default=None, metavar="OUT.json")
    q.set_defaults(func=cmd_data_lengths)
    q = dsub.add_parser("latents", help="encode the experiment's gen source once with the frozen VAE, or "
                        "for a Janus-Pro model its VQ tokenizer (train with --set data.gen.name=DIR --set "
                        "data.gen.latents=true)")
    add_config_args(q)
    q.add_argument("--out", required=True, metavar="DATA_DIR", help="TFDS data directory to write into")
    q.add_argument("--split", default="train", help="split(s) of data.gen to encode, comma-separated")
    q.add_argument("--batch", type=int, default=8, help="images per encoder call")
    q.add_argument("--name", default=None, help="dataset name (default <source>_latents, <source>_codes)")
    q.add_argument("--vae", metavar="DIR", default=None,
                   help="diffusers AutoencoderKL dir (default: the VAE a fresh run of EXP initialises)")
    q.add_argument("--checkpoint", metavar="DIR", default=None,
                   help="Janus-Pro: the saved model whose VQ tokenizer (gen_vision) encodes the codes "
                   "(default: train.init_from; required, a random VQ is refused)")
    q.set_defaults(func=cmd_data_latents)
