from setuptools import find_packages, setup

setup(
    name="janusflow",
    version="0.1.0",
    description="JanusFlow (arXiv 2411.07975) in JAX/Flax NNX: training, sampling, evaluation",
    packages=find_packages(include=["janusflow", "janusflow.*"]),
    # the official GenEval prompt list (MIT, with its LICENSE): the default completeness check
    package_data={"janusflow.eval": ["geneval_data/*.jsonl", "geneval_data/*.txt",
                                     "geneval_data/LICENSE", "geneval_data/README.md"],
                  # the CPU kernels' handlers, compiled on first use (kernels/build.py)
                  "janusflow.kernels": ["cpu_gemm.cc", "cpu_gemv.cc", "cpu_gemv_t.cc", "cpu_gemv_packed.cc",
                                        "cpu_decode_attention.cc", "cpu_decode_block.cc", "thread_pool.h",
                                        "bf16.h", "product_ffi.h", "decode_attention.h", "gemv_packed.h"]},
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10",
        "flax>=0.12",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "tensorflow-datasets>=4.9",
        "numpy>=1.26",
        "pillow>=10",
        # reading official checkpoints without pickle
        "safetensors>=0.4",
        # TensorBoard event files without TensorFlow
        "tensorboardX>=2.6",
        # learning-curve plots of the default run
        "matplotlib>=3.7",
        # progress bars on sampling and evaluation
        "tqdm>=4.60",
        # data loading: random access + checkpointable iterators over TFDS array_record files,
        # without TensorFlow
        "grain>=0.2.12",
        # tensorflow-datasets imports it when building a dataset without TensorFlow, but only
        # declares it for Python < 3.9
        "importlib_resources",
        # the DeepSeek-LLM tokenizer.json and the locally trained tiny tokenizer
        "tokenizers>=0.19",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            # the suite runs in two worker processes (2 cores; compile-bound tests overlap, and
            # no single process accumulates the whole suite's compiled programs)
            "pytest-xdist>=3",
            # the vendor-GEMM custom call's tests build and run it against Intel MKL (same as
            # the "vendor-gemm" extra); without MKL they skip with a printed reason
            "mkl",
            "mkl-include",
            # the sweep statistics' tests check their t-intervals against scipy.stats
            "scipy>=1.10",
            # PyTorch references for parity tests. torch is pinned to the CPU build; a bare
            # "torch" requirement would pull a multi-GB CUDA build.
            "torch==2.13.0",
            "transformers>=4.46",
            "diffusers>=0.30",
            # the TPU compiler, so the TPU-compiled plan tests run (213 MB wheel, 684 MB
            # installed, 5 s from a local index); same pin as the "tpu" extra
            "libtpu==0.0.42.1",
            # the web demo's tests: the page itself, driven in the system Chromium (Debian's
            # `chromium`; playwright's own browser download is not needed)
            "gradio>=6,<7",
            "playwright>=1.40",
        ],
        # `janusflow demo`: the local web page (Understanding and Generation tabs)
        "demo": ["gradio>=6,<7"],
        # `janusflow plan` with the TPU compiler (compile-only TPU devices, no TPU needed) and
        # training on Cloud TPU: the libtpu that jax[tpu]==0.10.2 pins; bump it with jax
        # (pip install "jax[tpu]==<installed jax>" shows the matching version)
        "tpu": ["libtpu==0.0.42.1"],
        # gs:// workdirs: etils.epath reaches GCS through fsspec/gcsfs, orbax lists and deletes
        # checkpoint steps with google-cloud-storage (tpu_configs/launch_tpu.sh installs these)
        "gcs": ["gcsfs", "google-cloud-storage"],
        # model.matmul_impl="vendor": Intel MKL's library and headers (the handler is compiled
        # with the system g++ on first use)
        "vendor-gemm": ["mkl", "mkl-include"],
    },
    entry_points={"console_scripts": ["janusflow=janusflow.cli.main:main"]},
)
