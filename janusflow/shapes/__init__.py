"""The toy shapes world: its generator and TFDS dataset, analytic detector, benchmark, and the research diagnostics run on it (conditioning gap, denoising, encoder probes)."""
