"""Performance: analytic FLOPs, measured peak, compile-only memory plans, hardware platforms and the benchmarks."""
