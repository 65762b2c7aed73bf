"""What the CPU offers, for choosing the AEAD: AES-GCM only where the CPU has AES instructions
(constant time, and fast), ChaCha20-Poly1305 elsewhere."""

from __future__ import annotations


def has_aes(cpuinfo_path: str = "/proc/cpuinfo") -> bool:
    try:
        with open(cpuinfo_path) as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return "aes" in line.split(":", 1)[1].split()
    except OSError:
        pass
    return False
