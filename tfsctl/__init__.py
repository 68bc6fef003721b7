"""tfsctl: TensorFlow Serving's toolchain (export, inspect, serve, predict, bench) as one Python CLI."""

__version__ = "0.1.0"
