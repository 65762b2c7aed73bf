"""Sliding anti-replay window over 64-bit message counters (in the spirit of RFC 6479).

A counter is fresh if it is above everything seen so far, or within WINDOW of the
highest and not seen yet. Check with fresh() before decrypting, and mark() only
after the packet authenticated: a forged counter must not move the window.
"""

WINDOW = 4096


class ReplayWindow:
    __slots__ = ("top", "bits")

    def __init__(self):
        self.top = -1  # highest counter accepted; bit i of bits is counter top - i
        self.bits = 0

    def fresh(self, n: int) -> bool:
        d = self.top - n
        if d < 0:
            return True
        return d < WINDOW and not (self.bits >> d) & 1

    def mark(self, n: int) -> None:
        d = self.top - n
        if d < 0:
            # A jump beyond the window forgets everything: shifting by it could take gigabytes.
            self.bits = 1 if -d >= WINDOW else (self.bits << -d) | 1
            self.top = n
            # Trim only now and then: masking every time would cost more than the shift.
            if self.bits.bit_length() > 2 * WINDOW:
                self.bits &= (1 << WINDOW) - 1
        else:
            self.bits |= 1 << d
