"""The suite runs in fp32 on every CPU: `amp: auto` would pick bf16 on CPUs with AVX-512-BF16 or AMX, where the
tests that compare runs for equality (resume, DDP, accumulation, backends) would then see bf16 rounding. Tests of
the precision rule itself patch the hardware checks (tests/test_speed_paths.py)."""
import os

os.environ["CONTEXTSEG_BF16"] = "0"  # before any test imports contextseg; subprocesses inherit it
