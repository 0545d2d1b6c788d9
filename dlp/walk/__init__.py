"""The walk: one engine visits the model block by block, gathers each block's statistics, prunes it and replays
it; where the blocks live (offload), how activations are batched and stored, and the checks on the result."""
