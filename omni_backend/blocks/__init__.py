"""Reaching into a transformer's blocks: our named diffusers hooks (hooks), a block's stream inputs
and outputs in its own format (block_io), and counting the block work a run really did (diagnostics)."""
