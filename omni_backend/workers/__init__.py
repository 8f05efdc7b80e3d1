"""The worker-process machinery: start ranks, talk to them safely, watch them (not the parallel methods)."""
