"""The process and the machine: devices and dtypes (devices), the process-wide lock around work that
patches torch or classes (process_lock), runs that share a patched pipeline class (class_guard), and
what a process holds open (process_probe, for the worker tests and benchmarks)."""
