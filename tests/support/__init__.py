"""Code the tests share (docs/testing.md): backends.py (which backends run here, require_backend),
numerics.py (dtypes, tolerances, random inputs), parity.py (the one parity check of every op against
its reference), fgd_inputs.py (FGD boxes and features off the loss kinks), official_fgd.py (a port of
FGD's official loss), cuda_emu/ (the CUDA emulator and its test backend)."""
